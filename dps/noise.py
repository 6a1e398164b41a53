"""Measurement noise models, each with the data-fit norm that DPS's guidance uses for it.

Conventions: measurements are in the data space of the operator (images in [0, 1]). Every random
draw takes an explicit generator (one, or a list with one per sample) and happens on the tensor's
device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .diffusion.steps import Generators, randn
from .errors import DPSError, check_float

__all__ = ["GaussianNoise", "PoissonNoise", "NoiseModel", "parse_noise", "floored_variance"]


def _per_sample_sum(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).sum(dim=1)


@dataclass(frozen=True)
class GaussianNoise:
    """y = A(x) + sigma n, n ~ N(0, I); sigma in data units (for images: [0, 1] units).

    Data fit (DPS Eq. 16): ||y - A(x0_hat)||_2^2, per sample.
    """

    sigma: float = 0.05
    kind = "gaussian"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_float(self.sigma, "Gaussian noise sigma (data units)", 0.0, 1.0))

    @property
    def typical_sigma(self) -> float:
        """The noise standard deviation in data units (projections damp their pseudo-inverse with it)."""
        return self.sigma

    @classmethod
    def authors(cls, sigma_pm1: float = 0.05) -> "GaussianNoise":
        """The authors' configs add sigma = 0.05 to measurements of [-1, 1] images; for a linear A that is
        exactly sigma_pm1 / 2 = 0.025 in our [0, 1] units (A((x + 1) / 2) = (A x + A 1) / 2)."""
        return cls(sigma=sigma_pm1 / 2)

    def __call__(self, Ax: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        if self.sigma == 0:
            return Ax.clone()
        return Ax + self.sigma * randn(Ax.shape, generator, Ax.device, Ax.dtype)

    def sq_norm(self, y: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
        """||y - A(x)||^2 per sample, shape (B,)."""
        return _per_sample_sum((y - Ax) ** 2)

    def variance(self, y: torch.Tensor) -> torch.Tensor:
        """Noise variance in the units of :meth:`sq_norm`, per sample (B,): -log p(y|x) = sq_norm / (2 var)
        + const. Here sigma^2."""
        return torch.full((y.shape[0],), self.sigma ** 2, dtype=y.dtype, device=y.device)

    def element_variance(self, y: torch.Tensor) -> torch.Tensor:
        """Var n_j of every element of y (B, ...), in data units: sigma^2 everywhere."""
        return torch.full_like(y, self.sigma ** 2)


@dataclass(frozen=True)
class PoissonNoise:
    """Photon-counting noise as in the paper's appendix and the authors' code:

    y = clip(Poisson(peak * clip(A(x), 0, 1)) / peak, 0, 1), peak = 255 * rate
    (the authors' ``rate``; rate = 1 gives 255 photons at full intensity).

    Data fit (DPS Eq. 19): ||y - A(x0_hat)||^2_Lambda with Lambda_jj proportional to 1 / (2 y_j), y_j in
    [0, 1] units, guarded by y_j >= 1 / peak (one photon) where the count is zero. We scale Lambda by
    2 mean(y) per sample, Lambda_jj = mean(y) / max(y_j, 1 / peak), so that for a uniform measurement it
    is the Gaussian norm and zeta' means the same for both noise models (multiplying Lambda by c
    multiplies the paper's normalised step zeta' grad ||r||^2_Lambda / ||r||_Lambda by sqrt(c)).
    The authors' code instead uses mean_j(||y - A(x0_hat)||_2 / |y_j|) over the whole batch; we keep the
    paper's weighted norm.
    """

    rate: float = 1.0
    kind = "poisson"

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", check_float(self.rate, "Poisson rate", 0.0, lo_open=True))

    @property
    def typical_sigma(self) -> float:
        """The standard deviation of a mid-grey (0.5) pixel, sqrt(0.5 / peak), in data units."""
        return (0.5 / self.peak) ** 0.5

    @property
    def peak(self) -> float:
        return 255.0 * self.rate

    def __call__(self, Ax: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        lam = Ax.detach().clamp(0, 1) * self.peak
        if generator is None or isinstance(generator, torch.Generator):
            counts = torch.poisson(lam, generator=generator)
        else:
            if len(generator) != lam.shape[0]:
                raise ValueError(f"got {len(generator)} generators for a batch of {lam.shape[0]}")
            counts = torch.stack([torch.poisson(l, generator=g) for l, g in zip(lam, generator)])
        return (counts / self.peak).clamp(0, 1)

    def _mean_level(self, y: torch.Tensor) -> torch.Tensor:
        """mean(y) per sample (B,), at least one photon (1 / peak)."""
        return y.reshape(y.shape[0], -1).mean(1).clamp_min(1.0 / self.peak)

    def sq_norm(self, y: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
        """||y - A(x)||^2_Lambda per sample, Lambda_jj = mean(y) / max(y_j, 1 / peak); shape (B,)."""
        y_mean = self._mean_level(y)
        weight = y_mean.reshape(-1, *([1] * (y.ndim - 1))) / y.clamp_min(1.0 / self.peak)
        return _per_sample_sum(weight * (y - Ax) ** 2)

    def variance(self, y: torch.Tensor) -> torch.Tensor:
        """Noise variance in the units of :meth:`sq_norm`, per sample (B,), so that -log p(y|x) is about
        sq_norm / (2 var): Var(y_j) = y_j / peak, and sq_norm weighs r_j^2 by mean(y) / y_j, so
        var = mean(y) / peak."""
        return self._mean_level(y) / self.peak

    def element_variance(self, y: torch.Tensor) -> torch.Tensor:
        """Var n_j of every element of y (B, ...), in data units: y_j / peak (the Poisson count's variance)."""
        return y.clamp_min(0) / self.peak


NoiseModel = GaussianNoise | PoissonNoise


def floored_variance(noise: NoiseModel, floor_sigma: float = 1e-3) -> float:
    """sigma_y^2 of the noise model (its typical sigma, data units), at least ``floor_sigma``^2: the damping
    that keeps the normal equations, Gram solves and projections of a noiseless problem well posed."""
    return max(noise.typical_sigma, floor_sigma) ** 2


def parse_noise(spec: str) -> NoiseModel:
    """Parse ``gaussian:SIGMA`` or ``poisson:RATE`` (the command-line form)."""
    if not isinstance(spec, str):
        raise DPSError(f"noise must be a string 'gaussian:SIGMA' or 'poisson:RATE', got {spec!r}")
    name, _, value = spec.partition(":")
    if name not in ("gaussian", "poisson"):
        raise DPSError(f"unknown noise {spec!r}; use 'gaussian:SIGMA' or 'poisson:RATE'")
    if not value.strip():
        example = "gaussian:0.025 (sigma in [0, 1] image units)" if name == "gaussian" else "poisson:1.0 (the rate)"
        raise DPSError(f"noise {spec!r} names no level; give one, e.g. {example}")
    try:
        number = float(value)
    except ValueError:
        raise DPSError(f"bad noise {spec!r}: {value!r} is not a number") from None
    try:
        return GaussianNoise(number) if name == "gaussian" else PoissonNoise(number)
    except DPSError as err:
        raise DPSError(f"bad noise {spec!r}: {err}") from None
