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

Seeds: the operator draws from ``seed``; image i's noise from ``seed * 1_000_003 + i``; its sample k from
``(seed * 1_000_003 + i) * 1_009 + k + 1``. Each sample has its own generator, so results do not depend on
batch size. A rerun with the same settings skips finished images.
"""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .images import measurement_picture, save_image
from .operators import Operator, load_operator, save_operator
from .solvers.dps import dps_sample
from .tasks import Task, build_operator
from .utils import atomic_path, atomic_write

__all__ = ["SolveSettings", "run_solve", "image_seed", "sample_seed"]


def image_seed(seed: int, i: int) -> int:
    return seed * 1_000_003 + i


def sample_seed(seed: int, i: int, k: int) -> int:
    return image_seed(seed, i) * 1_009 + k + 1


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


def _frame_steps(steps: int, frames: int) -> set[int]:
    """Step indices i (N-1 .. 0) at which x0_hat is recorded: ``frames`` evenly spaced, the last one included."""
    if frames <= 0:
        return set()
    frames = min(frames, steps)
    return {round((steps - 1) * (1 - f / max(frames - 1, 1))) for f in range(frames)}


def _save_pt(t: torch.Tensor, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(t.detach().cpu().clone(), tmp)


def _settings_key(task: Task, s: SolveSettings, shape) -> dict:
    return {"task": task.to_dict(), "model": s.model, "samples": s.samples, "seed": s.seed, "image_shape": list(shape),
            "method": s.method}


def run_solve(task: Task, out: Path, images: Optional[Sequence[Path]] = None,
              measurements: Optional[Sequence[Path]] = None, settings: SolveSettings = SolveSettings(),
              operator_file: Optional[Path] = None, progress: bool = True, prior=None) -> dict:
    """Solve for every image (or given measurement); returns the run record (also ``run.json``)."""
    from tqdm import tqdm

    from .data.folder import list_images, load_images
    from .models.loading import load_model

    if (images is None) == (measurements is None):
        raise ValueError("give either input images or measurement files")
    out = Path(out)
    prior = prior if prior is not None else load_model(settings.model)
    shape = tuple(prior.event_shape)
    C, H, W = shape
    if operator_file is not None:
        op = load_operator(operator_file)
    else:
        op = build_operator(task.operator, shape, settings.seed)
    if list(op.config.get("in_shape", shape)) != list(shape):
        raise ValueError(f"operator expects images {op.config['in_shape']}, the model makes {list(shape)}")
    noise, cfg = task.noise_model(), task.dps_config()

    if images is not None:
        files = list_images(images)
        x_all = load_images(files, H, C, settings.resize, settings.convert_channels)
        if x_all.shape[1:] != shape:
            raise ValueError(f"images are {tuple(x_all.shape[1:])}, the model needs {shape}")
        names = [f.stem for f in files]
    else:
        files = [Path(m) for m in measurements]
        x_all = None
        names = [f.stem for f in files]
    if len(set(names)) != len(names):
        raise ValueError("input names must be unique (file stems are used as output names)")

    record_path = out / "run.json"
    key = _settings_key(task, settings, shape)
    record = json.loads(record_path.read_text()) if record_path.exists() else None
    if record is not None and record.get("settings") != key:
        raise ValueError(f"{out} holds a run with other settings; use another --out (or the same settings to resume)")
    if record is None:
        record = {"settings": key, "dps_config": {**cfg.__dict__}, "noise": repr(noise),
                  "operator": {"name": op.name, "config": op.config},
                  "seeds": {"operator": settings.seed, "noise": "seed * 1000003 + i",
                            "sample": "(seed * 1000003 + i) * 1009 + k + 1"},
                  "versions": {"torch": torch.__version__, "python": platform.python_version()},
                  "images": {}}
    for sub in ("input", "recon", "measurement") + (("label",) if x_all is not None else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if not (out / "operator.pt").exists():
        save_operator(op, out / "operator.pt")

    todo = [i for i, n in enumerate(names) if record["images"].get(n, {}).get("done") is not True]
    K = settings.samples
    bar = tqdm(total=len(names), initial=len(names) - len(todo), desc=f"dps solve {task.name}", unit="img",
               disable=not progress)
    for start in range(0, len(todo), settings.batch_size):
        idx = todo[start:start + settings.batch_size]
        ys = []
        for i in idx:
            if x_all is not None:
                g = torch.Generator().manual_seed(image_seed(settings.seed, i))
                ys.append(noise(op(x_all[i:i + 1]), g)[0])
            else:
                y = torch.load(files[i], weights_only=True)
                ys.append(y[0] if y.ndim == 4 else y)
        y = torch.stack(ys)
        gens = [torch.Generator().manual_seed(sample_seed(settings.seed, i, k)) for i in idx for k in range(K)]
        frames: list[torch.Tensor] = []
        keep = _frame_steps(cfg.steps, settings.progress_frames)

        def callback(state: dict) -> None:
            if state["i"] in keep:  # x0_hat of sample 0 of every image, in data space
                frames.append(prior.to_data(state["x0"]).clamp(0, 1).reshape(len(idx), K, *shape)[:, 0].cpu())

        if settings.method == "dps":
            res = dps_sample(prior, op, y, noise, cfg, num_samples=K, generator=gens,
                             callback=callback if keep else None)
            xs, residuals = res.x, res.residual
        else:  # a comparison method: K independent runs, sample k of image i from its own generator
            from .solvers.baselines import BASELINES, FOLLOWS_TASK_STEPS

            kw = {"steps": cfg.steps, "zeta": cfg.zeta} if settings.method in FOLLOWS_TASK_STEPS else {}
            runs = [BASELINES[settings.method](prior, op, y, noise,
                                               [torch.Generator().manual_seed(sample_seed(settings.seed, i, k))
                                                for i in idx], **kw) for k in range(K)]
            xs = torch.stack([r[0] for r in runs], dim=1)
            residuals = torch.stack([r[1] for r in runs], dim=1)
        for b, i in enumerate(idx):
            if frames:
                (out / "progress").mkdir(exist_ok=True)
                _save_pt(torch.stack([f[b] for f in frames]), out / "progress" / f"{names[i]}.pt")
            _write_image(out, names[i], y[b], xs[b], residuals[b], None if x_all is None else x_all[i], op,
                         task, record, i)
            atomic_write(record_path, lambda p: p.write_text(json.dumps(record, indent=2)))
            bar.update(1)
    bar.close()
    atomic_write(record_path, lambda p: p.write_text(json.dumps(record, indent=2)))
    return record


def _write_image(out: Path, name: str, y: torch.Tensor, xs: torch.Tensor, residual: torch.Tensor,
                 x_true: Optional[torch.Tensor], op: Operator, task: Task, record: dict, i: int) -> None:
    """Write every file of one image; xs (K, C, H, W), residual (K,)."""
    from .metrics import psnr, ssim

    K = xs.shape[0]
    _save_pt(y, out / "measurement" / f"{name}.pt")
    save_image(measurement_picture(y, xs.shape[-1], op), out / "input" / f"{name}.png")
    chosen = int(residual.argmin()) if task.select == "best-residual" else 0
    save_image(xs[chosen], out / "recon" / f"{name}.png")
    entry = {"index": i, "residual": [float(r) for r in residual], "chosen_sample": chosen}
    if K > 1:
        for sub in ("samples", "mean", "std"):
            (out / sub).mkdir(exist_ok=True)
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
