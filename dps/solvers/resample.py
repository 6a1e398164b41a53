"""ReSample: hard data consistency in latent diffusion (Song, Kwon, Zhang, Hu, Qu, Shen, ICLR 2024).

DDIM (eta 0) on the latent model's VP grid with a latent-DPS step at every step; at every ``every``-th step in
the middle of the run, hard data consistency by optimisation, then stochastic resampling back to the step's noise
level. With abar_i = s_i^2 the grid's VP coefficients and z0_hat = D_z(z_i; sigma_i):

1. z' = DDIM(z_i, z0_hat) - kappa abar_i grad_{z_i} ||y - A(to_data(D(z0_hat)))||_2        (every step)
2. at steps i with i % every == 0 and 0 < i <= N - floor(N / 3) (N the steps):
   - z0 = the latent of z' after ``inter_steps`` unconditional probability-flow steps to sigma ~ 0;
   - z0_y = argmin ||y - A(x)||^2 by AdamW (weight decay 0.01, the authors' optimiser):
     in pixel space (x from D(z0), then z0_y = E(x); ``pixel_lr``, ``pixel_iters``) while i >= N / 3,
     in latent space (x = D(z); ``latent_lr``, ``latent_iters``, stopped when the loss has not fallen over the
     last 200 iterations) after; each sample stops when its mean squared residual falls to sigma_y^2;
   - resampling: z_{i-1} ~ N((s2 sqrt(a') z0_y + (1 - a') z') / (s2 + 1 - a'), s2 (1 - a') / (s2 + 1 - a') I),
     a' = abar_{i-1}, s2 = gamma (1 - a') / (1 - abar_i) (1 - abar_i / a');
3. otherwise z_{i-1} = z'; after the last step, one more latent optimisation from the result.

A budget of N network evaluations (``--nfe``) buys the most steps whose evaluations, one per step and
``inter_steps`` per consistency step, fit in N (:meth:`ReSampleSettings.steps_for`); below 15 steps no step has
hard data consistency (``every`` stays 10) and ReSample is latent DPS with a final latent fit.

Defaults (:class:`ReSampleSettings`) from the authors' code (soominkwon/resample, ``ldm/models/diffusion/ddim.py``):
500 steps, every 10, gamma 40, 5 intermediate steps, AdamW lr 1e-2 / 2000 iterations in pixel space and 5e-3 / 500
in latent space, kappa 0.5 (on a [-1, 1] residual; 1 here on a data-unit residual, the same step).
Where this differs from the code: z0_hat is Tweedie's estimate (the code's DPS step uses
(z - (1 - abar) eps) / sqrt(abar)); optimisation stops at the noise level sigma_y^2 instead of the code's fixed
1e-6 (its comments ask for a noise-dependent threshold); each sample has its own residual norm and loss (the code
one norm over the batch), so samples are independent; the start of the optimisation is the probability-flow
ODE's estimate on an EDM sub-grid from the step's level (the code: 5 DDIM steps on its timesteps); the encoder is
the mean of a VAE's posterior (the code samples it); and the latent scaling factor is applied on encoding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..diffusion.grid import GridSpec, denoise_on
from ..diffusion.latent import LatentPrior
from ..diffusion.steps import ddim_grid_step, randn
from ..diffusion.schedule import check_spacing
from ..errors import check_float, check_int
from ..noise import NoiseModel
from .daps import pf_ode_x0
from .dps import DivergenceGuard, frozen_parameters
from .latent import decoded, decoding_callback

__all__ = ["resample", "ReSampleSettings", "hard_consistency"]


@dataclass(frozen=True)
class ReSampleSettings:
    """ReSample's settings (module docstring)."""

    steps: int = 500
    every: int = 10
    gamma: float = 40.0
    kappa: float = 1.0
    inter_steps: int = 5
    pixel_lr: float = 1e-2
    pixel_iters: int = 2000
    latent_lr: float = 5e-3
    latent_iters: int = 500
    spacing: str = "even"

    def consistency_steps(self, steps: Optional[int] = None) -> list[int]:
        """The steps i (counting down from N - 1) with hard data consistency: i % every == 0, 0 < i <= N - N // 3."""
        n = self.steps if steps is None else steps
        return [i for i in range(n - 1, 0, -1) if i % self.every == 0 and i <= n - n // 3]

    def evaluations(self, steps: Optional[int] = None) -> int:
        """Network evaluations per sample at ``steps`` steps: one per step and ``inter_steps`` per consistency step."""
        return (self.steps if steps is None else steps) + self.inter_steps * len(self.consistency_steps(steps))

    def steps_for(self, nfe: int) -> int:
        """The most steps whose evaluations fit in ``nfe`` (at least 1): ReSample's budget rule."""
        return max([n for n in range(1, nfe + 1) if self.evaluations(n) <= nfe] or [1])

    def __post_init__(self) -> None:
        for name, lo in (("steps", 1), ("every", 1), ("inter_steps", 1), ("pixel_iters", 0), ("latent_iters", 0)):
            object.__setattr__(self, name, check_int(getattr(self, name), f"resample {name}", lo))
        for name in ("gamma", "pixel_lr", "latent_lr"):
            object.__setattr__(self, name, check_float(getattr(self, name), f"resample {name}", 0.0, lo_open=True))
        object.__setattr__(self, "kappa", check_float(self.kappa, "resample kappa", 0.0))
        check_spacing(self.spacing)


def hard_consistency(start: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor], lr: float, iters: int,
                     target: torch.Tensor, patience: int = 0) -> torch.Tensor:
    """argmin over v of loss_of(v) (B,) from ``start`` (B, ...) by AdamW (weight decay 0.01) on the sum of the
    per-sample losses (each sample's steps depend on its own loss only). A sample is kept as it is when its loss
    first falls to ``target`` (B,), or with ``patience`` > 0 when it is no lower than ``patience`` iterations
    before; the rest go on for at most ``iters`` iterations. Returns the kept values (detached)."""
    v = start.detach().clone().requires_grad_(True)
    out = start.detach().clone()
    active = torch.ones(start.shape[0], dtype=torch.bool, device=start.device)
    history: list[torch.Tensor] = []
    opt = torch.optim.AdamW([v], lr=lr, weight_decay=0.01)
    for k in range(iters):
        with torch.enable_grad():
            loss = loss_of(v)
        with torch.no_grad():
            out[active] = v.detach()[active]
            stalled = history[-patience] <= loss if patience and len(history) >= patience else torch.zeros_like(active)
            active &= ~((loss <= target) | stalled)
            history.append(loss.detach())
        if not bool(active.any()):
            return out
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        out[active] = v.detach()[active]
    return out


