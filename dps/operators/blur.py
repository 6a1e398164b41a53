"""Uniform blur: y = k * pad(x), a per-channel 2-D filtering with an explicit boundary mode.

As in the authors' code the kernel is applied with PyTorch's ``conv2d``, i.e. as a cross-correlation
(for the symmetric Gaussian kernel this is the same as a convolution; a motion kernel appears rotated
by 180 degrees). The image is padded by half the kernel size on each side, so y has x's shape.
Boundary modes: ``"reflect"`` (the authors' default), ``"circular"``, ``"zeros"``.

The adjoint is exact: A^T = pad^T o corr^T, with corr^T a transposed convolution and pad^T the
scatter-add of the padding's index map.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import check_float, check_int
from .base import LinearOperator
from .motion_kernel import motion_kernel

__all__ = ["Blur", "gaussian_kernel", "pad_indices", "scaled_kernel_size"]

_TORCH_PAD = {"reflect": "reflect", "circular": "circular", "zeros": "constant"}


def gaussian_kernel(size: int = 61, std: float = 3.0, truncate: Optional[float] = None) -> torch.Tensor:
    """(size, size) sampled Gaussian exp(-r^2 / (2 std^2)), normalised to sum to 1 (float64).

    ``truncate=None`` keeps the full size x size Gaussian (ours). ``truncate=t`` zeroes the taps beyond the
    radius int(t std + 0.5) and normalises what is left, as ``scipy.ndimage.gaussian_filter(delta, std,
    truncate=t)`` does: the authors' kernel is that filter applied to a delta with t = 4 (radius 12 at
    std 3). The two differ by about 1.5e-6 per tap at the paper's size.
    """
    size = check_int(size, "kernel size", 1)
    std = check_float(std, "kernel std", 0.0, lo_open=True)
    if size % 2 == 0:
        raise ValueError(f"kernel size must be odd, got {size}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(r**2) / (2 * std**2))
    if truncate is not None:
        radius = int(check_float(truncate, "truncate", 0.0, lo_open=True) * std + 0.5)
        g = torch.where(r.abs() <= radius, g, torch.zeros_like(g))
    k = torch.outer(g, g)
    return k / k.sum()


def scaled_kernel_size(image_size: int, size_at_256: int = 61) -> int:
    """The paper's kernel size for 256 px, scaled to ``image_size`` and made odd (>= 3)."""
    s = max(3, round(size_at_256 * image_size / 256))
    return s if s % 2 else s + 1


def pad_indices(n: int, p: int, mode: str) -> torch.Tensor:
    """Source index of each of the n + 2p padded positions along one axis (-1 = a zero)."""
    j = torch.arange(-p, n + p)
    if mode == "reflect":
        if p >= n:
            raise ValueError(f"reflect padding of {p} needs an image larger than {p} px along each axis, got {n}")
        j = j.abs()
        return torch.where(j > n - 1, 2 * (n - 1) - j, j)
    if mode == "circular":
        return torch.remainder(j, n)
    if mode == "zeros":
        return torch.where((j >= 0) & (j < n), j, torch.full_like(j, -1))
    raise ValueError(f"unknown boundary mode {mode!r}; choose one of {sorted(_TORCH_PAD)}")


