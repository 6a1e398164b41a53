"""``dps bench images``: methods x tasks over N images, in the layout of the paper's Tables 1-4.

For every (method, task) pair each image is measured (operator drawn from ``seed``, noise from the
image's seed, as in ``dps solve``), reconstructed, and stored under
``OUT/results/<method>/<task>/<name>.png`` with a ``.json`` of its per-image metrics. A rerun of the same
command skips images whose JSON exists (files are written atomically), so an interrupted run resumes and
produces the same table. ``bench.json`` records the settings before any work (images, steps, seed, model,
data and every task's definition); a rerun with other settings is refused, and a second process is
refused while the first holds the folder (:mod:`dps.pipeline`). Methods come from the one method table
(:mod:`dps.solvers.methods`), which also says why a method does not apply (``NOT_APPLICABLE``); a method
that diverges on a pair (e.g. a step size too large for the budget) leaves ``DIVERGED`` with the message,
reads "n/a" in the tables and does not stop the other pairs. The
residual column is ||y - A(x)||_2 for every method. The tables (``table.md``, ``table.csv``, ``table.json``) are rebuilt from the
per-image files at the end.

Metrics: PSNR and SSIM (ours, tested against scikit-image); FID and LPIPS through torchmetrics / lpips
when those packages and their network weights are available (they download weights on first use; without
them the columns read "n/a" and the run says so once). For the embedded digits model also the digit
classifier's accuracy on the reconstructions and the Frechet distance in its feature space between
reconstructions and ground truths ("FD-digits").
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import Diverged, DPSError
from ..images import measurement_picture, save_image
from ..metrics import psnr, ssim
from ..pipeline import RunFolder, measure, write_json
from ..seeds import operator_seed, sample_generators
from ..solvers.dps import DPSConfig
from ..solvers.methods import get_method, reconstruct
from ..tasks import Task, build_operator, load_task
from ..utils import atomic_path

__all__ = ["BenchSettings", "run_bench", "render_tables"]


@dataclass
class BenchSettings:
    methods: Sequence[str] = ("dps",)
    tasks: Sequence[str] = ("super_resolution",)
    n: int = 8
    steps: Optional[int] = None
    seed: int = 0
    batch_size: int = 8
    model: str = "default"
    data: Optional[str] = None
    preset: Optional[str] = None
    samples: int = 1
    nfe: Optional[int] = None  # every method at this many network evaluations per sample (Method.at_budget)
    #: method name -> the name of one of its presets (Method.presets), e.g. {"daps": "daps-1k"}; not with nfe
    method_presets: dict = field(default_factory=dict)
    #: DPSConfig execution settings for every task (precision, checkpointing, compile), only non-defaults
    execution: dict = field(default_factory=dict)


def _load_data(settings: BenchSettings, shape) -> tuple[torch.Tensor, list[str], Optional[torch.Tensor], list[str]]:
    """(N, C, H, W) images, their names, for the digits their labels, and the files that could not be read
    (the first ``n`` files of the folder are taken; unreadable ones are left out and reported)."""
    if settings.data is None:
        from ..data.digits import digits_split

        if tuple(shape) != (1, 32, 32):
            raise ValueError(f"no built-in data for a {tuple(shape)} model: pass --data FOLDER")
        x, labels = digits_split("held_out")
        n = min(settings.n, len(x))
        return x[:n], [f"heldout{i:03d}" for i in range(n)], labels[:n], []
    from ..data.folder import list_images, load_images

    images, names, failed = [], [], []
    for f in list_images([settings.data])[: settings.n]:
        try:
            images.append(load_images([f], shape[-1], shape[0], "center-crop")[0])
            names.append(f.stem)
        except DPSError as exc:
            failed.append(str(exc))
    if not images:
        raise DPSError(f"none of the images in {settings.data} could be read: " + " | ".join(failed))
    if len(set(names)) != len(names):
        raise DPSError(f"image names in {settings.data} must be unique (file stems name the results)")
    return torch.stack(images), names, None, failed


def _optional_metrics():
    """LPIPS and FID callables, or None with the reason (missing package or weights)."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        lpips = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
        fid = FrechetInceptionDistance(feature=2048, normalize=True)
        return lpips, fid, None
    except Exception as exc:  # ImportError, or the weights cannot be fetched offline
        return None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _settings_key(settings: BenchSettings, tasks: Sequence[Task], names: Sequence[str]) -> dict:
    """What must match for a rerun to reuse the folder's per-image results (methods and tasks may be added)."""
    key = {"images": list(names), "steps": settings.steps, "seed": settings.seed, "model": settings.model,
           "data": settings.data, "tasks": {t.name: t.to_dict() for t in tasks}}
    key = key if settings.samples == 1 else {**key, "samples": settings.samples}  # older folders stay valid
    key = key if not settings.method_presets else {**key, "method_presets": dict(settings.method_presets)}
    return key if settings.nfe is None else {**key, "nfe": settings.nfe}