def resample(prior: LatentPrior, op, y: torch.Tensor, noise: NoiseModel, generators,
             settings: ReSampleSettings = ReSampleSettings(), callback=None) -> torch.Tensor:
    """ReSample (module docstring): x (B, *event_shape) in data space."""
    latent, s = prior.latent, settings
    grid = GridSpec().build(latent, s.steps, s.spacing, who="resample")  # the model's own (VP) steps
    N, B = len(grid), y.shape[0]
    consistency = set(s.consistency_steps(N))
    target = torch.full((B,), float(noise.typical_sigma) ** 2, dtype=y.dtype, device=y.device)

    def mse(x_data: torch.Tensor) -> torch.Tensor:
        return (y - op(x_data)).flatten(1).pow(2).mean(1)

    def latent_fit(z0: torch.Tensor) -> torch.Tensor:
        return hard_consistency(z0, lambda z: mse(prior.to_data(prior.decode(z))), s.latent_lr, s.latent_iters,
                                target, patience=200)

    z = randn((B, *prior.latent_shape), generators, y.device, y.dtype) * grid.start_std()
    guard = DivergenceGuard(latent)
    on_step = decoding_callback(prior, callback)
    with frozen_parameters(prior):
        for i in reversed(range(len(grid))):
            with torch.enable_grad():
                zi = z.detach().requires_grad_(True)
                z0 = denoise_on(latent, zi, grid, i).x0
                r = (y - op(prior.to_data(prior.decode(z0)))).flatten(1).norm(dim=1).sum()
                (grad,) = torch.autograd.grad(r, zi)
            with torch.no_grad():
                n = torch.zeros_like(z)
                z_p = ddim_grid_step(z, z0.detach(), grid, i, n, 0.0) - s.kappa * grid.scale(i) ** 2 * grad
            if i in consistency:
                z0_start = pf_ode_x0(latent, z_p / grid.scale(i - 1), grid.sigma(i - 1), s.inter_steps, clip=False)
                if i >= N // 3:
                    with torch.no_grad():
                        x0 = prior.decode(z0_start)
                    x_y = hard_consistency(x0, lambda x: mse(prior.to_data(x)), s.pixel_lr, s.pixel_iters, target)
                    with torch.no_grad():
                        z0_y = prior.encode(x_y)
                else:
                    z0_y = latent_fit(z0_start)
                z_p = _stochastic_resample(z_p, z0_y, grid, i, s.gamma, generators)
            guard.check(z_p, i, grid.where(i), f"ReSample is unstable with these settings (kappa {s.kappa}, gamma "
                        f"{s.gamma}): lower kappa", grid.level_std(i - 1))
            if on_step is not None:
                on_step({"i": i, "t": grid.timestep(i), "sigma": grid.sigma(i), "x": z_p.clone(), "x0": z0.detach()})
            z = z_p
        z = latent_fit(z) if s.latent_iters else z
    return decoded(prior, z)


def _stochastic_resample(z_p: torch.Tensor, z0_y: torch.Tensor, grid, i: int, gamma: float, generators) -> torch.Tensor:
    """ReSample's stochastic resampling (module docstring, step 2) to level i - 1."""
    a, a_p = grid.scale(i) ** 2, grid.scale(i - 1) ** 2
    s2 = gamma * (1 - a_p) / (1 - a) * (1 - a / a_p)
    mean = (s2 * a_p ** 0.5 * z0_y + (1 - a_p) * z_p) / (s2 + 1 - a_p)
    std = (s2 * (1 - a_p) / (s2 + 1 - a_p)) ** 0.5
    return mean + std * randn(z_p.shape, generators, z_p.device, z_p.dtype)
