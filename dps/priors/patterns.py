"""An exact prior of 32 x 32 pattern images, for ``dps example`` and tests that need no trained network.

The prior is a Gaussian mixture whose components are eight simple shapes (bars, cross, square, ring,
diagonals, corner) with pixel noise of std 0.05 around each, so its score is exact.
"""
from __future__ import annotations

import torch

from .analytic import GaussianMixturePrior

__all__ = ["patterns", "pattern_prior", "SIZE", "PIXEL_STD"]

SIZE = 32
PIXEL_STD = 0.05  # data-space std of each mixture component


def patterns(size: int = SIZE) -> torch.Tensor:
    """(8, 1, size, size) shapes in [0.1, 0.9]."""
    r = torch.arange(size, dtype=torch.float64)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c, w = (size - 1) / 2, size / 8
    shapes = [
        (yy - c).abs() < w,  # horizontal bar
        (xx - c).abs() < w,  # vertical bar
        ((yy - c).abs() < w) | ((xx - c).abs() < w),  # cross
        ((yy - c).abs() < size / 4) & ((xx - c).abs() < size / 4),  # square
        (((yy - c) ** 2 + (xx - c) ** 2).sqrt() - size / 3).abs() < w,  # ring
        (yy - xx).abs() < w,  # diagonal
        ((yy - xx).abs() < w) | ((yy + xx - size + 1).abs() < w),  # X
        ((xx - w * 2).abs() < w) | ((yy - size + 2 * w).abs() < w),  # corner (L)
    ]
    return torch.stack([0.1 + 0.8 * s.double() for s in shapes])[:, None]


def pattern_prior() -> GaussianMixturePrior:
    """Mixture in a standardised space: data = 0.5 + PIXEL_STD * x, so components have unit covariance."""
    means = (patterns() - 0.5) / PIXEL_STD
    prior = GaussianMixturePrior(torch.ones(len(means), dtype=torch.float64), means)
    prior.data_offset, prior.data_scale = 0.5, PIXEL_STD
    prior.data_bounds = (0.0, 1.0)
    return prior
