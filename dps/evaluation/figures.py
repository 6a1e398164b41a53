"""Figures like the paper's: measurement | reconstruction(s) | ground truth, and progress strips.

``solve_figure(run_dir)``: rows are images of a ``dps solve`` folder; columns the measurement picture,
the K samples (or the one reconstruction) and the ground truth; with ``progress/`` a second figure
``progress.png`` shows x0_hat over the steps (one strip per image).
``bench_figure(bench_dir, task)``: rows are images; columns measurement | one per method | ground truth.
Images are shown as stored (clipped to [0, 1], never stretched).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import DPSError
from ..solvers.methods import METHODS
from ..utils import atomic_write

__all__ = ["solve_figure", "bench_figure", "grid_figure", "figure_for"]


def _read(path: Path) -> Optional[np.ndarray]:
    if not path.exists():
        return None
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def grid_figure(cells: Sequence[Sequence[Optional[np.ndarray]]], col_titles: Sequence[str],
                row_titles: Sequence[str], path: Path, scale: float = 1.4) -> None:
    """Draw a grid of HxWx3 arrays in [0, 1] (None = empty cell) with titles, to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(cells), max(len(r) for r in cells)
    fig, axes = plt.subplots(rows, cols, figsize=(scale * cols + 1.2, scale * rows + 0.3), dpi=110, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            img = cells[r][c] if c < len(cells[r]) else None
            if img is None:
                ax.axis("off")
            else:
                ax.imshow(img, vmin=0, vmax=1, interpolation="nearest")
            if r == 0 and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=8)
        axes[r, 0].set_ylabel(row_titles[r], fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def _to_hwc(x: torch.Tensor) -> np.ndarray:
    a = x.detach().float().clamp(0, 1).cpu().numpy()
    a = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a
    return a.transpose(1, 2, 0)


def solve_figure(run_dir: Path, out: Optional[Path] = None, max_images: int = 8) -> list[Path]:
    run_dir = Path(run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    names = sorted(record["images"], key=lambda n: record["images"][n]["index"])[:max_images]
    K = record["settings"]["samples"]
    rows = []
    for n in names:
        recon = [_read(run_dir / "recon" / f"{n}_{k}.png") for k in range(K)] if K > 1 else \
            [_read(run_dir / "recon" / f"{n}.png")]
        rows.append([_read(run_dir / "input" / f"{n}.png"), *recon, _read(run_dir / "label" / f"{n}.png")])
    titles = ["measurement", *([f"sample {k}" for k in range(K)] if K > 1 else ["DPS"]), "ground truth"]
    out = Path(out) if out is not None else run_dir / "figure.png"
    grid_figure(rows, titles, names, out)
    written = [out]
    if (run_dir / "progress").is_dir():
        strips = [torch.load(run_dir / "progress" / f"{n}.pt", weights_only=True) for n in names
                  if (run_dir / "progress" / f"{n}.pt").exists()]
        if strips:
            F = strips[0].shape[0]
            steps = record["dps_config"]["steps"]
            cells = [[_to_hwc(f) for f in s] for s in strips]
            titles = [f"x0_hat, step {round((steps - 1) * (1 - f / max(F - 1, 1)))}" for f in range(F)]
            path = out.with_name(out.stem + "_progress.png")
            grid_figure(cells, titles, names[: len(strips)], path)
            written.append(path)
    return written


def bench_figure(bench_dir: Path, task: str, methods: Sequence[str], names: Sequence[str],
                 out: Optional[Path] = None) -> Path:
    bench_dir = Path(bench_dir)
    rows = []
    for n in names:
        rows.append([_read(bench_dir / "inputs" / task / f"{n}.png"),
                     *[_read(bench_dir / "results" / m / task / f"{n}.png") for m in methods],
                     _read(bench_dir / "labels" / f"{n}.png")])
    out = Path(out) if out is not None else bench_dir / f"figure_{task}.png"
    grid_figure(rows, ["measurement", *methods, "ground truth"], list(names), out)
    return out


def figure_for(run_dir: Path, out: Optional[Path] = None, max_images: int = 8) -> list[Path]:
    """Render the figure(s) of a ``dps solve`` folder or a ``dps bench images`` folder."""
    run_dir = Path(run_dir)
    if (run_dir / "run.json").exists():
        return solve_figure(run_dir, out, max_images)
    if (run_dir / "bench.json").exists():
        names = sorted(p.stem for p in (run_dir / "labels").glob("*.png"))[:max_images]
        tasks = sorted(p.name for p in (run_dir / "inputs").iterdir() if p.is_dir())
        methods = [m for m in METHODS if (run_dir / "results" / m).is_dir()]  # the table's order
        from .runner import skip_reason

        return [bench_figure(run_dir, t, [m for m in methods if skip_reason(run_dir / "results" / m / t) is None],
                             names) for t in tasks]
    raise DPSError(f"{run_dir} is neither a `dps solve` folder (run.json) nor a `dps bench images` folder (bench.json)")