def _check_presets(settings: BenchSettings, methods) -> None:
    """Every method preset names a method of the run and one of its presets, and is not combined with nfe."""
    names = {m.name: m for m in methods}
    for name, preset in settings.method_presets.items():
        if name not in names:
            raise DPSError(f"--method-preset names {name}, which is not in --methods ({', '.join(names)})")
        names[name].run_settings(DPSConfig(), settings.nfe, preset)


def run_bench(settings: BenchSettings, out: Path, prior=None, progress: bool = True) -> dict:
    from tqdm import tqdm

    from ..distributed import barrier, setup, shard
    from ..models.loading import load_model

    methods = [get_method(m) for m in settings.methods]
    _check_presets(settings, methods)
    ctx = setup()
    out = Path(out)
    prior = prior if prior is not None else load_model(settings.model)
    prior = prior.to(ctx.device)
    shape = tuple(prior.event_shape)
    x_all, names, labels, failed = _load_data(settings, shape)
    tasks = [load_task(t, settings.preset) for t in settings.tasks]
    if settings.steps is not None:
        tasks = [t.with_steps(settings.steps) for t in tasks]
    if settings.execution:
        tasks = [Task(t.name, t.operator, t.noise, {**t.dps, **settings.execution}, t.select) for t in tasks]
    if len({t.name for t in tasks}) != len(tasks):
        raise DPSError("task names must be unique in one bench run")
    # rank 0 holds the folder (lock, settings) for the whole group; the others wait for it
    folder_ctx = RunFolder(out, "bench.json", _settings_key(settings, tasks, names),
                           extendable=("images",)) if ctx.is_main \
        else contextlib.nullcontext()
    with folder_ctx:
        barrier(ctx)
        for method in methods:
            for task in tasks:
                _run_pair(method, task, prior, shape, x_all, names, settings, out, ctx, shard, progress, tqdm)
        barrier(ctx)  # every shard written
        if not ctx.is_main:
            return {}
        table = aggregate(out, settings, [t.name for t in tasks], x_all, names, labels)
        write_json(out / "table.json", table)
        for name, text in (("table.csv", _csv(table)), ("table.md", render_tables(table))):
            from ..utils import atomic_write

            atomic_write(out / name, lambda p, t=text: p.write_text(t))
        from .figures import bench_figure

        for task in tasks:
            bench_figure(out, task.name, [m.name for m in methods
                                          if skip_reason(out / "results" / m.name / task.name) is None],
                         names[:8])
    if failed:
        raise DPSError(f"{len(failed)} image(s) could not be read and are not in the table {out / 'table.md'}: "
                       + " | ".join(failed))
    return table


SKIP_FILES = ("NOT_APPLICABLE", "DIVERGED")


def skip_reason(folder: Path) -> Optional[str]:
    """Why a (method, task) folder has no results (its NOT_APPLICABLE or DIVERGED note), else None."""
    for name in SKIP_FILES:
        if (folder / name).exists():
            return (folder / name).read_text().strip()
    return None