def _pad_adjoint_axis(g: torch.Tensor, idx: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    keep = idx >= 0
    g = g.index_select(dim, torch.nonzero(keep).squeeze(1).to(g.device))
    shape = list(g.shape)
    shape[dim] = n
    out = g.new_zeros(shape)
    return out.index_add_(dim, idx[keep].to(g.device), g)


class Blur(LinearOperator):
    """y = k (x) pad(x) for x (B, C, H, W) and a fixed (k, k) kernel; y has x's shape.

    Build with :meth:`gaussian` (61 x 61, std 3 at 256 px) or :meth:`motion` (61 x 61, intensity 0.5),
    or give any odd-sized kernel.
    """

    name = "blur"

    def __init__(self, kernel: torch.Tensor, in_shape: tuple[int, int, int] = (3, 256, 256),
                 boundary: str = "reflect", kind: str = "custom") -> None:
        super().__init__()
        if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise ValueError(f"kernel must be 2-D with odd sides, got shape {tuple(kernel.shape)}")
        if boundary not in _TORCH_PAD:
            raise ValueError(f"unknown boundary mode {boundary!r}; choose one of {sorted(_TORCH_PAD)}")
        C, H, W = in_shape
        ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
        self.register_buffer("kernel", kernel.to(torch.float64))
        self.register_buffer("idx_h", pad_indices(H, ph, boundary))
        self.register_buffer("idx_w", pad_indices(W, pw, boundary))
        self.boundary = boundary
        self.config = {"in_shape": [C, H, W], "boundary": boundary, "kind": kind}

    @classmethod
    def gaussian(cls, in_shape: tuple[int, int, int] = (3, 256, 256), size: Optional[int] = None,
                 std: Optional[float] = None, boundary: str = "reflect", truncate: Optional[float] = None) -> "Blur":
        """The paper's Gaussian blur: 61 x 61, std 3.0 at 256 px (both scaled with the image size);
        ``truncate=4.0`` gives the authors' kernel (see :func:`gaussian_kernel`)."""
        H = in_shape[1]
        size = scaled_kernel_size(H) if size is None else size
        std = 3.0 * H / 256 if std is None else std
        kind = "gaussian" if truncate is None else f"gaussian truncated at {float(truncate):g} std"
        return cls(gaussian_kernel(size, std, truncate), in_shape, boundary, kind)

    @classmethod
    def motion(cls, in_shape: tuple[int, int, int] = (3, 256, 256), size: Optional[int] = None,
               intensity: float = 0.5, seed: int = 0, boundary: str = "reflect") -> "Blur":
        """The paper's motion blur: a 61 x 61 random-trajectory kernel of intensity 0.5 (size scaled)."""
        size = scaled_kernel_size(in_shape[1]) if size is None else check_int(size, "kernel size", 1)
        if size % 2 == 0:
            raise ValueError(f"kernel size must be odd, got {size}")
        k = motion_kernel(size, check_float(intensity, "intensity", 0.0, 1.0), np.random.default_rng(seed))
        return cls(torch.from_numpy(k), in_shape, boundary, "motion")

    def _weight(self, x: torch.Tensor) -> torch.Tensor:
        C = x.shape[1]
        return self.kernel.to(x.dtype)[None, None].expand(C, 1, *self.kernel.shape)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        ph, pw = self.kernel.shape[0] // 2, self.kernel.shape[1] // 2
        xp = F.pad(x, (pw, pw, ph, ph), mode=_TORCH_PAD[self.boundary])
        return F.conv2d(xp, self._weight(x), groups=x.shape[1])

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        g = F.conv_transpose2d(y, self._weight(y), groups=y.shape[1])  # corr^T: (B, C, H+2ph, W+2pw)
        _, H, W = self.in_shape
        g = _pad_adjoint_axis(g, self.idx_h, H, 2)
        return _pad_adjoint_axis(g, self.idx_w, W, 3)

    def A_dagger(self, y: torch.Tensor, iters: int = 200, tol: float = 1e-6) -> torch.Tensor:
        return super().A_dagger(y, iters, tol)

    def _spectral(self):
        """For a separable kernel k = g_h g_w^T: the SVDs of the two 1-D blur matrices (boundary included)."""
        from ..errors import CapabilityMissing
        from .spectral import blur_matrix_1d, kron_form

        U, S, Vt = torch.linalg.svd(self.kernel.double())
        if S[1:].sum() > 1e-6 * S[0]:
            raise CapabilityMissing(f"this {self.config.get('kind')} blur kernel is not separable, so it has no "
                                    "SVD form (the paper reports DDRM as not applicable to motion blur)")
        gh, gw = U[:, 0] * S[0].sqrt(), Vt[0] * S[0].sqrt()
        if gh.sum() < 0:
            gh, gw = -gh, -gw
        _, H, W = self.in_shape
        return kron_form(blur_matrix_1d(gh, H, self.idx_h), blur_matrix_1d(gw, W, self.idx_w))

    def solve_normal(self, rhs: torch.Tensor, rho: float, x0: torch.Tensor, iters: int = 30) -> torch.Tensor:
        """Circular boundary: A^T A is diagonal in Fourier space with eigenvalues |H|^2 (H the DFT of the
        impulse response), so the solve is exact by FFT; other boundaries use CG."""
        if self.boundary != "circular":
            return super().solve_normal(rhs, rho, x0, iters)
        delta = torch.zeros(1, *self.in_shape, dtype=rhs.dtype, device=rhs.device)
        delta[..., 0, 0] = 1
        H = torch.fft.fft2(self.A(delta))
        return torch.fft.ifft2(torch.fft.fft2(rhs) / (H.abs() ** 2 + rho)).real

    @classmethod
    def from_saved(cls, config, state, **resources):
        return cls(state["kernel"], tuple(config["in_shape"]), config["boundary"], config["kind"])

