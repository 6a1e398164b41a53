"""Super-resolution: bicubic downsampling with antialiasing, MATLAB ``imresize`` semantics.

MATLAB's ``imresize(x, 1/s, 'bicubic')`` (and the authors' ``Resizer``) is separable: along each axis
output pixel u (1-based) sits at input coordinate c = u s + (1 - s) / 2 and is a weighted sum of the
inputs around it with the Keys cubic kernel (a = -0.5) stretched by the factor s (antialiasing),
normalised to sum to 1, with mirror ("symmetric") boundary. We build that map as a dense matrix per
axis, M_h (H/s, H) and M_w (W/s, W), so A x = M_h x M_w^T per channel, A^T y = M_h^T y M_w, and the
pseudo-inverse is exact: A^+ y = M_h^+ y (M_w^+)^T.
"""
from __future__ import annotations

import math

import torch

from ..errors import check_int

from .base import LinearOperator

__all__ = ["SuperResolution", "imresize_matrix", "cubic"]


def cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's bicubic)."""
    ax = x.abs()
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


def imresize_matrix(in_len: int, scale: float, antialias: bool = True) -> torch.Tensor:
    """(out_len, in_len) float64 matrix of MATLAB's 1-D bicubic resize by ``scale`` (< 1 shrinks)."""
    out_len = math.ceil(in_len * scale)
    width = 4.0
    if scale < 1 and antialias:
        kernel = lambda v: scale * cubic(scale * v)  # noqa: E731 - the stretched kernel
        width /= scale
    else:
        kernel = cubic
    u = torch.arange(1, out_len + 1, dtype=torch.float64)
    centre = u / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(centre - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]  # 1-based input indices
    w = kernel(centre[:, None] - idx)
    w = w / w.sum(dim=1, keepdim=True)
    mirror = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])  # symmetric boundary
    idx0 = mirror[torch.remainder(idx.long() - 1, 2 * in_len)]
    M = torch.zeros(out_len, in_len, dtype=torch.float64)
    M.scatter_add_(1, idx0, w)
    return M


class SuperResolution(LinearOperator):
    """y = bicubic downsample of x by ``factor`` (paper: x4): (B, C, H, W) -> (B, C, H/f, W/f)."""

    exact_pinv = True

    name = "super_resolution"

    def __init__(self, in_shape: tuple[int, int, int] = (3, 256, 256), factor: int = 4) -> None:
        super().__init__()
        factor = check_int(factor, "factor", 1)
        C, H, W = in_shape
        if H % factor or W % factor:
            raise ValueError(f"image size {H}x{W} is not divisible by the factor {factor}")
        Mh, Mw = imresize_matrix(H, 1 / factor), imresize_matrix(W, 1 / factor)
        self.register_buffer("Mh", Mh)
        self.register_buffer("Mw", Mw)
        self.register_buffer("Mh_pinv", torch.linalg.pinv(Mh))
        self.register_buffer("Mw_pinv", torch.linalg.pinv(Mw))
        self.config = {"in_shape": [C, H, W], "factor": factor}

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return torch.einsum("oh,bchw,pw->bcop", self.Mh.to(x.dtype), x, self.Mw.to(x.dtype))

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oh,bcop,pw->bchw", self.Mh.to(y.dtype), y, self.Mw.to(y.dtype))

    def A_dagger(self, y: torch.Tensor, iters: int = 0, tol: float = 0.0) -> torch.Tensor:
        return torch.einsum("ho,bcop,wp->bchw", self.Mh_pinv.to(y.dtype), y, self.Mw_pinv.to(y.dtype))

    def _spectral(self):
        """The SVDs of the two resize matrices: A X = Mh X Mw^T."""
        from .spectral import kron_form

        return kron_form(self.Mh.double(), self.Mw.double())

    @classmethod
    def from_saved(cls, config, state, **resources):
        return cls(tuple(config["in_shape"]), config["factor"])
