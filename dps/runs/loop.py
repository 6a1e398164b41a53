"""The one batch loop under ``dps solve``, ``dps bench images``, ``dps demo`` and ``dps example``:

    this process's share of the items (torchrun) -> skip the finished ones (the sink says which) ->
    per batch: measure (or take the given y) -> reconstruct K samples (the method table) -> hand each
    image's result to the sink, which writes it atomically and records it

A :class:`Job` is one (method, task) on one prior, every tensor on the run's device; an :class:`Item` is one
image (its ground truth, or its given measurement) with its index in the run, which fixes its seeds
(:mod:`dps.seeds`), so a result never depends on the batch, the shard or the process it ran in. Each command
has its own :class:`Sink` (what to write where: :mod:`dps.runs.layout`), and the loop is the same for all.
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import torch

from ..diffusion.denoiser import Prior
from ..diffusion.grid import noise_model
from ..diffusion.schedule import check_step_count
from ..distributed import Context, set_threads, shard
from ..errors import Diverged, DPSError
from ..noise import NoiseModel
from ..operators import Operator
from ..seeds import noise_generator, operator_seed, sample_generators
from ..solvers.dps import check_measurement
from ..solvers.methods import Method, reconstruct
from ..tasks import build_operator
from .spec import RunSpec

__all__ = ["Job", "Item", "ItemResult", "Sink", "Progress", "run_items", "pending", "measure", "load_measurement",
           "digest_bytes", "digest_tensor", "frame_steps", "operator_digest", "save_operator_once", "why_stale",
           "file_digests", "recompute_note"]


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def operator_digest(op: Operator) -> str:
    """A digest of the operator's kind, settings and random parameters (not a network's weights)."""
    h = hashlib.sha256(repr((op.name, op.config)).encode())
    for k, v in sorted(op.state_dict().items()):
        if not k.startswith("model."):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_operator_once(op: Operator, path: Path) -> None:
    """Write the operator to ``path`` unless the file holds this operator already (a rerun leaves it alone)."""
    from ..operators import load_operator, save_operator

    if path.exists():
        try:
            if operator_digest(load_operator(path)) == operator_digest(op):
                return
        except DPSError:
            pass
    save_operator(op, path)


def digest_tensor(t: torch.Tensor) -> str:
    """A digest of a tensor's values (the input of a result: a rerun recomputes the result when it changes)."""
    return digest_bytes(t.detach().cpu().contiguous().numpy().tobytes())


@dataclass
class Item:
    """One image of a run.

    :param name: names its output files; :param index: its position in the run (its seeds);
    :param x: the ground truth (C, H, W) in [0, 1], or None when only a measurement was given;
    :param y: a given measurement (*out_shape), or None (then y is measured from x);
    :param digest: a digest of the input (file bytes or values), recorded with the result.
    """

    name: str
    index: int
    x: Optional[torch.Tensor] = None
    y: Optional[torch.Tensor] = None
    digest: str = ""


@dataclass
class ItemResult:
    """One image's reconstruction: y (*out_shape), samples (K, C, H, W) and residuals (K,) on the CPU; the
    sample the task selects; seconds and counted network evaluations per sample; progress frames or None."""

    y: torch.Tensor
    samples: torch.Tensor
    residual: torch.Tensor
    chosen: int
    seconds: float
    nfe: float
    device: str
    frames: Optional[torch.Tensor] = None


class Sink(Protocol):
    """Where a command's results go: which items are finished, and how one result is written and recorded.

    ``stale(item)`` is None when the item's result is finished and current, else why it must be (re)computed
    (:func:`why_stale`)."""

    def stale(self, item: Item) -> Optional[str]: ...

    def write(self, item: Item, result: ItemResult) -> None: ...


NEW = "new"


