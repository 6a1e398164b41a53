"""Reading images from files and folders (PNG, JPEG, ...) into (N, C, H, W) tensors in [0, 1]."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "list_images", "load_images", "load_image_folder", "to_tensor"]

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
            raise FileNotFoundError(f"no such image file or folder: {p}")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {list(map(str, paths))}")
    return files


def to_tensor(im: Image.Image, channels: int) -> torch.Tensor:
    """A PIL image -> (C, H, W) float32 in [0, 1] with ``channels`` = 1 (grey) or 3 (RGB)."""
    im = im.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr[None] if channels == 1 else arr.transpose(2, 0, 1).copy())


def _fit(im: Image.Image, size: int, resize: str, path: Path) -> Image.Image:
    if im.size == (size, size):
        return im
    if resize == "error":
        raise ValueError(f"{path} is {im.size[0]} x {im.size[1]}, the model needs {size} x {size}; "
                         "resize it or pass --resize center-crop|resize")
    if resize == "center-crop":
        s = min(im.size)
        left, top = (im.size[0] - s) // 2, (im.size[1] - s) // 2
        im = im.crop((left, top, left + s, top + s))
    return im.resize((size, size), Image.BICUBIC)


def _channels(im: Image.Image) -> int:
    return 1 if im.mode in ("1", "L", "I", "I;16", "F", "LA") else 3


def load_images(files: Sequence[Union[str, Path]], size: Optional[int], channels: int,
                resize: str = "error", convert_channels: bool = True) -> torch.Tensor:
    """Load image files as (N, channels, size, size) float32 in [0, 1].

    :param resize: ``"error"`` (a wrong size is an error), ``"resize"`` (bicubic to size x size) or
        ``"center-crop"`` (the largest centred square, then bicubic).
    :param convert_channels: convert grey <-> RGB to ``channels``; if False a mismatch is an error.
    """
    if resize not in ("error", "resize", "center-crop"):
        raise ValueError(f"resize must be 'error', 'resize' or 'center-crop', got {resize!r}")
    out = []
    for f in map(Path, files):
        with Image.open(f) as im:
            im.load()
            if not convert_channels and _channels(im) != channels:
                raise ValueError(f"{f} has {_channels(im)} channel(s) ({im.mode}), the model takes {channels}; "
                                 "convert it or pass --convert-channels")
            if size is not None:
                im = _fit(im, size, resize, f)
            out.append(to_tensor(im, channels))
    return torch.stack(out)


def load_image_folder(folder: Union[str, Path], size: int, channels: int, resize: str = "center-crop") -> torch.Tensor:
    """Every image of a folder (recursive), resized for training: (N, channels, size, size)."""
    return load_images(list_images([folder]), size, channels, resize)
