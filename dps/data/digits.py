"""scikit-learn's handwritten digits (UCI optdigits test set, 1,797 images of 8 x 8, 17 grey levels),
shipped inside scikit-learn, so nothing is downloaded. Resized to 32 x 32 for the embedded model.

Convention: images (N, 1, 32, 32) float32 in [0, 1] (white strokes on black, as in the source), labels
(N,) int64. The split is fixed: a seeded permutation (seed 0) puts 20% of the images (359) in the
held-out set that training never sees; demos, tests and benchmarks use only held-out images.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image

__all__ = ["DIGITS_SIZE", "SPLIT_SEED", "HELD_OUT_FRACTION", "load_digits_32", "digits_split"]

DIGITS_SIZE = 32
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2


def _resize(img8: np.ndarray, size: int) -> np.ndarray:
    """One 8 x 8 image with values 0..16 -> (size, size) in [0, 1], by Pillow's bicubic resampling."""
    im = Image.fromarray((img8 / 16.0).astype(np.float32), mode="F")
    return np.clip(np.asarray(im.resize((size, size), Image.BICUBIC)), 0.0, 1.0)


@lru_cache(maxsize=2)
def load_digits_32(size: int = DIGITS_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 1, size, size) float32 in [0, 1] and their labels (N,)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn") from exc
    data = load_digits()
    images = np.stack([_resize(im, size) for im in data.images])[:, None]
    return torch.from_numpy(images).float(), torch.from_numpy(data.target).long()


def digits_split(split: str, size: int = DIGITS_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``split`` = ``"train"`` (1,438 images) or ``"held_out"`` (359 images): (images, labels)."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    images, labels = load_digits_32(size)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_held = int(round(HELD_OUT_FRACTION * len(images)))
    idx = perm[:n_held] if split == "held_out" else perm[n_held:]
    idx = idx.sort().values
    return images[idx], labels[idx]