def file_digests(root: Path, files: Sequence[Path]) -> dict:
    """{path relative to ``root``: digest of its bytes} of a result's files, recorded with the result so that a
    file damaged or replaced later is recomputed (relative, so a copied run folder stays finished)."""
    return {Path(f).relative_to(root).as_posix(): digest_bytes(Path(f).read_bytes()) for f in files}


def why_stale(record_path: Path, inputs: dict, files: Sequence[Path], root: Path) -> Optional[str]:
    """None when the record at ``record_path`` exists, names exactly these ``inputs`` (digests of the image, the
    model, the operator, ...) and every result file in ``files`` exists with the bytes the record names
    (:func:`file_digests`, relative to ``root``); else the reason: NEW (nothing of it exists), "record missing",
    "record damaged", "<input> changed", "result file missing" or "result file changed"."""
    from .folder import read_json

    if not record_path.exists():
        return "record missing" if any(Path(f).exists() for f in files) else NEW
    try:
        record = read_json(record_path)
    except DPSError:
        return "record damaged"
    have = record.get("inputs") if isinstance(record.get("inputs"), dict) else {}
    changed = [k for k, v in inputs.items() if have.get(k) != v]
    if changed:
        return " and ".join(changed) + " changed"
    if not all(Path(f).exists() for f in files):
        return "result file missing"
    outputs = record.get("outputs") if isinstance(record.get("outputs"), dict) else {}
    if any(outputs.get(name) != digest for name, digest in file_digests(root, files).items()):
        return "result file changed"
    return None


@dataclass
class Job:
    """One (method, task) on one prior, resolved, every tensor on the run's device."""

    spec: RunSpec
    prior: Prior
    op: Operator
    noise: NoiseModel
    method: Method
    settings: Any
    model_id: str = ""

    def inputs(self, item: Item) -> dict:
        """The digests a result of ``item`` depends on beyond the run's settings: the input's bytes (image or
        measurement), the model file's bytes and the operator's parameters."""
        return {"input": item.digest, "model": self.model_id, "operator": self.operator_id}

    @cached_property
    def operator_id(self) -> str:
        return operator_digest(self.op)

    @classmethod
    def build(cls, spec: RunSpec, prior: Prior, op: Optional[Operator] = None) -> "Job":
        """The job of ``spec`` on ``prior``: the task's operator (drawn on the CPU from the seed, so it is the same
        on every device; or ``op``, e.g. loaded from a run), prior and operator moved to the run's device, the
        method's settings resolved. The method's applicability is the caller's to check (:meth:`why_not`)."""
        device = spec.execution.torch_device
        shape = tuple(prior.event_shape)
        try:
            op = op if op is not None else build_operator(spec.task.operator, shape, operator_seed(spec.seed))
        except DPSError as exc:  # a bad operator parameter: name the task file it is in
            raise DPSError(f"{spec.task.source}: {exc}" if spec.task.source else str(exc)) from None
        if tuple(op.in_shape) != shape:
            raise DPSError(f"the operator expects images {list(op.in_shape)}, the model makes {list(shape)}")
        settings = spec.method_settings()
        job = cls(spec, prior.to(device), op.to(device), spec.task.noise_model(), spec.method_entry,
                  settings, _model_id(spec.model))
        job.check_steps()
        if job.method.takes_grid:  # the grid as it runs on this prior (records compare what ran, not the request)
            job.settings = replace(settings, grid=settings.grid.resolved(job.prior))
        return job

    def check_steps(self) -> None:
        """A DPSError, naming where the count came from, when the method's steps do not fit the prior: on a VP
        grid 1 to T steps of the T the model was trained with; a grid the model cannot take (a vp grid of a
        VE model, a range outside the model's) is refused here too, before any folder is made."""
        m = self.method
        if m.takes_grid:  # DAPS's levels, the others' steps
            self.settings.grid.build(self.prior, getattr(self.settings, m.counter),
                                     getattr(self.settings, "spacing", "even"), self.spec.steps_from, m.name)
        elif getattr(self.settings, "steps", None) is not None and getattr(noise_model(self.prior), "schedule",
                                                                            None) is not None:
            check_step_count(self.settings.steps, len(noise_model(self.prior).schedule), m.name, self.spec.steps_from)

    @property
    def device(self) -> torch.device:
        return self.spec.execution.torch_device

    def why_not(self) -> Optional[str]:
        """None when the method applies to the task's operator and noise, else the reason."""
        return self.method.why_not(self.op, self.noise, self.prior)

    def check_frames(self, frames: int) -> None:
        """A DPSError when ``frames`` > 0 progress frames are asked of a method that reports no progress."""
        if frames and self.method.progress is None:
            raise DPSError(f"method {self.method.name} reports no progress, so --progress-frames has nothing to "
                           "record; leave it out")

    @property
    def steps(self) -> int:
        """Progress units per image: the method's reported steps, or 1 for a method that reports none."""
        return self.method.progress(self.settings) if self.method.progress is not None else 1


