"""``dps solve``: a method on the user's own images (or measurements), into a reproducible, resumable run folder
(:class:`~dps.runs.layout.SolveLayout` lists its files).

The settings are recorded in ``run.json`` before any work; a rerun with other settings or another operator
is refused, a second process on the same folder is refused while the first runs, and a rerun with the same
settings skips the images whose record and files are in place and unchanged (each image's record holds the
digests of its input file, the model file, the operator and its own files): an input edited in place, a
model retrained in place, or a result file deleted or damaged is recomputed, and the rerun says how many and
why. A new folder whose run fails before its first finished image is removed again. Input files that cannot
be read are listed at the end (the good ones are solved) and the command exits non-zero. Under ``torchrun``
each process takes every world-th input and rank 0 writes ``run.json``'s summary.
"""
from __future__ import annotations

import contextlib
import platform
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..diffusion.denoiser import Prior
from ..distributed import barrier, setup
from ..errors import DPSError
from ..images import measurement_picture, save_image
from ..operators import load_operator, save_operator
from ..seeds import FORMULAS
from ..tasks import check_operator_matches
from ..utils import save_torch
from .folder import RunFolder, read_json, write_json
from .layout import SolveLayout
from .loop import (Item, ItemResult, Job, Progress, digest_bytes, load_measurement, operator_digest, pending,
                   recompute_note, run_items, why_stale, file_digests)
from .spec import RunSpec, settings_record

__all__ = ["run_solve", "SomeInputsFailed", "load_prior", "conditioned"]


class SomeInputsFailed(DPSError):
    """Some input files could not be used; the others were solved."""


def load_prior(spec: RunSpec) -> Prior:
    """The spec's model on its device, with its prompt and guidance scale (text-conditioned latent models)."""
    from ..models.loading import load_model

    return conditioned(load_model(spec.model, spec.model_config, device=spec.execution.torch_device), spec)


def conditioned(prior: Prior, spec: RunSpec) -> Prior:
    """``prior`` with the spec's prompt and guidance scale; a one-line error where the model takes no prompt."""
    if getattr(prior, "form", None) == "latent":
        return prior.condition(spec.prompt, spec.guidance_scale)
    if spec.prompt or spec.guidance_scale != 1.0:
        raise DPSError(f"the model {spec.model} is not a text-conditioned latent model: it takes no prompt or guidance "
                       "scale; leave out --prompt and --guidance-scale")
    return prior


def save_tensor(t: torch.Tensor, path: Path) -> None:
    save_torch(t.detach().cpu().clone(), path)


class SolveSink:
    """Writes one image's files and its record (:class:`~dps.runs.layout.SolveLayout`)."""

    def __init__(self, layout: SolveLayout, job: Job) -> None:
        self.layout, self.job = layout, job

    def outputs(self, name: str, has_label: bool) -> list[Path]:
        L, K = self.layout, self.job.spec.samples
        files = [L.measurement(name), L.input(name), L.recon(name)] + ([L.label(name)] if has_label else [])
        if K > 1:
            files += [L.samples(name), L.mean(name), L.std(name)] + [L.recon(name, k) for k in range(K)]
        return files

    def stale(self, item: Item) -> Optional[str]:
        return why_stale(self.layout.item_record(item.name), self.job.inputs(item),
                         self.outputs(item.name, item.x is not None), self.layout.root)

    def write(self, item: Item, r: ItemResult) -> None:
        from ..metrics import psnr, ssim

        L, K, name, xs = self.layout, self.job.spec.samples, item.name, r.samples
        save_tensor(r.y, L.measurement(name))
        save_image(measurement_picture(r.y, xs.shape[-1], self.job.op), L.input(name))
        save_image(xs[r.chosen], L.recon(name))
        entry = {"index": item.index, "inputs": self.job.inputs(item), "residual": [float(v) for v in r.residual],
                 "chosen_sample": r.chosen, "seconds": round(r.seconds, 3), "nfe": r.nfe, "device": r.device}
        if K > 1:
            for k in range(K):
                save_image(xs[k], L.recon(name, k))
            save_tensor(xs, L.samples(name))
            save_image(xs.mean(0), L.mean(name))
            save_image((2 * xs.std(0)).clamp(0, 1), L.std(name))
        if item.x is not None:
            x_true = item.x.cpu()
            save_image(x_true, L.label(name))
            entry["psnr"] = float(psnr(xs[r.chosen][None], x_true[None])[0])
            entry["ssim"] = float(ssim(xs[r.chosen][None], x_true[None])[0])
            if K > 1:
                entry["psnr_mean"] = float(psnr(xs.mean(0)[None], x_true[None])[0])
        if r.frames is not None:
            save_tensor(r.frames, L.progress(name))
        entry["outputs"] = file_digests(L.root, self.outputs(name, item.x is not None))
        write_json(L.item_record(name), {**entry, "done": True})  # last: the image is finished


