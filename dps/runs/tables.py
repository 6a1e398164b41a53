"""The tables of ``dps bench images``, rebuilt from the per-image files of a bench folder.

Metrics: PSNR and SSIM (ours, tested against scikit-image); FID and LPIPS through torchmetrics / lpips
when those packages and their network weights are available (they download weights on first use; without
them the columns read "n/a" and the run says so once). For the embedded digits model also the digit
classifier's accuracy on the reconstructions and the Frechet distance in its feature space between
reconstructions and ground truths ("FD-digits"). The residual is ||y - A(x)||_2 for every method.
"""
from __future__ import annotations

import csv
import io
from typing import Optional

import torch

from ..errors import DPSError
from ..utils import atomic_write
from .folder import read_json, write_json
from .layout import BenchLayout

__all__ = ["aggregate", "render_tables", "table_csv", "table_files"]


def _optional_metrics():
    """LPIPS and FID callables, or None with the reason (missing package or weights)."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        lpips = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
        fid = FrechetInceptionDistance(feature=2048, normalize=True)
        return lpips, fid, None
    except ImportError as exc:
        return None, None, f"{exc.name or 'torchmetrics'} is not installed: pip install -e \".[metrics]\""
    except Exception as exc:  # the weights cannot be fetched offline
        return None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def aggregate(layout: BenchLayout, specs, items, labels: Optional[torch.Tensor], settings) -> dict:
    """Per (method, task) means from the per-image files, plus the set-level metrics."""
    lpips, fid, why = _optional_metrics()
    classifier = None
    if labels is not None:
        from ..metrics.digits_classifier import load_classifier

        classifier = load_classifier()
    names = [it.name for it in items]
    x_all = torch.stack([it.x for it in items]).cpu()
    rows = []
    for spec in specs:
        method, task = spec.method, spec.task.name
        skipped = layout.skip_reason(method, task)
        if skipped is not None:
            rows.append({"method": method, "task": task, "n": 0, "psnr": None, "ssim": None, "lpips": None,
                         "fid": None, "not_applicable": skipped})
            continue
        per = [read_json(layout.result(method, task, n, ".json")) for n in names]
        for it, r in zip(items, per):  # only results of these very inputs
            if (r.get("inputs") or {}).get("input") != it.digest:
                raise DPSError(f"{layout.result(method, task, it.name, '.json')} was made from another version of "
                               f"{it.name}; rerun the command to recompute it")
        recon = torch.stack([torch.load(layout.result(method, task, n, ".pt"), weights_only=True) for n in names])
        row = {"method": method, "task": task, "n": len(per),
               "psnr": sum(r["psnr"] for r in per) / len(per), "ssim": sum(r["ssim"] for r in per) / len(per),
               "seconds_per_image": sum(r["seconds"] for r in per) / len(per), "lpips": None, "fid": None,
               "nfe": sum(r["nfe"] for r in per) / len(per)}
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
    o, first = settings.overrides, specs[0]
    return {"rows": rows, "n": len(names), "steps": o.steps, "nfe": o.nfe, "seed": first.seed,
            "method_presets": dict(settings.method_presets), "model": first.model,
            "device": first.execution.device,
            "data": settings.data or "embedded digits, held-out split",
            "fid_lpips": "ok" if why is None else f"n/a ({why})"}


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def render_tables(table: dict) -> str:
    """Markdown: one row per method, one column group per task (the paper's Tables 1-4 layout)."""
    from ..solvers.methods import METHODS

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
            f"{table['steps'] or 'task default'}{budget}, seed {table['seed']}, device {table.get('device', 'cpu')}. "
            f"FID/LPIPS: {table['fid_lpips']}.\n\n")
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
            title_m = METHODS[m].title if m in METHODS else m
            lines.append(f"| {title_m} | " + " | ".join(cells) + " |")
        lines.append("")
    skipped = [r for r in rows if r.get("not_applicable")]
    if skipped:
        lines.append("### Not applicable or diverged\n")
        lines += [f"- {METHODS[r['method']].title if r['method'] in METHODS else r['method']} on {r['task']}: "
                  f"{r['not_applicable']}" for r in skipped]
        lines.append("")
    if digits and table["n"] < 100:
        lines.append(f"FD-digits compares {table['n']} reconstructions with their ground truths in the classifier's "
                     "128-d features: with fewer than about 100 images it is only indicative.\n")
    return head + "\n".join(lines)


def table_csv(table: dict) -> str:
    keys = ["method", "task", "n", "fid", "lpips", "psnr", "ssim", "digit_acc", "fd_digits", "nfe", "seconds_per_image"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in table["rows"]:
        w.writerow({k: ("n/a" if r.get(k) is None else r.get(k)) for k in keys})
    return buf.getvalue()


def table_files(layout: BenchLayout, table: dict) -> None:
    """table.json, table.csv and table.md of a bench folder."""
    write_json(layout.table(".json"), table)
    for suffix, text in ((".csv", table_csv(table)), (".md", render_tables(table))):
        atomic_write(layout.table(suffix), lambda p, t=text: p.write_text(t))
