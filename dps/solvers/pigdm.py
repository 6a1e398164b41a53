"""Pi-GDM: pseudoinverse-guided diffusion (Song, Vahdat, Mardani, Kautz, ICLR 2023), noisy linear problems.

Pi-GDM approximates p(x_0 | x_t) by N(x0_hat, r_t^2 I), which makes p(y | x_t) Gaussian for a linear A:

    p(y | x_t) ~= N(y; A x0_hat, r_t^2 A A^T + sigma_y^2 I),    r_t^2 = 1 - abar_t   (unit-variance data),

so its score is one vector-Jacobian product through the network (J = d x0_hat / d x_t):

    g = grad_{x_t} log p(y | x_t) = J^T A^T (r_t^2 A A^T + sigma_y^2 I)^-1 (y - A x0_hat).        (Pi-GDM Eq. 7-8)

The inverse is :meth:`~dps.operators.LinearOperator.gram_solve` (conjugate gradients in measurement
space, a few iterations for masks; sigma_y -> 0 gives the pseudo-inverse that names the method). The guided
step is DDIM (eta) with the conditional score in place of the unconditional one, i.e. with the
conditional Tweedie mean

    x0_tilde = x0_hat + (1 - abar_t) / sqrt(abar_t) g,       eps_tilde = eps_hat - sqrt(1 - abar_t) g.

On any noise-level grid (:mod:`dps.diffusion.grid`, iterate x = s (x_0 + sigma n)) the same reads
x0_tilde = x0_hat + sigma^2 s g with g the gradient to the iterate (Cov[x_0 | x] = sigma^2 s J), and
r_t^2 = sigma^2 / (1 + sigma^2), 1 - abar_t of the VP-equivalent process; the step is DDIM's on the grid.

Where we differ from the paper: its Algorithm 1 adds sqrt(abar_t) g to the DDIM update; we use the
conditional-score form above, which for data of unit variance under a Gaussian prior is the exact
posterior sampler (tested on the analytic prior) and has no extra weight to tune. Units: the measurement
and sigma_y are in data units, so r_t^2 is scaled by data_scale^2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diffusion.denoiser import Prior
from ..diffusion.grid import Grid, GridSpec, denoise_on
from ..diffusion.steps import ddim_grid_step, randn
from ..errors import check_float, check_int
from ..noise import NoiseModel, floored_variance
from ..operators import LinearOperator
from .dps import DivergenceGuard, frozen_parameters

__all__ = ["pigdm", "pigdm_score", "pigdm_likelihood", "PiGDMSettings"]


@dataclass(frozen=True)
class PiGDMSettings:
    """Pi-GDM's settings: ``steps`` DDIM steps (one forward and one VJP each) with DDIM's ``eta``, on ``grid``
    (default: the model's own)."""

    steps: int = 100
    eta: float = 1.0
    grid: GridSpec = GridSpec()

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", check_int(self.steps, "pigdm steps", 1, 100_000))
        object.__setattr__(self, "eta", check_float(self.eta, "pigdm eta", 0.0, 1.0))


def pigdm_score(prior: Prior, op: LinearOperator, y: torch.Tensor, x: torch.Tensor, grid: Grid, i: int,
                sigma_y2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, g): the Tweedie estimate (model space, detached) and g = grad_x log p(y | x) of Pi-GDM
    (shape of x), from one network forward and one VJP; x (B, *event_shape) is the iterate at step i of grid."""
    x0, g, _ = pigdm_likelihood(prior, op, y, x, grid, i, sigma_y2)
    return x0, g


def pigdm_likelihood(prior: Prior, op: LinearOperator, y: torch.Tensor, x: torch.Tensor, grid: Grid, i: int,
                     sigma_y2: float, r2_model: float | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0_hat, g, log p~): as :func:`pigdm_score`, plus log p~(y | x) = -(y - A x0_hat)^T (r_t^2 A A^T +
    sigma_y^2 I)^-1 (y - A x0_hat) / 2 per sample (B,), up to a constant that is the same for every x at step i.
    ``r2_model``: r_t^2 in model space (default Pi-GDM's 1 - abar_t, VP-equivalent)."""
    x = x.detach().requires_grad_(True)
    x0 = denoise_on(prior, x, grid, i).x0
    Ax0 = op(prior.to_data(x0))
    abar = float(grid.alphas_cumprod[i])
    r2 = prior.data_scale ** 2 * (1.0 - abar if r2_model is None else r2_model)  # r_t^2 in data units
    r = (y - Ax0).detach()
    v = op.gram_solve(r, r2, sigma_y2)  # (r_t^2 A A^T + sigma_y^2 I)^-1 (y - A x0_hat)
    (g,) = torch.autograd.grad((v * Ax0).sum(), x)  # J^T A^T v (the data map's scale is inside Ax0)
    return x0.detach(), g, -0.5 * (r * v).flatten(1).sum(1)


def pigdm(prior: Prior, op: LinearOperator, y: torch.Tensor, noise: NoiseModel, generators,
          settings: PiGDMSettings = PiGDMSettings(), callback=None) -> torch.Tensor:
    """Pi-GDM sampling with ``steps`` DDIM steps (one forward and one VJP each); returns x (B, *event_shape)
    in data space. sigma_y is the noise model's typical sigma (at least 1e-3, so that the Gram matrix of a
    noiseless problem stays invertible)."""
    eta = settings.eta
    grid = settings.grid.build(prior, settings.steps)
    sigma_y2 = floored_variance(noise)
    B = y.shape[0]
    x = randn((B, *prior.event_shape), generators, y.device, y.dtype) * grid.start_std()
    guard = DivergenceGuard(prior)
    with frozen_parameters(prior), torch.enable_grad():
        for i in reversed(range(len(grid))):
            x0, g = pigdm_score(prior, op, y, x, grid, i, sigma_y2)
            with torch.no_grad():
                x0_tilde = prior.clip_x0(x0 + grid.sigma(i) ** 2 * grid.scale(i) * g)
                z = randn(x.shape, generators, x.device, x.dtype) if i > 0 else torch.zeros_like(x)
                x = ddim_grid_step(x.detach(), x0_tilde, grid, i, z, eta)
            guard.check(x, i, grid.where(i), "Pi-GDM's guidance is unstable for this problem", grid.level_std(i - 1))
            if callback is not None:
                callback({"i": i, "t": grid.timestep(i), "sigma": grid.sigma(i), "x": x.clone(),
                          "x0": x0_tilde.clone()})
    return prior.clip_data(prior.to_data(x))
