"""A gallery run: one method on several task variants, the same images for each, one figure and one metrics
table (``dps demo`` and ``dps example`` are galleries; :class:`~dps.runs.layout.GalleryLayout` lists the files).

The settings are recorded first (``demo.json`` / ``example.json``) and a rerun with other settings is refused;
every image of every task is written as it finishes and skipped on a rerun whose task definition and input
are the same (each image's record keeps their digests), so a rerun with fewer or more tasks reuses what it
can. One progress bar covers all tasks, in steps, so it tells the remaining time from the start. Under
``torchrun`` each process takes every world-th image of each task; rank 0 draws the figure.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..diffusion.denoiser import Prior
from ..distributed import barrier, setup
from ..tasks import Variant
from ..utils import atomic_write, save_torch
from .folder import RunFolder, read_json, write_json
from .layout import GalleryLayout
from .loop import (Item, ItemResult, Job, Progress, digest_bytes, pending, recompute_note, run_items,
                   save_operator_once, why_stale, file_digests)
from .spec import RunSpec

__all__ = ["Gallery", "run_gallery", "load_results"]


@dataclass(frozen=True)
class Gallery:
    """What a gallery runs: ``specs[j]`` is variant ``variants[j]`` resolved and ``items_of(j)`` its images (the
    demo's are the same for every task, the example's its own); ``settings`` identify the run."""

    layout: GalleryLayout
    variants: Sequence[Variant]
    specs: Sequence[RunSpec]
    settings: dict
    items_of: Callable[[int], Sequence[Item]]
    title: str = "dps demo"


def task_digest(spec: RunSpec) -> str:
    return digest_bytes(json.dumps(spec.key(), sort_keys=True).encode())


class GallerySink:
    """Writes one image of one task: its tensors and its record (with the task's and the input's digests)."""

    def __init__(self, layout: GalleryLayout, job: Job) -> None:
        self.layout, self.job = layout, job
        self.task, self.digest = job.spec.task.name, task_digest(job.spec)

    def stale(self, item: Item) -> Optional[str]:
        return why_stale(self.layout.item(self.task, item.name, ".json"), {**self.job.inputs(item), "task": self.digest},
                         [self.layout.item(self.task, item.name, ".pt")], self.layout.root)

    def write(self, item: Item, r: ItemResult) -> None:
        op = self.job.op
        naive = op.naive_inverse(r.y[None].to(self.job.device))[0].cpu()
        tensors = {"y": r.y, "x": item.x.cpu(), "samples": r.samples, "residual": r.residual, "naive": naive}
        save_torch(tensors, self.layout.item(self.task, item.name, ".pt"))
        write_json(self.layout.item(self.task, item.name, ".json"),
                   {"index": item.index, "inputs": {**self.job.inputs(item), "task": self.digest}, "seconds": r.seconds,
                    "nfe": r.nfe, "device": r.device,
                    "outputs": file_digests(self.layout.root, [self.layout.item(self.task, item.name, ".pt")])})


def load_results(layout: GalleryLayout, task: str, items: Sequence[Item]) -> dict:
    """A task's stacked tensors (y, x, samples (N, K, ...), residual (N, K), naive) and its total seconds."""
    per = [torch.load(layout.item(task, it.name, ".pt"), weights_only=True) for it in items]
    out = {k: torch.stack([p[k] for p in per]) for k in per[0]}
    out["seconds"] = sum(read_json(layout.item(task, it.name, ".json"))["seconds"] for it in items)
    return out


def run_gallery(g: Gallery, prior: Prior, progress: bool = True) -> Optional[dict]:
    """Run every task of ``g`` and return {task: results} (see :func:`load_results`) on rank 0, None elsewhere."""
    layout = g.layout
    jobs = [Job.build(spec, prior) for spec in g.specs]
    for job in jobs:
        job.method.check(job.op, job.noise, job.prior)
    ctx = setup(jobs[0].device)
    folder = RunFolder(layout.root, layout.record_name, g.settings) if ctx.is_main else contextlib.nullcontext()
    with folder as run:
        barrier(ctx)
        plans, reasons = [], {}
        for j, job in enumerate(jobs):
            if ctx.is_main:
                save_operator_once(job.op, layout.operator(job.spec.task.name))
            sink = GallerySink(layout, job)
            plans.append((job, sink, pending(job, g.items_of(j), sink, ctx, reasons)))
        with Progress(sum(len(todo) * job.steps for job, _, todo in plans), g.title, progress) as bar:
            bar.note(recompute_note(reasons))
            for job, sink, todo in plans:
                run_items(job, todo, sink, batch_size=max(1, len(todo)), progress=bar)
        barrier(ctx)
        if not ctx.is_main:
            return None
        run.record.update({"tasks": [{"name": v.name, "title": v.title, "images": [it.name for it in g.items_of(j)]}
                                     for j, v in enumerate(g.variants)], "samples": g.specs[0].samples,
                           "method": g.specs[0].method, "execution": g.specs[0].execution.record()})
        run.save()
        return {job.spec.task.name: load_results(layout, job.spec.task.name, g.items_of(j))
                for j, job in enumerate(jobs)}


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))
