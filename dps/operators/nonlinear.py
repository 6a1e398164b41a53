"""Nonlinear operators: Fourier phase retrieval and a weight-free nonlinear blur.

Phase retrieval (paper Sec. 4): y = |F P x|, with P zero-padding and F the centred orthonormal 2-D DFT.
Our ``oversampling`` is the padded size over the image size per axis (2.0 doubles each side). The
authors' code pads ``int(oversample / 8 * 256)`` pixels per side, i.e. 64 px at 256 px for their
"oversample 2.0" -- a ratio of 1.5 -- and applies it to [-1, 1] images, so their padding is mid-grey in
[0, 1] terms; ``PhaseRetrieval(..., convention="authors")`` (:meth:`PhaseRetrieval.authors`) reproduces
their measurement exactly.

Nonlinear blur (ours, needs no weights): motion blur followed by a saturating camera response,
y = f(exposure * (k (x) x)),  f(u) = (1 - exp(-alpha u)) / (1 - exp(-alpha)),
a smooth model of a sensor whose highlights compress and saturate. It stands in for the learned
KernelWizard blur of the paper (see :mod:`dps.operators.kernel_wizard`) when those weights are absent.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import check_float, check_int
from .base import Operator
from .blur import Blur

__all__ = ["PhaseRetrieval", "SaturatedMotionBlur", "fft2c"]


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D DFT over the last two axes: fftshift(fft2(ifftshift(x), norm='ortho'))."""
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))


def ifft2c(X: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`fft2c`: fftshift(ifft2(ifftshift(X), norm='ortho'))."""
    X = torch.fft.ifftshift(X, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(X, norm="ortho"), dim=(-2, -1))


class PhaseRetrieval(Operator):
    """Fourier phase retrieval for x (B, C, H, W) in [0, 1]; y (B, C, H + 2p, W + 2p).

    ``convention="ours"`` (default): y = |fft2c(pad_0(x))| with p = round((ratio - 1) H / 2), so the padded
    size is ``oversampling`` times the image (the paper's ratio 2.0 gives p = H / 2); the object is
    non-negative and zero outside its support, which HIO, ER and OSS need (``fourier_support`` = p).

    ``convention="authors"``: the authors' code, exactly. It pads the [-1, 1] image with zeros by
    p = int(oversampling / 8 * H) (64 px at 256 px, an actual ratio of 1.5), so in [0, 1] terms the padding
    is mid-grey and the measurement is in their units:
        y = |fft2c(pad_0(2 x - 1))| = 2 |fft2c(pad_0(x - 1/2))|.
    Their Gaussian noise (sigma 0.05) is added to this y as it is: use ``gaussian:0.05`` with it (the
    halving that maps their sigma to ours holds for linear operators only). With this convention, zeta' =
    scale / 2 reproduces their update (the residual is already in their units). It is not of the form that
    HIO/ER/OSS assume (``fourier_support`` is None).
    """

    name = "phase_retrieval"
    CONVENTIONS = ("ours", "authors")

    def __init__(self, in_shape: tuple[int, int, int] = (3, 256, 256), oversampling: float = 2.0,
                 pad: int | None = None, convention: str = "ours") -> None:
        super().__init__()
        if convention not in self.CONVENTIONS:
            raise ValueError(f"convention must be one of {self.CONVENTIONS}, got {convention!r}")
        C, H, W = in_shape
        if pad is None:
            oversampling = check_float(oversampling, "oversampling ratio", 1.0, 16.0)
            pad = round((oversampling - 1) * H / 2) if convention == "ours" else int(oversampling / 8.0 * H)
        self.pad = check_int(pad, "pad", 0)
        self.convention = convention
        self.fourier_support = self.pad if convention == "ours" else None
        self.config = {"in_shape": [C, H, W], "pad": self.pad, "convention": convention}

    @classmethod
    def from_saved(cls, config, state, **resources):
        return cls(tuple(config["in_shape"]), pad=config["pad"], convention=config.get("convention", "ours"))

    def naive_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """|IFFT(y)| with zero phase, cropped to the support and scaled to a maximum of 1."""
        p = self.pad
        x = ifft2c(y.to(torch.complex128 if y.dtype == torch.float64 else torch.complex64)).abs()
        x = x[..., p:x.shape[-2] - p, p:x.shape[-1] - p]
        return (x / x.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)).clamp(0, 1)

    @classmethod
    def authors(cls, in_shape: tuple[int, int, int] = (3, 256, 256), oversample: float = 2.0) -> "PhaseRetrieval":
        """The authors' operator: their padding int(oversample / 8 * H) and their [-1, 1] values."""
        return cls(in_shape, oversample, convention="authors")

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        p = self.pad
        if self.convention == "authors":
            x = 2 * x - 1  # their [-1, 1] image, padded with zeros (mid-grey in [0, 1] terms)
        return fft2c(F.pad(x, (p, p, p, p))).abs()


class SaturatedMotionBlur(Operator):
    """y = f(exposure * blur(x)), f(u) = (1 - exp(-alpha u)) / (1 - exp(-alpha)); ours, weight-free. Below u = 0,
    outside the image range, f continues along its tangent at 0, alpha u / (1 - exp(-alpha)): the exponential would
    overflow on an iterate far below 0 (a latent model's early decoded estimates), the tangent keeps it finite.

    :param blur: the linear blur (default: the paper's motion blur for this size, seeded).
    :param exposure: gain before the response (> 1 pushes bright regions into saturation).
    :param alpha: curvature of the response (-> 0 is linear).
    """

    name = "saturated_motion_blur"

    def __init__(self, in_shape: tuple[int, int, int] = (3, 256, 256), exposure: float = 1.5,
                 alpha: float = 3.0, seed: int = 0, blur: Blur | None = None) -> None:
        super().__init__()
        exposure = check_float(exposure, "exposure", 0.0, lo_open=True)
        alpha = check_float(alpha, "alpha", 0.0, lo_open=True)
        self.blur = blur if blur is not None else Blur.motion(in_shape, seed=seed)
        self.exposure, self.alpha = float(exposure), float(alpha)
        self.config = {"in_shape": list(in_shape), "exposure": exposure, "alpha": alpha, "blur": self.blur.config}

    def response(self, u: torch.Tensor) -> torch.Tensor:
        """The camera response f(u), monotone with f(0) = 0 and f(1) = 1; linear below 0 (class docstring)."""
        scale = 1 - math.exp(-self.alpha)
        return torch.where(u >= 0, (1 - torch.exp(-self.alpha * u.clamp_min(0))) / scale, self.alpha * u / scale)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return self.response(self.exposure * self.blur.A(x))

    @classmethod
    def from_saved(cls, config, state, **resources):
        b = config["blur"]
        blur = Blur(state["blur.kernel"], tuple(b["in_shape"]), b["boundary"], b["kind"])
        return cls(tuple(config["in_shape"]), config["exposure"], config["alpha"], blur=blur)