def _run_pair(method, task: Task, prior, shape, x_all, names, settings: BenchSettings, out: Path, ctx, shard,
              progress: bool, tqdm) -> None:
    """Every image of one (method, task) pair, skipping finished ones; NOT_APPLICABLE with the reason."""
    from ..utils import atomic_write

    folder = out / "results" / method.name / task.name
    folder.mkdir(parents=True, exist_ok=True)
    op = build_operator(task.operator, shape, operator_seed(settings.seed))  # measurements are made on the CPU
    noise = task.noise_model()
    reason = method.why_not(op, noise)
    if (folder / "DIVERGED").exists():
        return
    if reason is not None:
        if ctx.is_main:
            atomic_write(folder / "NOT_APPLICABLE", lambda p: p.write_text(reason + "\n"))
        return
    nfe = settings.nfe if method.budget is not None else None  # methods without a network keep their settings
    cfg, extra = method.run_settings(task.dps_config(method.step_size), nfe, settings.method_presets.get(method.name))
    # shard the full list first, then skip finished images: the split must not depend on timing
    todo = [i for i in shard(list(range(len(names))), ctx) if not (folder / f"{names[i]}.json").exists()]
    op_dev = op if ctx.device.type == "cpu" else copy.deepcopy(op).to(ctx.device)
    bar = tqdm(total=len(todo), desc=f"{method.name}/{task.name}" + (f" [rank {ctx.rank}]" if ctx.world > 1 else ""),
               unit="img", disable=not progress)
    for s in range(0, len(todo), settings.batch_size):
        idx = todo[s:s + settings.batch_size]
        y = measure(op, noise, x_all[idx], settings.seed, idx).to(ctx.device)
        t0 = time.time()
        K = settings.samples
        try:
            res = reconstruct(method, prior, op_dev, y, noise, cfg, sample_generators(settings.seed, idx, K, ctx.device),
                              K, **extra)
        except Diverged as exc:
            atomic_write(folder / "DIVERGED", lambda p, m=str(exc): p.write_text(m + "\n"))
            bar.close()
            return
        # the task's selection among K samples (phase retrieval: the paper's best of 4 by residual)
        chosen = res.residual.argmin(1) if task.select == "best-residual" else torch.zeros(len(idx), dtype=torch.long)
        rows = torch.arange(len(idx))
        recon, residual = res.x[rows, chosen].cpu(), res.residual[rows, chosen].cpu()
        seconds = (time.time() - t0) / len(idx)
        x = x_all[idx]
        p, q = psnr(recon, x), ssim(recon, x)
        for b, i in enumerate(idx):
            save_image(measurement_picture(y[b].cpu(), shape[-1], op), out / "inputs" / task.name / f"{names[i]}.png")
            save_image(x_all[i], out / "labels" / f"{names[i]}.png")
            save_image(recon[b], folder / f"{names[i]}.png")
            with atomic_path(folder / f"{names[i]}.pt") as tmp:
                torch.save(recon[b].clone(), tmp)
            row = {"image": names[i], "index": i, "psnr": float(p[b]), "ssim": float(q[b]),
                   "residual": float(residual[b]), "seconds": seconds, "nfe": res.extras["nfe"]}
            write_json(folder / f"{names[i]}.json", row)
            bar.update(1)
    bar.close()


