"""Image files and grids. Tensors are (C, H, W) or (N, C, H, W) in [0, 1]; files are never min-max stretched."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from .utils import atomic_write

__all__ = ["to_pil", "save_image", "make_grid", "measurement_picture"]


def to_pil(x: torch.Tensor) -> Image.Image:
    """(C, H, W) in [0, 1] -> 8-bit PIL image (values clipped to [0, 1], rounded)."""
    arr = (x.detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    if arr.shape[0] == 1:
        return Image.fromarray(arr[0], mode="L")
    return Image.fromarray(arr.transpose(1, 2, 0), mode="RGB")


def save_image(x: torch.Tensor, path: Union[str, Path]) -> None:
    """Save one image (C, H, W) in [0, 1] losslessly (PNG), atomically."""
    atomic_write(path, lambda p: to_pil(x).save(p, format="PNG"))


def make_grid(x: torch.Tensor, nrow: int = 8, pad: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) -> (C, rows*(H+pad)+pad, nrow*(W+pad)+pad), row-major."""
    n, c, h, w = x.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value, dtype=x.dtype)
    for k in range(n):
        r, q = divmod(k, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[k]
    return grid


def measurement_picture(y: torch.Tensor, size: int, op=None) -> torch.Tensor:
    """A measurement (C, h, w) as a (C, size, size) picture in [0, 1] for figures: a Fourier magnitude
    (phase retrieval, or any measurement larger than the image) log-scaled and centre-cropped, a smaller
    one (SR) enlarged by pixel repetition, anything else clipped to [0, 1]."""
    if (op is not None and op.fourier_support is not None) or (op is None and y.shape[-1] > size):
        m = torch.log1p(y.clamp_min(0))
        m = m / m.max().clamp_min(1e-12)
        s = (y.shape[-1] - size) // 2
        return m[..., s:s + size, s:s + size] if s >= 0 else m
    if y.shape[-1] != size:
        return torch.nn.functional.interpolate(y[None], size=(size, size), mode="nearest")[0].clamp(0, 1)
    return y.clamp(0, 1)
