"""DiffPIR: denoising diffusion models for plug-and-play image restoration (Zhu et al., CVPRW 2023).

Half-quadratic splitting inside the reverse diffusion, network forwards only (no VJP). At step t:

    x0_t   = D(x_t)                                               (Tweedie denoiser; the prior step)
    x0_hat = argmin_x ||y - A x||^2 + rho_t ||x - x0_t||^2,   rho_t = lambda sigma_n^2 / sigma_bar_t^2
           = (A^T A + rho_t I)^-1 (A^T y + rho_t x0_t)            (the data step; DiffPIR Eq. 13)
    eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)
    x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1}) (sqrt(1 - zeta) eps_hat + sqrt(zeta) z)   (Eq. 15)

with sigma_bar_t = sqrt((1 - abar_t) / abar_t) the noise level of x_t / sqrt(abar_t) and sigma_n the
measurement noise, both in data units (sigma_n at least 1e-3 so that a noiseless problem keeps rho_t > 0).
Defaults lambda = 1, zeta = 1, checked on TRAINING digits at 100 steps (``benchmarks/method_tuning/``).
The data step is the operator's :meth:`~dps.operators.LinearOperator.solve_normal`: closed form for masks,
FFT for circular blur, conjugate gradients otherwise (super-resolution, motion blur, matrices).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..diffusion.denoiser import Prior
from ..diffusion.schedule import respace
from ..diffusion.steps import randn
from ..errors import check_float, check_int
from ..noise import NoiseModel, floored_variance
from ..operators import LinearOperator
from .dps import DivergenceGuard, frozen_parameters

__all__ = ["diffpir", "DiffPIRSettings"]


@dataclass(frozen=True)
class DiffPIRSettings:
    """DiffPIR's settings.

    :param steps: reverse steps (network forwards).
    :param lam: lambda of rho_t = lambda sigma_n^2 / sigma_bar_t^2 (the data step's weight).
    :param zeta: DiffPIR's zeta (Eq. 15): the share of fresh noise in the re-noising (not DPS's zeta').
    :param cg_iters: conjugate-gradient iterations of the data step where it has no closed form.
    """

    steps: int = 100
    lam: float = 1.0
    zeta: float = 1.0
    cg_iters: int = 30

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", check_int(self.steps, "diffpir steps", 1, 100_000))
        object.__setattr__(self, "lam", check_float(self.lam, "diffpir lam", 0.0, lo_open=True))
        object.__setattr__(self, "zeta", check_float(self.zeta, "diffpir zeta", 0.0, 1.0))
        object.__setattr__(self, "cg_iters", check_int(self.cg_iters, "diffpir cg_iters", 1))


@torch.no_grad()
def diffpir(prior: Prior, op: LinearOperator, y: torch.Tensor, noise: NoiseModel, generators,
            settings: DiffPIRSettings = DiffPIRSettings(), callback=None) -> torch.Tensor:
    """DiffPIR with ``settings.steps`` network forwards; returns x (B, *event_shape) in data space."""
    steps, lam, zeta, cg_iters = settings.steps, settings.lam, settings.zeta, settings.cg_iters
    schedule = respace(prior.schedule, steps)
    sigma_n2 = floored_variance(noise)
    aty = op.A_adjoint(y)
    B = y.shape[0]
    x = randn((B, *prior.event_shape), generators, y.device, y.dtype)
    guard = DivergenceGuard(prior)
    with frozen_parameters(prior):
        for i in reversed(range(len(schedule))):
            t = torch.full((B,), int(schedule.timesteps[i]), dtype=torch.long, device=y.device)
            abar, abar_prev = float(schedule.alphas_cumprod[i]), float(schedule.alphas_cumprod_prev[i])
            x0_t = prior.to_data(prior.clip_x0(prior(x, t).x0))
            sigma_bar2 = prior.data_scale ** 2 * (1.0 - abar) / abar  # in data units
            rho = lam * sigma_n2 / sigma_bar2
            x0_hat = prior.clip_x0(prior.from_data(op.solve_normal(aty + rho * x0_t, rho, x0_t, cg_iters)))
            if i == 0:
                x = x0_hat
            else:
                eps_hat = (x - math.sqrt(abar) * x0_hat) / math.sqrt(1.0 - abar)
                z = randn(x.shape, generators, x.device, x.dtype)
                x = math.sqrt(abar_prev) * x0_hat + math.sqrt(1.0 - abar_prev) * (
                    math.sqrt(1.0 - zeta) * eps_hat + math.sqrt(zeta) * z)
            guard.check(x, i, int(t[0]), "DiffPIR's data step is unstable for this problem")
            if callback is not None:
                callback({"i": i, "t": int(t[0]), "x": x.clone(), "x0": x0_hat.clone()})
    return prior.clip_data(prior.to_data(x))
