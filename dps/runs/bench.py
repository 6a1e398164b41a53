"""``dps bench images``: methods x tasks over N images, in the layout of the paper's Tables 1-4.

For every (method, task) pair each image is measured (operator drawn from ``seed``, noise from the
image's seed, as in ``dps solve``), reconstructed by the one batch loop (:mod:`dps.runs.loop`) and stored
as :class:`~dps.runs.layout.BenchLayout` says. A rerun of the same command skips finished images, so an
interrupted run resumes and produces the same table. ``bench.json`` records the settings before any work
(images, steps, seed, model, data and every task's definition); a rerun with other settings is refused
(methods and tasks may be added; a larger ``--n`` keeps the finished images, whose seeds depend on their
index only), and a second process is refused while the first holds the folder. A method that does not
apply to a task (the method table's requirements) leaves ``NOT_APPLICABLE`` with the reason; one that
diverges on a pair leaves ``DIVERGED`` with the message; both read "n/a" in the tables and do not stop the
other pairs. Under ``torchrun`` each process takes every world-th image and rank 0 writes the tables
(:mod:`dps.runs.tables`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..diffusion.denoiser import Prior
from ..distributed import barrier, setup
from ..errors import Diverged, DPSError
from ..execution import Execution
from ..images import measurement_picture, save_image
from ..utils import atomic_write, save_torch
from .folder import RunFolder, write_json
from .layout import BenchLayout
from .loop import (Item, ItemResult, Job, Progress, digest_tensor, file_digests, pending, recompute_note, run_items,
                   why_stale)
from .spec import Overrides, RunSpec, resolve

__all__ = ["BenchSettings", "run_bench", "bench_specs"]


@dataclass(frozen=True)
class BenchSettings:
    """What ``dps bench images`` runs: ``methods`` x ``tasks`` over the first ``n`` images of ``data`` (None:
    the embedded model's held-out digits); ``overrides`` apply to every pair (steps, step-size preset, nfe,
    model, seed, samples, execution); ``method_presets`` names a preset per method (e.g. {"daps": "daps-1k"})."""

    methods: Sequence[str] = ("dps",)
    tasks: Sequence[str] = ("super_resolution",)
    n: int = 8
    data: Optional[str] = None
    batch_size: int = 8
    overrides: Overrides = Overrides()
    method_presets: dict = field(default_factory=dict)


def bench_specs(settings: BenchSettings, execution: Execution) -> list[RunSpec]:
    """One spec per (method, task), methods outer. A method without a network keeps its settings under
    --nfe; a preset must name a method of the run."""
    from ..solvers.methods import get_method

    o = settings.overrides
    unknown = set(settings.method_presets) - set(settings.methods)
    if unknown:
        raise DPSError(f"--method-preset names {', '.join(sorted(unknown))}, which is not in --methods "
                       f"({', '.join(settings.methods)})")
    tasks = [resolve(t, Overrides(steps=o.steps, preset=o.preset), previous={}, execution=execution).task
             for t in settings.tasks]
    if len({t.name for t in tasks}) != len(tasks):
        raise DPSError("task names must be unique in one bench run")
    specs = []
    for name in settings.methods:
        method = get_method(name)
        nfe = o.nfe if method.counter is not None else None
        for task in tasks:
            specs.append(resolve(task, Overrides(method=name, method_preset=settings.method_presets.get(name), nfe=nfe,
                                                 model=o.model, model_config=o.model_config, prompt=o.prompt,
                                                 guidance_scale=o.guidance_scale, seed=o.seed,
                                                 samples=o.samples, grid=o.grid, rho=o.rho, sigma_min=o.sigma_min,
                                                 sigma_max=o.sigma_max), previous={}, execution=execution))
    return specs


def _load_data(settings: BenchSettings, shape) -> tuple[list[Item], Optional[torch.Tensor], list[str]]:
    """The first ``n`` images as Items, for the digits their labels, and the files that could not be read."""
    if settings.data is None:
        from ..data.digits import digits_split

        if tuple(shape) != (1, 32, 32):
            raise DPSError(f"no built-in data for a {tuple(shape)} model: pass --data FOLDER")
        x, labels = digits_split("held_out")
        n = min(settings.n, len(x))
        return [Item(f"heldout{i:03d}", i, x=x[i], digest=digest_tensor(x[i])) for i in range(n)], labels[:n], []
    from ..data.folder import list_images, load_images

    items, failed = [], []
    for f in list_images([settings.data])[: settings.n]:
        try:
            x = load_images([f], shape[-1], shape[0], "center-crop")[0]
            items.append(Item(f.stem, len(items), x=x, digest=digest_tensor(x)))
        except DPSError as exc:
            failed.append(str(exc))
    if not items:
        raise DPSError(f"none of the images in {settings.data} could be read: " + " | ".join(failed))
    if len({it.name for it in items}) != len(items):
        raise DPSError(f"image names in {settings.data} must be unique (file stems name the results)")
    return items, None, failed


class BenchSink:
    """Writes one image's reconstruction and metrics for one (method, task) pair."""

    def __init__(self, layout: BenchLayout, job: Job) -> None:
        self.layout, self.job = layout, job
        self.method, self.task = job.spec.method, job.spec.task.name

    def files(self, name: str) -> list[Path]:
        L = self.layout
        return [L.result(self.method, self.task, name, suffix) for suffix in (".pt", ".png")] + \
            [L.input(self.task, name), L.label(name)]

    def stale(self, item: Item) -> Optional[str]:
        return why_stale(self.layout.result(self.method, self.task, item.name, ".json"), self.job.inputs(item),
                         self.files(item.name), self.layout.root)

    def write(self, item: Item, r: ItemResult) -> None:
        from ..metrics import psnr, ssim

        L, recon, x = self.layout, r.samples[r.chosen], item.x.cpu()
        save_image(measurement_picture(r.y, x.shape[-1], self.job.op), L.input(self.task, item.name))
        save_image(x, L.label(item.name))
        save_image(recon, L.result(self.method, self.task, item.name, ".png"))
        save_torch(recon.clone(), L.result(self.method, self.task, item.name, ".pt"))
        row = {"image": item.name, "index": item.index, "inputs": self.job.inputs(item),
               "psnr": float(psnr(recon[None], x[None])[0]), "ssim": float(ssim(recon[None], x[None])[0]),
               "residual": float(r.residual[r.chosen]), "seconds": r.seconds, "nfe": r.nfe, "device": r.device,
               "outputs": file_digests(L.root, self.files(item.name))}
        write_json(L.result(self.method, self.task, item.name, ".json"), row)  # last: the image is finished


