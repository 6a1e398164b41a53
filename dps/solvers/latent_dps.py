"""Latent DPS: DPS (Chung et al., ICLR 2023, Algorithm 1) on the latents of a latent diffusion model, with the
data fit's gradient taken through the decoder (the baseline of PSLD, Rout et al. 2023, and ReSample, Song et al.
2024).

At each step i of the latent model's grid, with z0_hat = D_z(z_i; sigma_i) the latent denoiser's estimate,

    z_{i-1} = step(z_i, z0_hat) - zeta_i grad_{z_i} ||y - A(to_data(D(z0_hat)))||^2,

step DPS's ancestral (or DDIM) step on the latents and zeta_i DPS's step rule (:mod:`dps.solvers.dps`): it is
:func:`~dps.solvers.dps.dps_sample` on the latent prior with the operator A_z = A o to_data o D
(:class:`~dps.solvers.latent.DecodedOperator`). The result is the decoded last estimate.

Defaults (:class:`LatentDPSSettings`): DPS's settings with 1000 steps, rule "paper" and zeta' = 0.15 (data units,
given for 1000 steps and scaled by sqrt(1000 / N) at N steps as DPS's is, but never by more than at the 100 steps it
was tuned at: sqrt(1000 / max(N, 100)), since below 100 steps the sqrt rule's larger steps diverge on training digits),
the best of 0.01-1 on four training digits and four tasks with the embedded latent model at 100 evaluations
(``benchmarks/latent/``). PSLD's code
uses the equivalent of zeta' = 1 for Stable Diffusion (its measurement weight omega = 1 on the norm of a [-1, 1]
residual: rule "paper"'s step zeta' grad ||r||^2 / ||r|| = 2 zeta' grad ||r||, and a data-unit residual is half a
[-1, 1] one), which diverged on the digits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..diffusion.latent import LatentPrior
from ..noise import NoiseModel
from ..errors import check_int
from .dps import DPSConfig, dps_sample, frozen_parameters
from .latent import DecodedOperator, decoded, decoding_callback

__all__ = ["latent_dps", "LatentDPSSettings"]

@dataclass(frozen=True)
class LatentDPSSettings(DPSConfig):
    """DPS's settings (:class:`~dps.solvers.dps.DPSConfig`) with latent DPS's defaults (module docstring); a task's
    ``dps`` block (tuned for pixel models) is not used."""

    zeta: float = 0.15
    #: the step count zeta' was tuned at; below it the per-step weight stays that of ``tuned_steps`` steps
    #: (:func:`~dps.solvers.dps.step_factor`: the tuned weight sits close to where a step diverges); None: DPS's
    #: rule unchanged.
    tuned_steps: Optional[int] = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tuned_steps is not None:
            object.__setattr__(self, "tuned_steps", check_int(self.tuned_steps, "latent_dps tuned_steps", 1))


def latent_dps(prior: LatentPrior, op, y, noise: NoiseModel, generators,
               settings: LatentDPSSettings = LatentDPSSettings(), callback=None):
    """Latent DPS (module docstring): x (B, *event_shape) in data space."""
    A_z = DecodedOperator(op, prior)
    advice = (f"latent DPS's step size zeta'={settings.zeta} is too large for this problem: lower it with --step-size "
              "(LatentDPSSettings(zeta=...) in Python)")
    with frozen_parameters(prior):
        res = dps_sample(prior.latent, A_z, y, noise, settings, generator=generators,
                         callback=decoding_callback(prior, callback), advice=advice)
    return decoded(prior, res.x[:, 0])
