"""Random-trajectory motion-blur kernels, as in the public ``motionblur`` code (Levi Borodenko) that DPS's
experiments used; this is our own implementation of its algorithm: a random path of Beta-distributed steps
and jittered angles, drawn on a double-size canvas, blurred, resized (Lanczos) and normalised.

All randomness comes from one ``numpy.random.Generator``, so a seed fixes the kernel.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["motion_kernel", "trajectory"]

EPS = 0.1


def _step_lengths(rng: np.random.Generator, length: float, intensity: float, diag: float) -> np.ndarray:
    """Beta(1, 30) (1 - I + eps) D draws below ``length``, kept until they sum to at least ``length``."""
    steps: list[float] = []
    while sum(steps) < length:
        s = rng.beta(1, 30) * (1 - intensity + EPS) * diag
        if s < length:
            steps.append(s)
    return np.asarray(steps)


def _angles(rng: np.random.Generator, n: int, intensity: float) -> np.ndarray:
    """Absolute step directions: first U(-M, M); then |a| ~ Tri(0, I M, M + eps), sign flipped w.p. J."""
    max_angle = rng.uniform(0, intensity * math.pi)
    jitter = rng.beta(2, 20)
    angles = [rng.uniform(-max_angle, max_angle)]
    while len(angles) < n:
        a = rng.triangular(0, intensity * max_angle, max_angle + EPS)
        prev_sign = 1.0 if angles[-1] >= 0 else -1.0
        angles.append(a * (-prev_sign if rng.uniform() < jitter else prev_sign))
    return np.asarray(angles)


def trajectory(size: tuple[int, int], intensity: float, rng: np.random.Generator) -> np.ndarray:
    """Complex path points on the (2w, 2h) canvas, centred on it (steps 1-5 of the algorithm)."""
    w, h = size
    canvas = (2 * w, 2 * h)
    diag = math.hypot(*canvas)
    length = 0.75 * diag * (rng.uniform() + rng.uniform(0, intensity**2))
    steps = _step_lengths(rng, length, intensity, diag)
    path = np.cumsum(steps * np.exp(1j * _angles(rng, len(steps), intensity)))
    path = path - path.mean()
    path = path * np.exp(1j * rng.uniform(0, math.pi))
    return path + complex(canvas[0] / 2, canvas[1] / 2)


def motion_kernel(size: int = 61, intensity: float = 0.5, rng: np.random.Generator | None = None) -> np.ndarray:
    """A (size, size) float64 motion-blur kernel summing to 1.

    :param intensity: in [0, 1]; 0 gives straight lines, 0.5 (the paper's) mostly smooth arcs.
    """
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"intensity must be in [0, 1], got {intensity}")
    rng = rng if rng is not None else np.random.default_rng()
    path = trajectory((size, size), intensity, rng)
    canvas = (2 * size, 2 * size)
    diag = math.hypot(*canvas)
    img = Image.new("L", canvas, 0)
    ImageDraw.Draw(img).line([(p.real, p.imag) for p in path], fill=255, width=max(1, int(diag / 150)))
    img = img.filter(ImageFilter.GaussianBlur(radius=int(0.01 * diag)))
    img = img.resize((size, size), resample=Image.LANCZOS)
    k = np.asarray(img, dtype=np.float64)
    if k.sum() <= 0:  # a path entirely off-canvas cannot happen for a centred path; guard anyway
        raise RuntimeError("motion kernel is empty; draw again with another seed")
    return k / k.sum()
