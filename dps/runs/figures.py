"""Figures like the paper's, drawn from run folders through their layouts (:mod:`dps.runs.layout`):

- a ``dps solve`` folder: rows are images; columns the measurement picture, the K samples (or the one
  reconstruction, titled by the recorded method) and the ground truth; with ``progress/`` a second figure
  shows x0_hat over the steps (one strip per image);
- a ``dps bench images`` folder: per task, rows are images; columns measurement | one per method | ground truth;
- a ``dps demo`` / ``dps example`` folder: rows are tasks (row r shows the task's image r mod its count);
  columns measurement | samples | ground truth.

Images are shown as stored (clipped to [0, 1], never stretched).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import DPSError
from ..utils import atomic_write
from .folder import read_json
from .layout import BenchLayout, GalleryLayout, SolveLayout, layout_of
from .spec import settings_from_record

__all__ = ["grid_figure", "solve_figure", "bench_figure", "gallery_figure", "figure_for", "method_title"]


def method_title(name: str) -> str:
    """The method table's title of a recorded method name (the name itself if the table has no such entry)."""
    from ..solvers.methods import METHODS

    return METHODS[name].title if name in METHODS else name


def _read(path: Path) -> Optional[np.ndarray]:
    if not path.exists():
        return None
    try:
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError):  # PIL: truncated, empty or not an image
        raise DPSError(f"{path} is damaged: rerun the command that made its folder to recompute it") from None


def _need(path: Path, layout) -> np.ndarray:
    """A picture a figure draws, or a DPSError naming the missing file and how to get it back."""
    if not path.exists():
        raise DPSError(f"{path} is missing: rerun the command that made {layout.root} to recompute it")
    return _read(path)


def to_hwc(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) for drawing (grey repeated)."""
    a = x.detach().float().clamp(0, 1).cpu().numpy()
    a = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a
    return a.transpose(1, 2, 0)


def grid_figure(cells: Sequence[Sequence[Optional[np.ndarray]]], col_titles: Sequence[str],
                row_titles: Sequence[str], path: Path, scale: float = 1.4) -> None:
    """Draw a grid of HxWx3 arrays in [0, 1] (None = empty cell) with titles, to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not cells:
        raise DPSError(f"nothing to draw for {path}: the run has no finished image yet")
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


def solve_figure(layout: SolveLayout, out: Optional[Path] = None, max_images: int = 8) -> list[Path]:
    from ..solvers.methods import METHODS
    from .loop import frame_steps

    record = read_json(layout.record, "run record")
    settings = record["settings"]
    images = {p.stem: read_json(p) for p in layout.item_records()}  # the finished images, as they are now
    lost = sorted(set(record.get("images") or {}) - set(images))
    if lost:
        raise DPSError(f"the record of {lost[0]} ({layout.item_record(lost[0])}) is missing: rerun the command that "
                       f"made {layout.root} to recompute it")
    names = sorted(images, key=lambda n: images[n].get("index", 0))[:max_images]
    K, method = settings["samples"], settings.get("method", "dps")
    rows = []
    for n in names:
        files = [layout.input(n), *([layout.recon(n, k) for k in range(K)] if K > 1 else [layout.recon(n)])]
        truth = _need(layout.label(n), layout) if "psnr" in images[n] else None  # solved from a measurement: none
        rows.append([_need(f, layout) for f in files] + [truth])
    titles = ["measurement", *([f"{method_title(method)} sample {k}" for k in range(K)] if K > 1
                               else [method_title(method)]), "ground truth"]
    out = Path(out) if out is not None else layout.figure()
    grid_figure(rows, titles, names, out)
    written = [out]
    strips = [torch.load(layout.progress(n), weights_only=True) for n in names if layout.progress(n).exists()]
    if strips and method in METHODS and METHODS[method].progress is not None:
        m = METHODS[method]
        steps = m.progress(settings_from_record(m, settings["method_settings"]))
        shown = sorted(frame_steps(steps, strips[0].shape[0]), reverse=True)
        path = out.with_name(out.stem + "_progress.png")
        grid_figure([[to_hwc(f) for f in s] for s in strips], [f"x0_hat, step {i}" for i in shown],
                    names[: len(strips)], path)
        written.append(path)
    return written


def bench_figure(layout: BenchLayout, task: str, methods: Sequence[str], names: Sequence[str],
                 out: Optional[Path] = None) -> Path:
    for m in methods:  # a picture without its record is not a finished result
        for n in names:
            if not layout.result(m, task, n, ".json").exists():
                raise DPSError(f"{layout.result(m, task, n, '.json')} is missing: rerun the command that made "
                               f"{layout.root} to recompute it")
    rows = [[_need(layout.input(task, n), layout), *[_need(layout.result(m, task, n, ".png"), layout) for m in methods],
             _need(layout.label(n), layout)] for n in names]
    out = Path(out) if out is not None else layout.figure(task)
    grid_figure(rows, ["measurement", *map(method_title, methods), "ground truth"], list(names), out)
    return out


def gallery_figure(layout: GalleryLayout, out: Optional[Path] = None) -> Path:
    """Rows: the record's tasks (row r shows the task's image r mod n); columns: measurement | samples | truth."""
    from ..images import measurement_picture
    from ..operators import load_operator

    record = read_json(layout.record, "run record")
    if "tasks" not in record:
        raise DPSError(f"{layout.root} has no finished run yet (its record names no tasks); rerun the command")
    rows, row_titles = [], []
    for r, task in enumerate(record["tasks"]):
        names = task["images"]
        path = layout.item(task["name"], names[r % len(names)], ".pt")
        if not path.exists():
            raise DPSError(f"{path} is missing: rerun the command that made {layout.root} to recompute it")
        res = torch.load(path, weights_only=True)
        op = load_operator(layout.operator(task["name"]))
        size = res["x"].shape[-1]
        rows.append([to_hwc(measurement_picture(res["y"], size, op)), *map(to_hwc, res["samples"]), to_hwc(res["x"])])
        row_titles.append(task["title"])
    K = record["samples"]
    method = method_title(record.get("method", "dps"))
    titles = ["measurement", *([f"{method} sample {k}" for k in range(K)] if K > 1 else [method]), "ground truth"]
    out = Path(out) if out is not None else layout.figure()
    grid_figure(rows, titles, row_titles, out)
    return out


def figure_for(run_dir: Path, out: Optional[Path] = None, max_images: int = 8) -> list[Path]:
    """Render the figure(s) of a run folder of any kind."""
    layout = layout_of(Path(run_dir))
    if isinstance(layout, SolveLayout):
        return solve_figure(layout, out, max_images)
    if isinstance(layout, GalleryLayout):
        return [gallery_figure(layout, out)]
    if isinstance(layout, BenchLayout):
        from ..solvers.methods import METHODS

        settings = read_json(layout.record, "bench record")["settings"]
        names = settings["images"][:max_images]
        figures = []
        for task in settings["tasks"]:
            methods = [m for m in METHODS if layout.pair(m, task).is_dir() and layout.skip_reason(m, task) is None
                       and any(layout.pair(m, task).glob("*.json"))]  # the pairs that ran (a missing file: an error)
            if methods:  # a task where no method applied has nothing to show
                figures.append(bench_figure(layout, task, methods, names, None if out is None else
                                            Path(out).with_name(f"{Path(out).stem}_{task}.png")))
        if not figures:
            raise DPSError(f"nothing to draw in {run_dir}: no method has a finished result yet")
        return figures
    raise DPSError(f"{run_dir} is not a run folder of dps solve, dps bench images, dps demo or dps example "
                   "(no run.json, bench.json, demo.json or example.json)")
