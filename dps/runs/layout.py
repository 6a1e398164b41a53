"""The layout of each kind of run folder: one class per kind, read by the code that writes the folder and by
``dps figure`` that reads it. Every file is written atomically; PNGs are 8-bit, clipped to [0, 1], never
stretched; tensors (``.pt``) are lossless and load with ``torch.load(weights_only=True)``.

``dps solve`` (:class:`SolveLayout`)::

    run.json               settings (recorded first), the execution, and the per-image results
    operator.pt            the operator with its random parameters (mask, kernel, latent)
    records/NAME.json      one image's result record (what a rerun checks before it skips the image)
    measurement/NAME.pt    the measurement y
    input/NAME.png         a picture of y (enlarged for SR, log-magnitude for phase retrieval)
    label/NAME.png         the ground truth (when images, not measurements, were given)
    recon/NAME.png         the reconstruction (sample 0, or the lowest-residual sample with select: best-residual)
    recon/NAME_k.png       every sample k (K > 1)
    samples/NAME.pt        all K samples (K, C, H, W) (K > 1)
    mean/NAME.png          the per-pixel posterior mean (K > 1)
    std/NAME.png           2 x the per-pixel standard deviation (K > 1; std of [0, 1] values is at most 0.5)
    progress/NAME.pt       x0_hat of sample 0 at F evenly spaced steps (F, C, H, W) (--progress-frames F)

``dps bench images`` (:class:`BenchLayout`)::

    bench.json                        settings (images, data, model, seed, every task's definition)
    results/METHOD/TASK/NAME.json     one image's metrics (PSNR, SSIM, residual, seconds, NFE)
    results/METHOD/TASK/NAME.png|pt   its reconstruction
    results/METHOD/TASK/NOT_APPLICABLE or DIVERGED   why the pair has no results
    inputs/TASK/NAME.png, labels/NAME.png           measurement pictures and ground truths
    table.md, table.csv, table.json   the paper's table layout; figure_TASK.png

``dps demo`` and ``dps example`` (:class:`GalleryLayout`)::

    demo.json | example.json          settings, and the tasks and images of the last run
    tasks/TASK/operator.pt            the task's operator
    tasks/TASK/images/NAME.pt         y, ground truth, the K samples, residuals, the naive inverse
    tasks/TASK/images/NAME.json       the image's record
    figure.png, metrics.json, metrics.md
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["SolveLayout", "BenchLayout", "GalleryLayout", "layout_of", "SKIP_FILES"]

#: files that say why a bench (method, task) pair has no results
SKIP_FILES = ("NOT_APPLICABLE", "DIVERGED")


@dataclass(frozen=True)
class SolveLayout:
    root: Path
    kind = "solve"
    record_name = "run.json"

    @property
    def record(self) -> Path:
        return self.root / self.record_name

    @property
    def operator(self) -> Path:
        return self.root / "operator.pt"

    def item_record(self, name: str) -> Path:
        return self.root / "records" / f"{name}.json"

    def item_records(self) -> list[Path]:
        """The records of every image the folder holds."""
        return sorted((self.root / "records").glob("*.json"))

    def measurement(self, name: str) -> Path:
        return self.root / "measurement" / f"{name}.pt"

    def input(self, name: str) -> Path:
        return self.root / "input" / f"{name}.png"

    def label(self, name: str) -> Path:
        return self.root / "label" / f"{name}.png"

    def recon(self, name: str, k: Optional[int] = None) -> Path:
        return self.root / "recon" / (f"{name}.png" if k is None else f"{name}_{k}.png")

    def samples(self, name: str) -> Path:
        return self.root / "samples" / f"{name}.pt"

    def mean(self, name: str) -> Path:
        return self.root / "mean" / f"{name}.png"

    def std(self, name: str) -> Path:
        return self.root / "std" / f"{name}.png"

    def progress(self, name: str) -> Path:
        return self.root / "progress" / f"{name}.pt"

    def figure(self) -> Path:
        return self.root / "figure.png"


@dataclass(frozen=True)
class BenchLayout:
    root: Path
    kind = "bench"
    record_name = "bench.json"

    @property
    def record(self) -> Path:
        return self.root / self.record_name

    def pair(self, method: str, task: str) -> Path:
        """The folder of one (method, task) pair's results."""
        return self.root / "results" / method / task

    def result(self, method: str, task: str, name: str, suffix: str) -> Path:
        """``suffix`` ".json" (metrics), ".png" or ".pt" (the reconstruction) of one image."""
        return self.pair(method, task) / f"{name}{suffix}"

    def skip_file(self, method: str, task: str, why: str) -> Path:
        return self.pair(method, task) / why

    def skip_reason(self, method: str, task: str) -> Optional[str]:
        """Why a pair has no results (its NOT_APPLICABLE or DIVERGED note), else None."""
        for why in SKIP_FILES:
            path = self.skip_file(method, task, why)
            if path.exists():
                return path.read_text().strip()
        return None

    def input(self, task: str, name: str) -> Path:
        return self.root / "inputs" / task / f"{name}.png"

    def label(self, name: str) -> Path:
        return self.root / "labels" / f"{name}.png"

    def table(self, suffix: str) -> Path:
        return self.root / f"table{suffix}"

    def figure(self, task: str) -> Path:
        return self.root / f"figure_{task}.png"


@dataclass(frozen=True)
class GalleryLayout:
    root: Path
    record_name: str = "demo.json"
    kind = "gallery"

    @property
    def record(self) -> Path:
        return self.root / self.record_name

    def item(self, task: str, name: str, suffix: str) -> Path:
        """``suffix`` ".pt" (tensors) or ".json" (record) of one image of a task."""
        return self.root / "tasks" / task / "images" / f"{name}{suffix}"

    def operator(self, task: str) -> Path:
        return self.root / "tasks" / task / "operator.pt"

    def figure(self) -> Path:
        return self.root / "figure.png"

    def metrics(self, suffix: str) -> Path:
        return self.root / f"metrics{suffix}"


def layout_of(folder: Path):
    """The layout of an existing run folder, from the record file it holds, or None."""
    folder = Path(folder)
    for layout in (SolveLayout(folder), BenchLayout(folder), GalleryLayout(folder, "demo.json"),
                   GalleryLayout(folder, "example.json")):
        if layout.record.exists():
            return layout
    return None
