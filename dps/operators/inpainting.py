"""Inpainting: y = m * x with a binary mask m (1 = observed), the same pixels in every channel.

The measurement keeps the image's shape; missing pixels are 0. A is an orthogonal projection, so
A^T = A and A^+ = A.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import DPSError, check_float, check_int
from .base import LinearOperator

__all__ = ["Inpainting", "box_mask", "random_mask"]


def box_mask(size: tuple[int, int], box: Optional[int] = None, margin: Optional[int] = None,
             centred: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(H, W) mask with a missing square box of side ``box`` (default H/2: 128 at 256 px).

    Random position: the top-left corner is uniform in [margin, H - margin - box - 1] (default margin H/16:
    [16, 111] at 256 px, the authors' ``np.random.randint(16, 112)``, whose upper end is exclusive);
    ``centred=True`` puts the box in the middle.
    """
    H, W = size
    box = H // 2 if box is None else check_int(box, "box", 1)
    margin = H // 16 if margin is None else check_int(margin, "margin", 0)
    if not 0 < box < min(H, W) - 2 * margin:
        raise ValueError(f"box {box} with margin {margin} does not fit a {H}x{W} image (box + 2 margin must be "
                         "smaller than the image)")
    if centred:
        top, left = (H - box) // 2, (W - box) // 2
    else:
        top = int(torch.randint(margin, H - margin - box, (1,), generator=generator))
        left = int(torch.randint(margin, W - margin - box, (1,), generator=generator))
    m = torch.ones(H, W)
    m[top:top + box, left:left + box] = 0
    return m


def random_mask(size: tuple[int, int], missing: float = 0.92, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(H, W) mask with exactly round(missing * H * W) pixels missing, chosen uniformly."""
    missing = check_float(missing, "missing fraction", 0.0, 0.999)
    H, W = size
    n_missing = round(missing * H * W)
    idx = torch.randperm(H * W, generator=generator)[:n_missing]
    m = torch.ones(H * W)
    m[idx] = 0
    return m.reshape(H, W)


class Inpainting(LinearOperator):
    """y = m * x for x (B, C, H, W) and a fixed (H, W) mask m.

    Build with :meth:`box` or :meth:`random`, or give a mask directly.
    """

    exact_pinv = True

    name = "inpainting"

    def __init__(self, mask: torch.Tensor, channels: int = 3, kind: str = "custom") -> None:
        super().__init__()
        if mask.ndim != 2:
            raise ValueError(f"mask must be (H, W), got shape {tuple(mask.shape)}")
        self.register_buffer("mask", mask.float())
        self.config = {"in_shape": [channels, *mask.shape], "kind": kind}

    @classmethod
    def box(cls, in_shape: tuple[int, int, int] = (3, 256, 256), box: Optional[int] = None,
            margin: Optional[int] = None, centred: bool = False,
            generator: Optional[torch.Generator] = None) -> "Inpainting":
        C, H, W = in_shape
        if not isinstance(centred, bool):
            raise DPSError(f"centred must be true or false, got {centred!r}")
        return cls(box_mask((H, W), box, margin, centred, generator), C, "box")

    @classmethod
    def random(cls, in_shape: tuple[int, int, int] = (3, 256, 256), missing: float = 0.92,
               generator: Optional[torch.Generator] = None) -> "Inpainting":
        C, H, W = in_shape
        return cls(random_mask((H, W), missing, generator), C, "random")

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x * self.mask.to(x.dtype)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.mask.to(y.dtype)

    def A_dagger(self, y: torch.Tensor, iters: int = 0, tol: float = 0.0) -> torch.Tensor:
        return y * self.mask.to(y.dtype)

    def _spectral(self):
        """V = U = I, singular values = the mask."""
        from .spectral import SpectralForm

        return SpectralForm("mask", self.mask.double())

    def solve_normal(self, rhs: torch.Tensor, rho: float, x0: torch.Tensor, iters: int = 0) -> torch.Tensor:
        """A^T A = diag(m): (A^T A + rho I)^-1 rhs = rhs / (m + rho)."""
        return rhs / (self.mask.to(rhs.dtype) + rho)

    @classmethod
    def from_saved(cls, config, state, **resources):
        return cls(state["mask"], config["in_shape"][0], config["kind"])
