"""Optimisation baselines: PnP-ADMM (Chan et al. 2016) and ADMM-TV.

The data step (A^T A + rho I)^-1 rhs is the operator's :meth:`~dps.operators.LinearOperator.solve_normal`
(closed form for masks, FFT for circular blur, conjugate gradients otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..diffusion.denoiser import Prior
from ..errors import check_float, check_int
from ..noise import NoiseModel
from ..operators import LinearOperator, conjugate_gradient
from .dps import frozen_parameters

__all__ = ["pnp_admm", "admm_tv", "tweedie_denoiser", "PnPADMMSettings", "ADMMTVSettings"]


@dataclass(frozen=True)
class PnPADMMSettings:
    """PnP-ADMM's settings: ``iters`` ADMM iterations (one network forward each) with penalty ``rho``, the
    prior's Tweedie denoiser at data-space noise ``denoiser_sigma``, and ``cg_iters`` for the data step."""

    iters: int = 40
    rho: float = 1.0
    denoiser_sigma: float = 0.1
    cg_iters: int = 30

    def __post_init__(self) -> None:
        object.__setattr__(self, "iters", check_int(self.iters, "pnp_admm iters", 1))
        object.__setattr__(self, "rho", check_float(self.rho, "pnp_admm rho", 0.0, lo_open=True))
        object.__setattr__(self, "denoiser_sigma", check_float(self.denoiser_sigma, "pnp_admm denoiser_sigma", 0.0,
                                                               lo_open=True))
        object.__setattr__(self, "cg_iters", check_int(self.cg_iters, "pnp_admm cg_iters", 1))


@dataclass(frozen=True)
class ADMMTVSettings:
    """ADMM-TV's settings: ``iters`` iterations, TV weight ``lam``, penalty ``rho``, ``cg_iters`` per x-step."""

    iters: int = 100
    lam: float = 0.01
    rho: float = 0.1
    cg_iters: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "iters", check_int(self.iters, "admm_tv iters", 1))
        object.__setattr__(self, "lam", check_float(self.lam, "admm_tv lam", 0.0))
        object.__setattr__(self, "rho", check_float(self.rho, "admm_tv rho", 0.0, lo_open=True))
        object.__setattr__(self, "cg_iters", check_int(self.cg_iters, "admm_tv cg_iters", 1))


def tweedie_denoiser(prior: Prior, sigma: float):
    """D_sigma(v): the prior's Tweedie denoiser for data-space noise of std ``sigma``: the denoiser contract
    D(v_model; sigma / a) (a = data units per model unit) on the image mapped to model space, any form of prior
    (a VP network at its nearest timestep)."""
    level = sigma / prior.data_scale

    @torch.no_grad()
    def denoise(v: torch.Tensor) -> torch.Tensor:
        s = torch.full((v.shape[0],), level, dtype=torch.float64, device=v.device)
        return prior.to_data(prior.clip_x0(prior.denoise(prior.from_data(v), s).x0))

    return denoise


def pnp_admm(prior: Prior, op: LinearOperator, y: torch.Tensor, noise: NoiseModel, generators,
             settings: PnPADMMSettings = PnPADMMSettings()) -> torch.Tensor:
    """PnP-ADMM: x = argmin ||Ax - y||^2/2 + rho/2 ||x - z + u||^2;  z = D_sigma(x + u);  u += x - z.

    D_sigma is the prior's own Tweedie denoiser at data-space noise ``denoiser_sigma`` (our substitute for
    the paper's DnCNN). Returns z (B, *in_shape) clipped to [0, 1].
    """
    iters, rho, cg_iters = settings.iters, settings.rho, settings.cg_iters
    denoise = tweedie_denoiser(prior, settings.denoiser_sigma)
    aty = op.A_adjoint(y)
    x = torch.full((y.shape[0], *op.in_shape), 0.5, dtype=y.dtype, device=y.device)  # flat grey start
    z, u = x.clone(), torch.zeros_like(x)
    with frozen_parameters(prior):
        for _k in range(iters):
            x = op.solve_normal(aty + rho * (z - u), rho, x, cg_iters)
            z = denoise(x + u)
            u = u + x - z
    return z.clamp(0, 1)


def _grad(x: torch.Tensor) -> torch.Tensor:
    """Forward differences with circular boundary: (B, 2, C, H, W)."""
    return torch.stack([x.roll(-1, -1) - x, x.roll(-1, -2) - x], dim=1)


def _grad_adjoint(g: torch.Tensor) -> torch.Tensor:
    return (g[:, 0].roll(1, -1) - g[:, 0]) + (g[:, 1].roll(1, -2) - g[:, 1])


def admm_tv(prior: Optional[Prior], op: LinearOperator, y: torch.Tensor, noise: NoiseModel, generators,
            settings: ADMMTVSettings = ADMMTVSettings()) -> torch.Tensor:
    """min_x 1/2 ||A x - y||^2 + lam ||D x||_1 (anisotropic TV) by ADMM with z = D x:
    x-step (A^T A + rho D^T D) x = A^T y + rho D^T (z - u) by CG; z-step soft-thresholding at lam/rho."""
    iters, lam, rho, cg_iters = settings.iters, settings.lam, settings.rho, settings.cg_iters
    A = op
    aty = A.A_adjoint(y)
    x = torch.full((y.shape[0], *A.in_shape), 0.5, dtype=y.dtype, device=y.device)  # flat grey start
    z = _grad(x)
    u = torch.zeros_like(z)
    for _k in range(iters):
        rhs = aty + rho * _grad_adjoint(z - u)
        x = x + conjugate_gradient(lambda v: A.A_adjoint(A(v)) + rho * _grad_adjoint(_grad(v)),
                                   rhs - A.A_adjoint(A(x)) - rho * _grad_adjoint(_grad(x)), iters=cg_iters, tol=1e-8)
        v = _grad(x) + u
        z = v.sign() * (v.abs() - lam / rho).clamp_min(0)
        u = u + _grad(x) - z
    return x.clamp(0, 1)


