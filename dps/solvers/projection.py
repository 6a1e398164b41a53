"""Projection methods: MCG (Chung et al. 2022a) and Score-SDE / ILVR (Song et al. 2021b; Choi et al. 2021).

Both project the iterate onto the measurement noised to the level of the step,
x <- x - A^+(A x - y_i) (:func:`noised_measurement_projection`), with A^+ the operator's
:meth:`~dps.operators.LinearOperator.damped_pinv` (exact for masks, SR and matrices; damped by the noise
variance otherwise). MCG does so after each DPS step (rule "paper", zeta' of the task); Score-SDE after each
unconditional DDPM step (replacement for inpainting, the low-frequency refinement A^+ A for SR and blur).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..diffusion.denoiser import Prior
from ..diffusion.schedule import respace
from ..diffusion.steps import ddpm_step, randn
from ..diffusion.schedule import check_spacing
from ..errors import check_int
from ..noise import NoiseModel, floored_variance
from ..operators import LinearOperator
from .dps import DivergenceGuard, DPSConfig, dps_sample

__all__ = ["mcg", "score_sde", "noised_measurement_projection", "MCGSettings", "ScoreSDESettings"]


@dataclass(frozen=True)
class MCGSettings:
    """MCG's settings: those of its DPS steps (rule "paper"); a task's ``dps`` block gives them.

    :param steps: reverse steps N; :param zeta: zeta' of rule "paper"; :param reference_steps: the step count
        zeta' is given for (:attr:`DPSConfig.zeta_per_step`); :param spacing: "even" or "ddim".
    """

    steps: int = 1000
    zeta: float = 1.0
    reference_steps: Optional[int] = None
    spacing: str = "even"

    def __post_init__(self) -> None:
        self.dps_config()  # validates every field as DPS does

    def dps_config(self) -> DPSConfig:
        """The DPS steps MCG runs (rule "paper"; no clipping of x0_hat)."""
        return DPSConfig(steps=self.steps, zeta=self.zeta, spacing=self.spacing, reference_steps=self.reference_steps)


@dataclass(frozen=True)
class ScoreSDESettings:
    """Score-SDE / ILVR's settings: the unconditional DDPM steps, as a task's ``dps`` block gives them."""

    steps: int = 1000
    spacing: str = "even"

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", check_int(self.steps, "steps", 1, 100_000))
        check_spacing(self.spacing)


def noised_measurement_projection(prior: Prior, op: LinearOperator, y: torch.Tensor, x: torch.Tensor,
                                  abar: float, eps: torch.Tensor, delta: float = 1e-4) -> torch.Tensor:
    """Project model-space x_i onto {x : A d(x) = y_i}, with y_i the measurement noised to level i.

    With d(x) = a x + b the affine map to data space (a = 1/2, b = 1/2 for [-1, 1] models), the data part
    of x_i is sqrt(abar) x_0, so the target is  A d_lin(x_i) = sqrt(abar) A d_lin(x0)  plus the forward
    noise sqrt(1 - abar) A eps (eps drawn fresh). In model space:
        x <- x - A^+(A x - y_i) / a,   y_i = sqrt(abar) (y - A b_img) + sqrt(1 - abar) A (a eps)
    where A b_img is A applied to the constant image b. Inpainting: this replaces the observed pixels.
    """
    offset = torch.full_like(x[:1], prior.data_offset)  # d(0) = b
    scale = prior.data_scale  # a
    Ab = op(offset)
    y_i = math.sqrt(abar) * (y - Ab) + math.sqrt(1 - abar) * op(scale * eps)
    r = op(scale * x) - y_i
    return x - op.damped_pinv(r, delta) / scale


def mcg(prior: Prior, op: LinearOperator, y: torch.Tensor, noise: NoiseModel, generators,
        settings: MCGSettings = MCGSettings(), callback: Optional[Callable[[dict], None]] = None) -> torch.Tensor:
    """MCG: every DPS step (rule "paper", the task's zeta' and steps) is followed by the projection onto the
    noised measurement, through DPS's ``post_step`` hook. Returns x (B, *event_shape) in data space."""
    cfg = settings.dps_config()
    schedule = respace(prior.schedule, cfg.steps, cfg.spacing)
    delta = floored_variance(noise, 1e-2)  # the damping of A^+: sigma_y^2, at least 1e-4

    def project(x: torch.Tensor, i: int) -> torch.Tensor:  # on x_{i-1}, after the DPS update
        eps = randn(x.shape, generators, x.device, x.dtype)
        return noised_measurement_projection(prior, op, y, x, float(schedule.alphas_cumprod_prev[i]), eps, delta)

    from .methods import METHODS  # the method table imports this module

    return dps_sample(prior, op, y, noise, cfg, generator=generators, callback=callback, post_step=project,
                      advice=METHODS["mcg"].advice(settings)).x[:, 0]


@torch.no_grad()
def score_sde(prior: Prior, op: LinearOperator, y: torch.Tensor, noise: NoiseModel, generators,
              settings: ScoreSDESettings = ScoreSDESettings(), callback: Optional[Callable[[dict], None]] = None
              ) -> torch.Tensor:
    """Unconditional DDPM sampling (the task's steps) with the noised-measurement projection after every step."""
    schedule = respace(prior.schedule, settings.steps, settings.spacing)
    guard = DivergenceGuard(prior)
    delta = floored_variance(noise, 1e-2)  # the damping of A^+: sigma_y^2, at least 1e-4
    B = y.shape[0]
    x = randn((B, *prior.event_shape), generators, y.device, y.dtype)
    for i in reversed(range(len(schedule))):
        t = torch.full((B,), int(schedule.timesteps[i]), dtype=torch.long, device=y.device)
        out = prior(x, t)
        x0 = prior.clip_x0(out.x0)
        z = randn(x.shape, generators, x.device, x.dtype) if i > 0 else torch.zeros_like(x)
        var = "learned_range" if out.var_values is not None else "fixed_small"
        x = ddpm_step(x, x0, schedule, i, z, var, out.var_values)
        eps = randn(x.shape, generators, x.device, x.dtype) if i > 0 else torch.zeros_like(x)
        x = noised_measurement_projection(prior, op, y, x, float(schedule.alphas_cumprod_prev[i]), eps, delta)
        guard.check(x, i, int(t[0]), "the projection is unstable for this operator")
        if callback is not None:
            callback({"i": i, "t": int(t[0]), "x": x.clone(), "x0": x0.clone()})
    return prior.clip_data(prior.to_data(x))