def _model_id(model: str) -> str:
    """The model's identity (:func:`~dps.models.loading.model_identity`), or "" when ``model`` names no file
    (a prior passed in by a caller)."""
    from ..models.loading import EMBEDDED_MODELS, model_identity

    return model_identity(model) if model in EMBEDDED_MODELS or Path(model).exists() else ""


def measure(op: Operator, noise: NoiseModel, x: torch.Tensor, seed: int, indices: Sequence[int]) -> torch.Tensor:
    """y_b = noise(A(x_b)) for images x (B, *in_shape) on the operator's device, image indices[b]'s noise from
    its own generator (:func:`~dps.seeds.noise_generator`) on that device."""
    with torch.no_grad():
        return torch.cat([noise(op(x[b:b + 1]), noise_generator(seed, i, x.device)) for b, i in enumerate(indices)])


def load_measurement(path: Path, op: Operator) -> torch.Tensor:
    """A measurement file (.pt) holding one y of the operator's output shape, (1, ...) or (...), as (*out_shape)."""
    from ..io import load_torch_file

    y = load_torch_file(path, "measurement file")
    if not isinstance(y, torch.Tensor):
        raise DPSError(f"measurement file {path} holds a {type(y).__name__}, not a tensor")
    if not y.is_floating_point():
        y = y.to(torch.get_default_dtype())
    shape = tuple(op.out_shape)
    if tuple(y.shape) == (1, *shape):
        y = y[0]
    elif tuple(y.shape[1:]) == shape and y.shape[0] > 1:
        raise DPSError(f"measurement file {path} holds {y.shape[0]} measurements; save one per file "
                       f"(shape {shape}) and pass each with --measurement")
    if tuple(y.shape) != shape:
        raise DPSError(f"measurement file {path} has shape {tuple(y.shape)}, but {op.name} produces {shape}; "
                       "use the operator that made it (--operator)")
    check_measurement(y[None], op, f"measurement file {path}")
    return y.to(torch.get_default_dtype())


def frame_steps(steps: int, frames: int) -> set[int]:
    """Step indices i (steps-1 .. 0) at which x0_hat is recorded: ``frames`` evenly spaced, the last included."""
    if frames <= 0:
        return set()
    frames = min(frames, steps)
    return {round((steps - 1) * (1 - f / max(frames - 1, 1))) for f in range(frames)}