def _read_inputs(files: Sequence[Path], are_images: bool, job: Job, resize: str, convert_channels: bool
                 ) -> tuple[list[Item], list[str]]:
    """Every readable input as an Item (index = its position among the inputs), and the unreadable ones'
    one-line reasons."""
    from ..data.folder import load_images
    from ..models.loading import model_advice

    shape = tuple(job.prior.event_shape)
    advice = model_advice(job.spec.model, shape)
    items, failed = [], []
    for i, f in enumerate(files):
        try:
            if are_images:
                x = load_images([f], shape[-1], shape[0], resize, convert_channels, advice)[0]
                items.append(Item(f.stem, i, x=x, digest=digest_bytes(f.read_bytes())))
            else:
                y = load_measurement(f, job.op)
                items.append(Item(f.stem, i, y=y, digest=digest_bytes(f.read_bytes())))
        except DPSError as exc:
            failed.append(str(exc))
    return items, failed


def _draws_from_seed(spec: dict, shape) -> bool:
    """Whether the operator ``spec`` describes has random parameters (two seeds build two operators)."""
    from ..tasks import build_operator

    return operator_digest(build_operator(spec, shape, 0)) != operator_digest(build_operator(spec, shape, 1))


def run_solve(spec: RunSpec, out: Path, images: Optional[Sequence[Path]] = None,
              measurements: Optional[Sequence[Path]] = None, operator_file: Optional[Path] = None,
              prior: Optional[Prior] = None, batch_size: int = 4, resize: str = "error",
              convert_channels: bool = False, progress_frames: int = 0, progress: bool = True) -> dict:
    """Solve for every image (or given measurement) into ``out``; returns the run record (also ``run.json``).

    Raises :class:`SomeInputsFailed` after solving the good inputs when some could not be read.
    """
    from ..data.folder import list_images

    if (images is None) == (measurements is None):
        raise DPSError("give either input images (--input) or measurement files (--measurement)")
    layout = SolveLayout(Path(out))
    prior = prior if prior is not None else load_prior(spec)
    op = None
    if operator_file is not None:
        op = load_operator(operator_file)
        check_operator_matches(op, spec.task.operator, tuple(prior.event_shape), str(operator_file))
    elif measurements is not None and _draws_from_seed(spec.task.operator, tuple(prior.event_shape)):
        raise DPSError(f"the operator {spec.task.operator['name']} draws its parameters (mask, kernel or latent) at "
                       "random, so a measurement needs the operator that made it: pass --operator RUN/operator.pt")
    job = Job.build(spec, prior, op)
    job.method.check(job.op, job.noise, job.prior)
    job.check_frames(progress_frames)  # before any folder is made

    files = list_images(images) if images is not None else [Path(m) for m in measurements]
    names = [f.stem for f in files]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DPSError(f"input names must be unique (file stems name the outputs); repeated: {', '.join(dup)}")
    items, failed = _read_inputs(files, images is not None, job, resize, convert_channels)
    if not items:  # nothing to solve: say why before any folder is made
        raise DPSError(f"none of the {len(files)} input(s) can be used: " + " | ".join(failed))

    key = {**spec.key(), "method_settings": settings_record(job.settings), "image_shape": list(prior.event_shape),
           "operator": operator_digest(job.op)}
    initial = {"method_settings": settings_record(job.settings), "noise": repr(job.noise),
               "operator": {"name": job.op.name, "config": job.op.config},
               "seeds": {"operator": spec.seed, **{k: v for k, v in FORMULAS.items() if k != "operator"}},
               "versions": {"torch": torch.__version__, "python": platform.python_version()}, "images": {}}
    ctx = setup(job.device)
    # rank 0 holds the folder (lock, settings) for the whole group; the others wait for it
    folder = RunFolder(layout.root, layout.record_name, key, initial) if ctx.is_main else contextlib.nullcontext()
    with folder as run:
        barrier(ctx)
        if ctx.is_main:
            run.record["execution"] = spec.execution.record()
            run.save()
            if not layout.operator.exists():
                save_operator(job.op, layout.operator)
        sink = SolveSink(layout, job)
        reasons: dict = {}
        todo = pending(job, items, sink, ctx, reasons)
        rank = f" [rank {ctx.rank}]" if ctx.world > 1 else ""
        with Progress(len(todo) * job.steps, f"dps solve {spec.task.name}{rank}", progress) as bar:
            bar.note(recompute_note(reasons, "image"))
            try:
                run_items(job, todo, sink, batch_size=batch_size, frames=progress_frames, progress=bar)
            except DPSError as exc:  # e.g. diverged: a new folder without a finished image must not block the fix
                if not ctx.is_main:
                    raise
                if not layout.item_records():
                    run.discard([layout.operator])
                    raise
                raise type(exc)(f"{exc}; {out} keeps the images finished with these settings, so run the corrected "
                                "command with another --out") from None
        barrier(ctx)  # every shard written
        if not ctx.is_main:
            return {}
        run.record["images"] = {p.stem: read_json(p) for p in layout.item_records()}  # every image solved here
        run.save()
        record = run.record
    if failed:
        raise SomeInputsFailed(f"{len(failed)} of {len(files)} input(s) failed, the others are in {out}: "
                               + " | ".join(failed))
    return record
