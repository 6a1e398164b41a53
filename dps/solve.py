"""``dps solve``: DPS on the user's own images, into a self-describing, resumable run folder.

Folder layout (all files written atomically; PNGs are 8-bit, clipped to [0, 1], never stretched):

=====================  ===========================================================================
``run.json``           the fully resolved task, model, seeds, settings, and per-image results
``operator.pt``        the operator with its random parameters (mask, kernel, latent): ``load_operator``
``label/NAME.png``     the ground truth (when images, not measurements, were given)
``measurement/NAME.pt`` the measurement y, lossless (float tensor)
``input/NAME.png``     a picture of y (enlarged for SR, log-magnitude for phase retrieval)
``recon/NAME.png``     the reconstruction (with K > 1: sample 0, or the lowest-residual sample with
                       ``select: best-residual``); ``recon/NAME_k.png`` every sample k when K > 1
``samples/NAME.pt``    all K samples (K, C, H, W), lossless
``mean/``, ``std/``    with K > 1: per-pixel posterior mean, and standard deviation saved as 2 * std
                       (std of [0, 1] values is at most 0.5, so the PNG is never stretched)
``progress/NAME.pt``   with ``progress_frames`` F > 0: x0_hat of sample 0 at F evenly spaced steps (F, C, H, W)
=====================  ===========================================================================

Seeds follow :mod:`dps.seeds` (one formula for every command). The run goes through
:mod:`dps.pipeline`: the settings are recorded in ``run.json`` before any work, a rerun with other settings
or another operator is refused, a second process on the same folder is refused while the first runs, and a
rerun with the same settings skips finished images. Input files that cannot be read are listed at the end
(the good ones are solved) and the command exits non-zero.
"""
from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .errors import DPSError
from .images import measurement_picture, save_image
from .operators import Operator, load_operator, save_operator
from .pipeline import RunFolder, load_measurement, measure
from .seeds import FORMULAS, operator_seed, sample_generators
from .solvers.methods import get_method, reconstruct
from .tasks import Task, build_operator, check_operator_matches
from .utils import atomic_path

__all__ = ["SolveSettings", "run_solve", "SomeInputsFailed"]


class SomeInputsFailed(DPSError):
    """Some input files could not be used; the others were solved."""


@dataclass
class SolveSettings:
    model: str = "default"
    samples: int = 1
    seed: int = 0
    batch_size: int = 4
    resize: str = "error"
    convert_channels: bool = False
    progress_frames: int = 0
    method: str = "dps"
    nfe: Optional[int] = None  # run the method at this many network evaluations per sample (Method.at_budget)
    method_preset: Optional[str] = None  # named settings of the method (Method.presets), instead of nfe


def _frame_steps(steps: int, frames: int) -> set[int]:
    """Step indices i (N-1 .. 0) at which x0_hat is recorded: ``frames`` evenly spaced, the last one included."""
    if frames <= 0:
        return set()
    frames = min(frames, steps)
    return {round((steps - 1) * (1 - f / max(frames - 1, 1))) for f in range(frames)}


