"""Reverse steps of the VP diffusion on a (possibly respaced) :class:`Schedule`, and seeded noise.

Step i goes from x_i to x_{i-1} (i = N-1, ..., 0); at i = 0 no noise is added.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .schedule import Schedule

Generators = Union[torch.Generator, Sequence[torch.Generator], None]

__all__ = ["Generators", "randn", "ddpm_step", "ddim_step", "ddim_noise_std", "ddpm_sigma", "VARIANCES", "ancestral_step",
           "ddim_grid_step", "ddim_grid_std"]

VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def randn(shape: Sequence[int], generator: Generators, device, dtype) -> torch.Tensor:
    """Standard normal noise of ``shape`` (B, ...).

    With a list of B generators each sample draws from its own generator, so a sample's noise never
    depends on the rest of its batch (EDM's practice). A single generator draws the whole batch at once.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])


def ddpm_sigma(
    schedule: Schedule, i: int, variance: str = "fixed_small", var_values: Optional[torch.Tensor] = None
) -> Union[float, torch.Tensor]:
    """Standard deviation sigma_i of the ancestral step (guided-diffusion's three variance types).

    fixed_small: beta~_i (the posterior variance); fixed_large: beta_i (beta~_1 at i = 0);
    learned_range: exp(f log beta_i + (1 - f) log beta~_i), f = (v + 1) / 2, with log beta~ clipped at i = 0.
    """
    post = schedule.posterior_variance
    if variance == "fixed_small":
        return float(post[i]) ** 0.5
    if variance == "fixed_large":
        large = torch.cat([post[1:2], schedule.betas[1:]]) if len(schedule) > 1 else schedule.betas
        return float(large[i]) ** 0.5
    if variance == "learned_range":
        if var_values is None:
            raise ValueError("variance='learned_range' needs a prior with learned variance (var_values is None)")
        # beta~_0 = 0, so guided-diffusion clips its log to log beta~_1 (log beta_0 for a one-step schedule)
        clipped = post[i] if i > 0 else (post[1] if len(schedule) > 1 else schedule.betas[0])
        log_post = float(torch.log(clipped))
        frac = (var_values + 1) / 2
        log_var = frac * float(torch.log(schedule.betas[i])) + (1 - frac) * log_post
        return torch.exp(0.5 * log_var)
    raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")


def ddpm_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    schedule: Schedule,
    i: int,
    noise: torch.Tensor,
    variance: str = "fixed_small",
    var_values: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """DDPM ancestral step, DPS Algorithm 1 lines 5-6 (Ho et al. Eq. 7):

    x'_{i-1} = sqrt(alpha_i)(1 - abar_{i-1})/(1 - abar_i) x_i + sqrt(abar_{i-1}) beta_i/(1 - abar_i) x0_hat + sigma_i z,
    with z = 0 at i = 0. Shapes: x, x0, noise (B, ...).
    """
    beta = float(schedule.betas[i])
    abar = float(schedule.alphas_cumprod[i])
    abar_prev = float(schedule.alphas_cumprod_prev[i])
    c_x = (1 - beta) ** 0.5 * (1 - abar_prev) / (1 - abar)
    c_x0 = abar_prev**0.5 * beta / (1 - abar)
    mean = c_x * x + c_x0 * x0
    if i == 0:
        return mean
    return mean + ddpm_sigma(schedule, i, variance, var_values) * noise


def ddim_noise_std(schedule: Schedule, i: int, eta: float) -> float:
    """s, the noise std of DDIM step i: eta sqrt((1 - abar_{i-1}) / (1 - abar_i)) sqrt(1 - abar_i / abar_{i-1})
    (:func:`ddim_step` adds no noise at i = 0, whatever s)."""
    abar = float(schedule.alphas_cumprod[i])
    abar_prev = float(schedule.alphas_cumprod_prev[i])
    return eta * ((1 - abar_prev) / (1 - abar)) ** 0.5 * (1 - abar / abar_prev) ** 0.5


def ddim_step(
    x: torch.Tensor, x0: torch.Tensor, schedule: Schedule, i: int, noise: torch.Tensor, eta: float = 0.0
) -> torch.Tensor:
    """DDIM step (Song et al. 2021, Eq. 12) with eps recomputed from x0_hat (so clipping is respected):

    x_{i-1} = sqrt(abar_{i-1}) x0_hat + sqrt(1 - abar_{i-1} - s^2) eps + s z,
    s = eta sqrt((1 - abar_{i-1}) / (1 - abar_i)) sqrt(1 - abar_i / abar_{i-1}).
    """
    abar = float(schedule.alphas_cumprod[i])
    abar_prev = float(schedule.alphas_cumprod_prev[i])
    eps = (x - abar**0.5 * x0) / (1 - abar) ** 0.5
    s = ddim_noise_std(schedule, i, eta)
    out = abar_prev**0.5 * x0 + max(1 - abar_prev - s**2, 0.0) ** 0.5 * eps
    if i == 0 or s == 0:
        return out
    return out + s * noise



# ---- the same steps on any noise-level grid (:mod:`dps.diffusion.grid`): iterate x_i = s_i (x_0 + sigma_i n) ----

def ancestral_step(x: torch.Tensor, x0: torch.Tensor, grid, i: int, noise: torch.Tensor,
                   variance: str = "fixed_small", var_values: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The ancestral step from level i to i-1 on a :class:`~dps.diffusion.grid.Grid`: a draw from
    q(x_{i-1} | x_i, x_0 = x0_hat), the Gaussian bridge of x = x_0 + sigma n between the two levels,

        x_{i-1} = s_{i-1} [x0_hat + (sigma_{i-1} / sigma_i)^2 (x_i / s_i - x0_hat) + std z],

    with std^2 = sigma_{i-1}^2 (1 - sigma_{i-1}^2 / sigma_i^2) for ``fixed_small``; ``fixed_large`` and
    ``learned_range`` take DDPM's standard deviation (:func:`ddpm_sigma`) of the VP-equivalent schedule, in these
    units (divided by sqrt(abar_{i-1})). On a VP grid this is DDPM's step (Ho et al. Eq. 7) term for term. No
    noise at i = 0. Shapes: x, x0, noise (B, ...)."""
    sig, sig_p, s, s_p = grid.sigma(i), grid.sigma(i - 1), grid.scale(i), grid.scale(i - 1)
    ratio = (sig_p / sig) ** 2
    mean = (s_p * ratio / s) * x + (s_p * (1.0 - ratio)) * x0
    if i == 0:
        return mean
    if variance == "fixed_small":
        std = s_p * sig_p * (1.0 - ratio) ** 0.5
    else:
        std = ddpm_sigma(grid.vp_schedule, i, variance, var_values) * (s_p * (1.0 + sig_p ** 2) ** 0.5)
    return mean + std * noise


def ddim_grid_step(x: torch.Tensor, x0: torch.Tensor, grid, i: int, noise: torch.Tensor, eta: float = 0.0
                   ) -> torch.Tensor:
    """DDIM's step (Song et al. 2021, Eq. 12) on a grid, eps_hat = (x_i / s_i - x0_hat) / sigma_i:

        x_{i-1} = s_{i-1} [x0_hat + sqrt(sigma_{i-1}^2 - std^2) eps_hat + std z],
        std = eta sigma_{i-1} sqrt(1 - sigma_{i-1}^2 / sigma_i^2)

    (eta = 0: the probability-flow ODE's first-order step, EDM's Euler step)."""
    sig, sig_p, s, s_p = grid.sigma(i), grid.sigma(i - 1), grid.scale(i), grid.scale(i - 1)
    std = ddim_grid_std(grid, i, eta)
    eps = (x / s - x0) / sig
    out = s_p * (x0 + max(sig_p ** 2 - std ** 2, 0.0) ** 0.5 * eps)
    if i == 0 or std == 0:
        return out
    return out + (s_p * std) * noise


def ddim_grid_std(grid, i: int, eta: float) -> float:
    """std of DDIM's step i in units of x_0 (the iterate's noise is s_{i-1} std): eta sigma_{i-1}
    sqrt(1 - sigma_{i-1}^2 / sigma_i^2)."""
    sig, sig_p = grid.sigma(i), grid.sigma(i - 1)
    return eta * sig_p * max(1.0 - (sig_p / sig) ** 2, 0.0) ** 0.5