def bench_key(settings: BenchSettings, specs: Sequence[RunSpec], names: Sequence[str]) -> dict:
    """What must match for a rerun to reuse the folder's per-image results (methods and tasks may be added)."""
    o, first = settings.overrides, specs[0]
    key = {"images": list(names), "steps": o.steps, "seed": first.seed, "model": first.model, "data": settings.data,
           "tasks": {s.task.name: s.task.to_dict() for s in specs}}
    grid = {"grid": o.grid, "rho": o.rho, "sigma_min": o.sigma_min, "sigma_max": o.sigma_max}
    optional = {"samples": first.samples if first.samples != 1 else None, "nfe": o.nfe,
                "grid": grid if any(v is not None for v in grid.values()) else None,
                "method_presets": dict(settings.method_presets) or None, "model_config": first.model_config,
                "prompt": first.prompt or None, "guidance_scale": None if first.guidance_scale == 1.0 else
                first.guidance_scale}
    return {**key, **{k: v for k, v in optional.items() if v is not None}, **first.execution.network_settings()}


def run_bench(settings: BenchSettings, out: Path, prior: Optional[Prior] = None, execution: Optional[Execution] = None,
              progress: bool = True) -> dict:
    """Run every pair into ``out`` and write the tables; returns the table (empty on torchrun ranks > 0)."""
    from ..models.loading import load_model
    from .figures import bench_figure
    from .solve import conditioned
    from .tables import aggregate, table_files

    execution = execution or Execution.on(settings.overrides.device)
    specs = bench_specs(settings, execution)
    ctx = setup(execution.torch_device)
    layout = BenchLayout(Path(out))
    prior = prior if prior is not None else load_model(specs[0].model, specs[0].model_config,
                                                       device=execution.torch_device)
    prior = conditioned(prior, specs[0])
    items, labels, failed = _load_data(settings, tuple(prior.event_shape))
    jobs = [Job.build(spec, prior) for spec in specs]
    # rank 0 holds the folder (lock, settings) for the whole group; the others wait for it
    folder = RunFolder(layout.root, layout.record_name, bench_key(settings, specs, [it.name for it in items]),
                       extendable=("images", "tasks")) if ctx.is_main else contextlib.nullcontext()
    with folder:
        barrier(ctx)
        plans, reasons = [], {}
        for job in jobs:
            method, task = job.spec.method, job.spec.task.name
            layout.pair(method, task).mkdir(parents=True, exist_ok=True)
            reason = job.why_not()
            if reason is not None and ctx.is_main:
                atomic_write(layout.skip_file(method, task, "NOT_APPLICABLE"), lambda p, r=reason: p.write_text(r + "\n"))
            if reason is not None or layout.skip_reason(method, task) is not None:
                continue
            sink = BenchSink(layout, job)
            plans.append((job, sink, pending(job, items, sink, ctx, reasons)))
        rank = f" [rank {ctx.rank}]" if ctx.world > 1 else ""
        with Progress(sum(len(todo) * job.steps for job, _, todo in plans), f"dps bench images{rank}", progress) as bar:
            bar.note(recompute_note(reasons))
            found = len(items) + len(failed)
            if found < settings.n:
                bar.note(f"--n {settings.n}: {settings.data or 'the held-out digits'} holds {found} image(s); the "
                         f"table is over {len(items)}")
            for job, sink, todo in plans:
                def diverged(exc: Exception, job=job) -> bool:  # the pair reads n/a; the other pairs go on
                    if not isinstance(exc, Diverged):
                        return False
                    atomic_write(layout.skip_file(job.spec.method, job.spec.task.name, "DIVERGED"),
                                 lambda p: p.write_text(f"{exc}\n"))
                    return True

                run_items(job, todo, sink, batch_size=settings.batch_size, progress=bar, on_error=diverged)
        barrier(ctx)  # every shard written
        if not ctx.is_main:
            return {}
        table = aggregate(layout, specs, items, labels, settings)
        table_files(layout, table)
        for task in dict.fromkeys(s.task.name for s in specs):
            ran = [s.method for s in specs if s.task.name == task and layout.skip_reason(s.method, task) is None]
            if ran:  # a task where no method applied has nothing to show
                bench_figure(layout, task, ran, [it.name for it in items][:8])
    if failed:
        raise DPSError(f"{len(failed)} image(s) could not be read and are not in the table {layout.table('.md')}: "
                       + " | ".join(failed))
    return table