def _save_pt(t: torch.Tensor, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(t.detach().cpu().clone(), tmp)


def _operator_digest(op: Operator) -> str:
    h = hashlib.sha256(repr((op.name, op.config)).encode())
    for k, v in sorted(op.state_dict().items()):
        if not k.startswith("model."):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_solve(task: Task, out: Path, images: Optional[Sequence[Path]] = None,
              measurements: Optional[Sequence[Path]] = None, settings: SolveSettings = SolveSettings(),
              operator_file: Optional[Path] = None, progress: bool = True, prior=None) -> dict:
    """Solve for every image (or given measurement); returns the run record (also ``run.json``).

    Raises :class:`SomeInputsFailed` after solving the good inputs when some could not be read.
    """
    from tqdm import tqdm

    from .data.folder import list_images, load_images
    from .models.loading import load_model

    if (images is None) == (measurements is None):
        raise DPSError("give either input images (--input) or measurement files (--measurement)")
    method = get_method(settings.method)
    out = Path(out)
    prior = prior if prior is not None else load_model(settings.model)
    shape = tuple(prior.event_shape)
    if operator_file is not None:
        op = load_operator(operator_file)
        check_operator_matches(op, task.operator, shape, str(operator_file))
    else:
        op = build_operator(task.operator, shape, operator_seed(settings.seed))
    if list(op.in_shape) != list(shape):
        raise DPSError(f"the operator expects images {list(op.in_shape)}, the model makes {list(shape)}")
    noise = task.noise_model()
    method.check(op, noise)
    cfg = task.dps_config(method.step_size)
    if settings.nfe is not None and method.budget is None:
        raise DPSError(f"method {method.name} runs no network, so it has no --nfe budget; leave out --nfe")
    cfg, budget = method.run_settings(cfg, settings.nfe, settings.method_preset)

    files = list_images(images) if images is not None else [Path(m) for m in measurements]
    names = [f.stem for f in files]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DPSError(f"input names must be unique (file stems name the outputs); repeated: {', '.join(dup)}")
    read = (lambda f: load_images([f], shape[-1], shape[0], settings.resize, settings.convert_channels)[0]) \
        if images is not None else (lambda f: load_measurement(f, op))
    inputs, failed = {}, []
    for f in files:  # every readable input; the unreadable ones as one-line reasons
        try:
            inputs[f.stem] = read(f)
        except DPSError as exc:
            failed.append(str(exc))

    key = {"task": task.to_dict(), "model": settings.model, "samples": settings.samples, "seed": settings.seed,
           "image_shape": list(shape), "method": settings.method, "operator": _operator_digest(op),
           **({"nfe": settings.nfe} if settings.nfe is not None else {}),
           **({"method_preset": settings.method_preset} if settings.method_preset is not None else {})}
    initial = {"dps_config": cfg.to_dict(), "method_settings": budget, "noise": repr(noise), "operator": {"name": op.name, "config": op.config},
               "seeds": {"operator": settings.seed, **{k: v for k, v in FORMULAS.items() if k != "operator"}},
               "versions": {"torch": torch.__version__, "python": platform.python_version()}, "images": {}}
    with RunFolder(out, "run.json", key, initial) as run:
        record = run.record
        if not (out / "operator.pt").exists():
            save_operator(op, out / "operator.pt")
        good = [i for i, n in enumerate(names) if n in inputs]
        todo = [i for i in good if record["images"].get(names[i], {}).get("done") is not True]
        bar = tqdm(total=len(good), initial=len(good) - len(todo), desc=f"dps solve {task.name}", unit="img",
                   disable=not progress)
        for start in range(0, len(todo), settings.batch_size):
            idx = todo[start:start + settings.batch_size]
            _solve_batch(idx, names, inputs, images is not None, op, noise, cfg, prior, method, settings, task, out,
                         record, run, bar, budget)
        bar.close()
        run.save()
    if failed:
        raise SomeInputsFailed(f"{len(failed)} of {len(files)} input(s) failed, the others are in {out}: "
                               + " | ".join(failed))
    return record


def _solve_batch(idx, names, inputs, are_images, op, noise, cfg, prior, method, settings, task, out, record, run, bar,
                 budget: dict):
    K = settings.samples
    shape = tuple(prior.event_shape)
    batch = torch.stack([inputs[names[i]] for i in idx])
    x = batch if are_images else None
    y = measure(op, noise, x, settings.seed, idx) if are_images else batch
    frames: list[torch.Tensor] = []
    keep = _frame_steps(cfg.steps, settings.progress_frames)

    def callback(state: dict) -> None:
        if state["i"] in keep:  # x0_hat of sample 0 of every image, in data space
            frames.append(prior.to_data(state["x0"]).clamp(0, 1).reshape(len(idx), K, *shape)[:, 0].cpu())

    res = reconstruct(method, prior, op, y, noise, cfg, sample_generators(settings.seed, idx, K), K,
                      callback=callback if keep else None, **budget)
    for b, i in enumerate(idx):
        if frames:
            _save_pt(torch.stack([f[b] for f in frames]), out / "progress" / f"{names[i]}.pt")
        _write_image(out, names[i], y[b], res.x[b], res.residual[b], None if x is None else x[b], op, task, record, i)
        run.save()
        bar.update(1)


def _write_image(out: Path, name: str, y: torch.Tensor, xs: torch.Tensor, residual: torch.Tensor,
                 x_true: Optional[torch.Tensor], op: Operator, task: Task, record: dict, i: int) -> None:
    """Write every file of one image; xs (K, C, H, W), residual (K,) = ||y - A(x_k)||_2."""
    from .metrics import psnr, ssim

    K = xs.shape[0]
    _save_pt(y, out / "measurement" / f"{name}.pt")
    save_image(measurement_picture(y, xs.shape[-1], op), out / "input" / f"{name}.png")
    chosen = int(residual.argmin()) if task.select == "best-residual" else 0
    save_image(xs[chosen], out / "recon" / f"{name}.png")
    entry = {"index": i, "residual": [float(r) for r in residual], "chosen_sample": chosen}
    if K > 1:
        for k in range(K):
            save_image(xs[k], out / "recon" / f"{name}_{k}.png")
        _save_pt(xs, out / "samples" / f"{name}.pt")
        save_image(xs.mean(0), out / "mean" / f"{name}.png")
        save_image((2 * xs.std(0)).clamp(0, 1), out / "std" / f"{name}.png")
    if x_true is not None:
        save_image(x_true, out / "label" / f"{name}.png")
        entry["psnr"] = float(psnr(xs[chosen][None], x_true[None])[0])
        entry["ssim"] = float(ssim(xs[chosen][None], x_true[None])[0])
        if K > 1:
            entry["psnr_mean"] = float(psnr(xs.mean(0)[None], x_true[None])[0])
    entry["done"] = True
    record["images"][name] = entry
