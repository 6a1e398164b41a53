"""PSLD: posterior sampling with latent diffusion (Rout, Raoof, Daras, Caramanis, Dimakis, Shakkottai, NeurIPS 2023).

Latent DPS plus a "gluing" term that keeps the decoded estimate a fixed point of E(D(.)) on the measured part.
At each DDIM step i (eta 0) of the latent model's VP grid, with z0_hat = D_z(z_i; sigma_i), x_hat = to_data(D(z0_hat)),

    x_glue = x_hat + A^+ (y - A x_hat)                       (= A^+ y + (I - A^+ A) x_hat)
    L(z_i) = omega ||y - A x_hat||_2 + gamma ||E(from_data(x_glue)) - z0_hat||_2
    z_{i-1} = DDIM(z_i, z0_hat) - grad_{z_i} L,

one gradient through the latent network, the decoder and the encoder (norms, not squared, per sample).

Conventions and where they differ from the authors' code (LituRout/PSLD, ``psld.py``):

- the gluing projection uses the pseudo-inverse A^+ (:meth:`~dps.operators.base.LinearOperator.damped_pinv`,
  damped by sigma_y^2 where it is not exact); the code uses A's "transpose", which is A^+ for inpainting masks and
  for super-resolution (nearest upsampling of a box average) but the identity for blur;
- residuals are in data units ([0, 1] images), the code's in [-1, 1]: omega = 2 here is the code's omega = 1;
- the code adds fresh measurement noise to A x_hat inside the loss and sums the norms over the batch; here the
  residual is y - A x_hat and each sample has its own loss (samples are independent).

Defaults (:class:`PSLDSettings`): 1000 DDIM steps as in the code; omega 0.3 (data units) and gamma 0.03, the best
of omega 0.1-0.3 x gamma 0.03-0.3 on four training digits and four tasks with the embedded latent model at 100
evaluations (``benchmarks/latent/``); the code's Stable Diffusion weights, omega 1 (2 in data units) and gamma 0.1
(``scripts/inverse.py``; its LDM scripts use omega 0.1 to 0.9), diverged there. Both weights are per step of a
1000-step run: at N steps (``--nfe N``) they are multiplied by sqrt(1000 / N), as DPS's zeta' is, but never by more
than at the 100 steps they were tuned at, sqrt(1000 / max(N, 100)): below 100 steps the larger weights of the sqrt rule
diverge on training digits (``benchmarks/latent/tuning.md``; ours, the code runs 1000 steps only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..diffusion.grid import GridSpec, denoise_on
from ..diffusion.latent import LatentPrior
from ..diffusion.steps import ddim_grid_step, randn
from ..diffusion.schedule import check_spacing
from ..errors import check_float, check_int
from ..noise import NoiseModel
from .dps import DivergenceGuard, frozen_parameters, step_factor
from .latent import decoded, decoding_callback

__all__ = ["psld", "PSLDSettings"]


@dataclass(frozen=True)
class PSLDSettings:
    """:param steps: DDIM steps (the latent model's schedule respaced); :param omega: the measurement weight (data
    units); :param gamma: the gluing weight (latent units); :param eta: DDIM's eta; :param spacing: the respacing;
    :param reference_steps: the step count omega and gamma are given for (None: ``steps``); at N steps both are
    multiplied by sqrt(reference_steps / N), DPS's rule for zeta' (:func:`~dps.solvers.dps.at_steps`), of which
    PSLD's measurement term is an instance; :param tuned_steps: the step count the weights were tuned at, below
    which they stay those of ``tuned_steps`` steps (:func:`~dps.solvers.dps.step_factor`)."""

    steps: int = 1000
    omega: float = 0.3
    gamma: float = 0.03
    eta: float = 0.0
    spacing: str = "even"
    reference_steps: Optional[int] = None
    tuned_steps: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", check_int(self.steps, "psld steps", 1, 100_000))
        object.__setattr__(self, "omega", check_float(self.omega, "psld omega", 0.0))
        object.__setattr__(self, "gamma", check_float(self.gamma, "psld gamma", 0.0))
        object.__setattr__(self, "eta", check_float(self.eta, "psld eta", 0.0, 1.0))
        check_spacing(self.spacing)
        if self.reference_steps is not None:
            object.__setattr__(self, "reference_steps", check_int(self.reference_steps, "psld reference_steps", 1))
        object.__setattr__(self, "tuned_steps", check_int(self.tuned_steps, "psld tuned_steps", 1))

    @property
    def step_scale(self) -> float:
        """sqrt(reference_steps / max(steps, tuned_steps)): the factor of omega and gamma at this step count."""
        return step_factor(self.reference_steps, self.steps, self.tuned_steps)


def psld(prior: LatentPrior, op, y: torch.Tensor, noise: NoiseModel, generators, settings: PSLDSettings = PSLDSettings(),
         callback=None) -> torch.Tensor:
    """PSLD (module docstring): x (B, *event_shape) in data space."""
    latent = prior.latent
    grid = GridSpec().build(latent, settings.steps, settings.spacing, who="psld")  # the model's own (VP) steps
    B = y.shape[0]
    delta = float(noise.typical_sigma) ** 2
    z = randn((B, *prior.latent_shape), generators, y.device, y.dtype) * grid.start_std()
    guard = DivergenceGuard(latent)
    on_step = decoding_callback(prior, callback)
    with frozen_parameters(prior), torch.enable_grad():
        for i in reversed(range(len(grid))):
            z = z.detach().requires_grad_(True)
            z0 = denoise_on(latent, z, grid, i).x0
            x_hat = prior.to_data(prior.decode(z0))
            r = y - op(x_hat)
            x_glue = x_hat + op.damped_pinv(r, delta)
            glue = (prior.encode(prior.from_data(x_glue)) - z0).flatten(1).norm(dim=1)
            loss = settings.step_scale * (settings.omega * r.flatten(1).norm(dim=1) + settings.gamma * glue).sum()
            (grad,) = torch.autograd.grad(loss, z)
            with torch.no_grad():
                n = randn(z.shape, generators, z.device, z.dtype) if i > 0 else torch.zeros_like(z)
                z_prev = ddim_grid_step(z.detach(), z0.detach(), grid, i, n, settings.eta) - grad
            guard.check(z_prev, i, grid.where(i), f"PSLD's weights omega={settings.omega}, gamma={settings.gamma} "
                        "are too large for this problem: lower them", grid.level_std(i - 1))
            if on_step is not None:
                on_step({"i": i, "t": grid.timestep(i), "sigma": grid.sigma(i), "x": z_prev.clone(),
                         "x0": z0.detach().clone()})
            z = z_prev
    return decoded(prior, z.detach())

