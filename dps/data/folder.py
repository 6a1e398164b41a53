"""Reading images from files and folders (PNG, JPEG, ...) into (N, C, H, W) tensors in [0, 1]."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..errors import DPSError
from ..io import read_image

__all__ = ["IMAGE_SUFFIXES", "list_images", "load_images", "load_image_folder", "RESIZE_MODES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(paths: Iterable[Union[str, Path]]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into a list of image files."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise DPSError(f"no such image file or folder: {p}")
    if not files:
        raise DPSError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {list(map(str, paths))}")
    return files


def _resize_channels(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize of (C, h, w) float32 to (C, size, size), channel by channel at float precision."""
    planes = [np.asarray(Image.fromarray(c.numpy(), mode="F").resize((size, size), Image.BICUBIC)) for c in x]
    return torch.from_numpy(np.stack(planes)).clamp(0, 1)


def _fit(x: torch.Tensor, size: int, resize: str, path: Path, advice: str = "") -> torch.Tensor:
    """(C, h, w) -> (C, size, size): an error, a bicubic resize, or a centred square crop then resize."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if resize == "error":
        raise DPSError(f"{path} is {w} x {h}, the model needs {size} x {size}; "
                       + (f"{advice}; " if advice else "") + "or resize the image (--resize center-crop|resize)")
    if resize == "center-crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[:, top:top + s, left:left + s]
    return _resize_channels(x, size)


RESIZE_MODES = ("error", "resize", "center-crop")


def load_images(files: Sequence[Union[str, Path]], size: Optional[int], channels: int,
                resize: str = "error", convert_channels: bool = True, advice: str = "") -> torch.Tensor:
    """Load image files as (N, channels, size, size) float32 in [0, 1], at full precision
    (:func:`dps.io.read_image`; 16-bit files keep 16 bits).

    :param resize: ``"error"`` (a wrong size is an error), ``"resize"`` (bicubic to size x size) or
        ``"center-crop"`` (the largest centred square, then bicubic).
    :param convert_channels: convert grey <-> RGB to ``channels``; if False a mismatch is an error.
    :param advice: what an error for an image that does not fit adds about the model.
    """
    if resize not in RESIZE_MODES:
        raise DPSError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    out = []
    for f in map(Path, files):
        x = read_image(f, channels, convert_channels, advice)
        out.append(_fit(x, size, resize, f, advice) if size is not None else x)
    return torch.stack(out)


def load_image_folder(folder: Union[str, Path], size: int, channels: int, resize: str = "center-crop") -> torch.Tensor:
    """Every image of a folder (recursive), resized for training: (N, channels, size, size)."""
    return load_images(list_images([folder]), size, channels, resize)
