"""Reading the user's files: images, tensors, YAML/JSON and safetensors, each with a one-line error.

Every reader here turns a file that cannot be used (missing, empty, truncated, of the wrong kind) into a
:class:`~dps.errors.DPSError` that names the file and says what to do. PyTorch files are loaded with
``weights_only=True`` and never with a suggestion to turn that off.

Images (:func:`read_image`) keep their full precision and come back as float32 (C, H, W) in [0, 1]:

==================  ===========================================================================
mode                handling
==================  ===========================================================================
``1``, ``L``        grey, 8-bit (/255)
``I;16``, ``I``     grey, 16-bit (/65535); 32-bit integer images are refused
``F``               grey, float; values must already be in [0, 1]
``RGB``             colour, 8- or 16-bit (16-bit PNGs are read at full precision with pypng)
``P``               palette: expanded to RGB (RGBA if the palette has transparency)
``LA``, ``RGBA``    alpha composited onto black: value * alpha (measurements pad with black too)
``CMYK``, ``YCbCr`` converted to RGB by Pillow
==================  ===========================================================================

Grey -> RGB repeats the channel; RGB -> grey is the ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from .errors import DPSError

__all__ = ["read_image", "image_channels", "load_torch_file", "load_mapping_file", "open_safetensors",
           "describe_exception"]

PathLike = Union[str, Path]


def describe_exception(exc: BaseException) -> str:
    """The first line of an exception's message, prefixed with its type (for one-line errors)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DPSError(f"{what} {path} does not exist")
    if path.is_dir():
        raise DPSError(f"{what} {path} is a folder, not a file")
    if path.stat().st_size == 0:
        raise DPSError(f"{what} {path} is empty (0 bytes); write it again")


def load_torch_file(path: PathLike, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` with a one-line error for empty, truncated or unsafe files."""
    import pickle

    path = Path(path)
    _check_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if zipfile.is_zipfile(path):  # a well-formed PyTorch file with arbitrary objects in it
            raise DPSError(f"{what} {path} holds objects other than tensors and plain containers; dps loads files "
                           "safely (weights_only=True) and refuses it: save a state dict or a tensor instead") \
                from None
        raise DPSError(f"{what} {path} is truncated or not a PyTorch file; write it again") from None
    except Exception:  # EOFError, RuntimeError from the zip reader, ...: a damaged file
        raise DPSError(f"{what} {path} is truncated or not a PyTorch file; write it again") from None


def open_safetensors(path: PathLike, what: str = "safetensors file") -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file, with a one-line error for a missing or damaged file."""
    from safetensors import safe_open

    path = Path(path)
    _check_file(path, what)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception:  # SafetensorError (header, truncation), OSError
        raise DPSError(f"{what} {path} is truncated or not a safetensors file; write it again") from None


def load_mapping_file(path: PathLike, what: str = "file") -> dict:
    """A YAML or JSON file that must hold a mapping; malformed files give the line of the problem."""
    import yaml

    path = Path(path)
    _check_file(path, what)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise DPSError(f"{what} {path} is not a text file (YAML or JSON expected)") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise DPSError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise DPSError(f"{what} {path} is not valid YAML: {problem}{where}") from None
    if not isinstance(data, dict):
        raise DPSError(f"{what} {path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------------------ images
def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(25)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 25:
        return 8
    return head[24]


def _read_png16(path: Path) -> np.ndarray:
    """A 16-bit colour PNG at full precision, (H, W, C) float32 in [0, 1] (Pillow would reduce it to 8 bits)."""
    import png  # pypng

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    arr = np.vstack([np.asarray(r, dtype=np.float64) for r in rows]).reshape(height, width, planes)
    return (arr / (2 ** info["bitdepth"] - 1)).astype(np.float32)


def _pil_to_array(im, path: Path) -> np.ndarray:
    """A decoded Pillow image -> (H, W, C) float32 in [0, 1], C in {1, 2, 3, 4} (2 and 4 carry alpha)."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    mode = im.mode
    arr = np.asarray(im)
    if mode.startswith("I;16") or mode == "I":
        arr = arr.astype(np.float64)
        if arr.size and arr.max() > 65535:
            raise DPSError(f"{path} is a 32-bit integer image; save it with 8 or 16 bits per channel")
        return (arr / 65535.0).astype(np.float32)[..., None]
    if mode == "F":
        arr = arr.astype(np.float32)
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
            raise DPSError(f"{path} is a float image with values outside [0, 1]; scale it to [0, 1]")
        return arr[..., None]
    if arr.dtype != np.uint8:
        raise DPSError(f"{path}: unsupported image mode {mode!r}; convert it to 8- or 16-bit grey or RGB")
    arr = arr.astype(np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def _drop_alpha(arr: np.ndarray) -> np.ndarray:
    """Composite alpha onto black (value * alpha): (H, W, 2 or 4) -> (H, W, 1 or 3)."""
    if arr.shape[-1] in (2, 4):
        return arr[..., :-1] * arr[..., -1:]
    return arr


def image_channels(path: PathLike) -> np.ndarray:
    """Decode an image file to (H, W, C) float32 in [0, 1], alpha composited (C = 1 or 3); one-line errors."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _check_file(path, "image")
    try:
        if path.suffix.lower() == ".png" and _png_bit_depth(path) == 16:
            with Image.open(path) as im:
                mode = im.mode
            if not (mode.startswith("I;16") or mode == "I"):  # colour: Pillow would drop to 8 bits
                return _drop_alpha(_read_png16(path))
        with Image.open(path) as im:
            im.load()
            return _drop_alpha(_pil_to_array(im, path))
    except DPSError:
        raise
    except UnidentifiedImageError:
        raise DPSError(f"{path} is not an image file Pillow can read (PNG, JPEG, BMP, TIFF, WebP)") from None
    except Exception as exc:  # truncated data, bad chunks (OSError, SyntaxError, png.FormatError, ...)
        raise DPSError(f"{path} cannot be decoded ({describe_exception(exc)}); the file is damaged or truncated") \
            from None


def read_image(path: PathLike, channels: int, convert_channels: bool = False, advice: str = "") -> torch.Tensor:
    """One image file as (channels, H, W) float32 in [0, 1] at full precision (see the module's table).

    :param convert_channels: convert grey <-> RGB to ``channels``; if False a mismatch is an error.
    :param advice: what the error for a mismatch adds about the model (e.g. which model it is).
    """
    arr = image_channels(path)
    have = arr.shape[-1]
    if have != channels:
        if not convert_channels:
            raise DPSError(f"{path} has {have} channel(s), the model takes {channels}; "
                           + (f"{advice}; " if advice else "") + "or convert the image (--convert-channels)")
        if channels == 1:
            arr = (arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
        else:
            arr = np.repeat(arr, 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