def aggregate(out: Path, settings: BenchSettings, task_names: Sequence[str], x_all, names, labels) -> dict:
    """Per (method, task) means from the per-image files, plus the set-level metrics."""
    lpips, fid, why = _optional_metrics()
    classifier = None
    if labels is not None:
        from ..metrics.digits_classifier import load_classifier

        classifier = load_classifier()
    rows = []
    for method in settings.methods:
        for task in task_names:
            folder = out / "results" / method / task
            skipped = skip_reason(folder)
            if skipped is not None:
                rows.append({"method": method, "task": task, "n": 0, "psnr": None, "ssim": None, "lpips": None,
                             "fid": None, "not_applicable": skipped})
                continue
            per = [json.loads((folder / f"{n}.json").read_text()) for n in names]
            recon = torch.stack([torch.load(folder / f"{n}.pt", weights_only=True) for n in names])
            row = {"method": method, "task": task, "n": len(per),
                   "psnr": sum(r["psnr"] for r in per) / len(per), "ssim": sum(r["ssim"] for r in per) / len(per),
                   "seconds_per_image": sum(r["seconds"] for r in per) / len(per), "lpips": None, "fid": None,
                   "nfe": (sum(r["nfe"] for r in per) / len(per)) if all("nfe" in r for r in per) else None}
            if lpips is not None:
                rgb = (lambda z: z.expand(-1, 3, -1, -1)) if recon.shape[1] == 1 else (lambda z: z)
                row["lpips"] = float(lpips(rgb(recon), rgb(x_all)))
                fid.reset()
                fid.update(rgb(x_all), real=True)
                fid.update(rgb(recon), real=False)
                row["fid"] = float(fid.compute())
            if classifier is not None:
                from ..metrics.digits_classifier import classify
                from ..metrics.frechet import frechet_distance, gaussian_stats

                probs, f_r = classify(classifier, recon)
                _, f_x = classify(classifier, x_all)
                row["digit_acc"] = float((probs.argmax(1) == labels).float().mean())
                row["fd_digits"] = frechet_distance(*gaussian_stats(f_r), *gaussian_stats(f_x)) if len(per) > 1 else None
            rows.append(row)
    return {"rows": rows, "n": len(names), "steps": settings.steps, "nfe": settings.nfe, "seed": settings.seed,
            "method_presets": dict(settings.method_presets),
            "model": settings.model,
            "data": settings.data or "embedded digits, held-out split", "fid_lpips": "ok" if why is None else f"n/a ({why})"}


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def render_tables(table: dict) -> str:
    """Markdown: one row per method, one column group per task (the paper's Tables 1-4 layout)."""
    rows = table["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    get = {(r["method"], r["task"]): r for r in rows}
    digits = any("digit_acc" in r for r in rows)
    groups = [("FID", "fid", ".2f"), ("LPIPS", "lpips", ".3f"), ("PSNR", "psnr", ".2f"), ("SSIM", "ssim", ".3f")]
    if digits:
        groups += [("digit acc.", "digit_acc", ".2f"), ("FD-digits", "fd_digits", ".2f")]
    compute = [("NFE", "nfe", ".0f"), ("s/img", "seconds_per_image", ".2f")]
    budget = f", {table['nfe']} network evaluations per sample" if table.get("nfe") else ""
    if table.get("method_presets"):
        budget += ", method presets " + ", ".join(f"{m} {p}" for m, p in table["method_presets"].items())
    head = (f"{table['n']} images ({table['data']}), model `{table['model']}`, steps "
            f"{table['steps'] or 'task default'}{budget}, seed {table['seed']}. FID/LPIPS: {table['fid_lpips']}.\n\n")
    lines = []
    for title, cols in (("Tables 1-2 layout (FID, LPIPS)", groups[:2]), ("Tables 3-4 layout (PSNR, SSIM)", groups[2:4]),
                        ("Digits model", groups[4:]),
                        ("Compute (network evaluations per sample, seconds per image)", compute)):
        if not cols:
            continue
        lines.append(f"### {title}\n")
        lines.append("| method | " + " | ".join(f"{t} {c[0]}" for t in tasks for c in cols) + " |")
        lines.append("|---|" + "---|" * (len(tasks) * len(cols)))
        for m in methods:
            cells = [_fmt(get[(m, t)].get(c[1]) if (m, t) in get else None, c[2]) for t in tasks for c in cols]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return head + "\n".join(lines)


def _csv(table: dict) -> str:
    keys = ["method", "task", "n", "fid", "lpips", "psnr", "ssim", "digit_acc", "fd_digits", "nfe", "seconds_per_image"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in table["rows"]:
        w.writerow({k: ("n/a" if r.get(k) is None else r.get(k)) for k in keys})
    return buf.getvalue()