class Progress:
    """One progress bar for a whole command, in steps of work (a method's reported steps per image, or one
    per image for methods that report none), so that its remaining time holds from the start."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled or total == 0, smoothing=0.1)

    def update(self, n: int) -> None:
        self.bar.update(n)

    def note(self, text: Optional[str]) -> None:
        """Print one line above the bar (on stderr, also when the bar is off)."""
        if text:
            self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # also on an error: the bar ends its line before the error is printed


def pending(job: Job, items: Sequence[Item], sink: Sink, ctx: Optional[Context] = None,
            reasons: Optional[dict] = None) -> list[Item]:
    """This process's share of ``items`` (every world-th under torchrun, split before skipping, so the split
    never depends on timing) that the sink has not finished. ``reasons``, when given, collects why each
    result made before is recomputed: {reason: [item names]} (new items are not listed)."""
    share = shard(list(items), ctx) if ctx is not None else list(items)
    todo = []
    for item in share:
        why = sink.stale(item)
        if why is not None:
            todo.append(item)
            if why != NEW and reasons is not None:
                reasons.setdefault(why, []).append(item.name)
    return todo


def recompute_note(reasons: dict, what: str = "result") -> Optional[str]:
    """One line that says how many results made before are recomputed and why, or None."""
    if not reasons:
        return None
    n = sum(len(v) for v in reasons.values())
    parts = []
    for why, names in sorted(reasons.items()):
        shown = list(dict.fromkeys(names))  # an image recomputed for several (method, task) pairs: named once
        parts.append(f"{len(names)} {why} ({', '.join(shown[:3])}{', ...' if len(shown) > 3 else ''})")
    return f"recomputing {n} {what}(s) made before: " + "; ".join(parts)


def run_items(job: Job, items: Sequence[Item], sink: Sink, *, batch_size: int = 8, frames: int = 0,
              progress: Optional[Progress] = None, on_error: Optional[Callable[[Exception], bool]] = None) -> None:
    """Reconstruct every item of ``items`` (the pending ones: :func:`pending`) in batches and hand each result to
    the sink. ``frames`` > 0 records x0_hat of sample 0 at that many steps (methods that report progress;
    others refuse it). ``on_error(exc)`` may claim an exception of a batch (return True: stop quietly)."""
    if job.spec.execution.threads is not None:
        set_threads(job.spec.execution.threads)
    job.check_frames(frames)
    spec, K = job.spec, job.spec.samples
    keep = frame_steps(job.steps, frames)
    shape = tuple(job.prior.event_shape)
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        idx = [it.index for it in batch]
        recorded: list[torch.Tensor] = []

        def callback(state: dict, n=len(batch)) -> None:
            if progress is not None:
                progress.update(n)
            if state["i"] in keep:  # x0_hat of sample 0 of every image, in data space
                x0 = job.prior.to_data(state["x0"]).clamp(0, 1).reshape(n, K, *shape)[:, 0]
                recorded.append(x0.cpu())

        t0 = time.time()
        try:
            if batch[0].y is not None:
                y = torch.stack([it.y for it in batch]).to(job.device)
            else:
                y = measure(job.op, job.noise, torch.stack([it.x for it in batch]).to(job.device), spec.seed, idx)
            res = reconstruct(job.method, job.prior, job.op, y, job.noise, job.settings,
                              sample_generators(spec.seed, idx, K, job.device), K,
                              callback=callback if job.method.progress is not None else None,
                              execution=spec.execution)
        except Exception as exc:
            if isinstance(exc, Diverged):  # say which images
                exc = Diverged(f"{exc} (image{'s' if len(batch) > 1 else ''} {', '.join(it.name for it in batch)})")
            if on_error is not None and on_error(exc):
                return
            raise exc from None
        seconds = (time.time() - t0) / len(batch)
        if job.method.progress is None and progress is not None:
            progress.update(len(batch))
        chosen = res.residual.argmin(1) if spec.task.select == "best-residual" else torch.zeros(len(batch), dtype=torch.long)
        x, residual, y = res.x.cpu(), res.residual.cpu(), y.cpu()
        for b, item in enumerate(batch):
            sink.write(item, ItemResult(y=y[b], samples=x[b], residual=residual[b], chosen=int(chosen[b]),
                                        seconds=seconds, nfe=res.extras["nfe"], device=str(job.device),
                                        frames=torch.stack([f[b] for f in recorded]) if recorded else None))
