"""Unconditional sampling from a prior (no measurement): the reverse process of DDPM or DDIM."""
from __future__ import annotations

from typing import Optional

import torch

from ..diffusion.denoiser import Prior
from ..diffusion.schedule import respace
from ..diffusion.steps import Generators, ddim_step, ddpm_step, randn

__all__ = ["sample_prior"]


@torch.no_grad()
def sample_prior(prior: Prior, n: int, steps: int = 250, sampler: str = "ddpm", eta: float = 0.0,
                 generator: Generators = None, variance: Optional[str] = None,
                 clip_x0: Optional[tuple[float, float]] = (-1.0, 1.0), device=None) -> torch.Tensor:
    """Draw n samples x_0 ~ p_theta, returned in data space (n, *event_shape), clipped to [0, 1].

    :param steps: reverse steps N (the training schedule respaced to N, guided-diffusion "even" spacing).
    :param sampler: ``"ddpm"`` (ancestral; ``variance`` as in :class:`~dps.solvers.dps.DPSConfig`) or
        ``"ddim"`` with ``eta``.
    :param clip_x0: clamp x0_hat in model space at every step (guided-diffusion's clip_denoised);
        ``None`` for priors not in [-1, 1].
    """
    schedule = respace(prior.schedule, steps)
    dtype = torch.get_default_dtype()
    x = randn((n, *prior.event_shape), generator, device, dtype)
    for i in reversed(range(len(schedule))):
        t = torch.full((n,), int(schedule.timesteps[i]), dtype=torch.long, device=x.device)
        out = prior(x, t)
        x0 = out.x0 if clip_x0 is None else out.x0.clamp(*clip_x0)
        z = randn(x.shape, generator, x.device, x.dtype) if i > 0 else torch.zeros_like(x)
        if sampler == "ddpm":
            var = variance or ("learned_range" if out.var_values is not None else "fixed_small")
            x = ddpm_step(x, x0, schedule, i, z, var, out.var_values)
        elif sampler == "ddim":
            x = ddim_step(x, x0, schedule, i, z, eta)
        else:
            raise ValueError(f"unknown sampler {sampler!r}; use 'ddpm' or 'ddim'")
    return prior.clip_data(prior.to_data(x))
