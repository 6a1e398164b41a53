"""Unconditional sampling from a prior (no measurement): the ancestral (DDPM) or DDIM reverse process on a
noise-level grid (:mod:`dps.diffusion.grid`; by default the model's own: a VP model's respaced training steps,
where this is DDPM's and DDIM's sampler)."""
from __future__ import annotations

from typing import Optional, Union

import torch

from ..diffusion.denoiser import Prior
from ..diffusion.grid import GridSpec, denoise_on
from ..diffusion.steps import Generators, ancestral_step, ddim_grid_step, randn

__all__ = ["sample_prior"]


@torch.no_grad()
def sample_prior(prior: Prior, n: int, steps: int = 250, sampler: str = "ddpm", eta: float = 0.0,
                 generator: Generators = None, variance: Optional[str] = None,
                 clip_x0: Union[str, tuple[float, float], None] = "prior", device=None,
                 grid: GridSpec = GridSpec()) -> torch.Tensor:
    """Draw n samples x_0 ~ p_theta, returned in data space (n, *event_shape), clipped to the prior's data bounds.
    A latent model (:class:`~dps.diffusion.latent.LatentPrior`) samples its latents, unclipped, and decodes them.

    :param steps: reverse steps N (the grid's length; a VP model's training schedule respaced to N with
        guided-diffusion's "even" spacing).
    :param sampler: ``"ddpm"`` (ancestral; ``variance`` as in :class:`~dps.solvers.dps.DPSConfig`) or
        ``"ddim"`` with ``eta``.
    :param clip_x0: clamp x0_hat in model space at every step (guided-diffusion's clip_denoised): ``"prior"``
        to the prior's data bounds ([-1, 1] for a [-1, 1] model), a (low, high) pair, or None for no clamp.
    :param grid: the noise-level grid (default: the model's own).
    """
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"unknown sampler {sampler!r}; use 'ddpm' or 'ddim'")
    if getattr(prior, "form", None) == "latent":  # latents from the latent model (unclipped), then decoded
        z = sample_prior(prior.latent, n, steps, sampler, eta, generator, variance, None, device, grid)
        return prior.clip_data(prior.to_data(prior.decode(z)))
    levels = grid.build(prior, steps)
    dtype = torch.get_default_dtype()
    x = randn((n, *prior.event_shape), generator, device, dtype) * levels.start_std()
    for i in reversed(range(len(levels))):
        out = denoise_on(prior, x, levels, i)
        x0 = prior.clip_x0(out.x0) if clip_x0 == "prior" else out.x0 if clip_x0 is None else out.x0.clamp(*clip_x0)
        z = randn(x.shape, generator, x.device, x.dtype) if i > 0 else torch.zeros_like(x)
        if sampler == "ddpm":
            var = variance or ("learned_range" if out.var_values is not None else "fixed_small")
            x = ancestral_step(x, x0, levels, i, z, var, out.var_values)
        else:
            x = ddim_grid_step(x, x0, levels, i, z, eta)
    return prior.clip_data(prior.to_data(x))
