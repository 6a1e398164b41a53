"""Latent DAPS: DAPS (Zhang et al. 2024, :mod:`dps.solvers.daps`) on the latents of a latent diffusion model.

The annealing, the probability-flow estimate z0_hat and the fresh noise act on latents; the Langevin step samples
p(z_0 | z_t, y) ∝ exp(-||y - A(to_data(D(z_0)))||^2 / (2 tau^2) - ||z_0 - z0_hat||^2 / (2 r_t^2)) in latent space,
its data gradient through the decoder (:class:`~dps.solvers.latent.DecodedOperator`, a nonlinear operator for
DAPS, so its curvature bound is re-estimated at each level by power iteration through the decoder's Jacobian).

Defaults (:class:`LatentDAPSSettings`): the authors' latent configurations (``configs/sampler/latent_edm_daps.yaml``):
50 annealing levels on EDM's grid from sigma 10 down to 0.1 and 2 ODE steps per level; the likelihood's tau 0.005
in data units, their 0.01 on [-1, 1] images.
Their latent MCMC is Hamiltonian with per-task step sizes; ours is :mod:`dps.solvers.daps`'s Langevin step with its
curvature-relative step size (lr 0.5, 50 steps per level).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..diffusion.grid import GridSpec
from ..diffusion.latent import LatentPrior
from ..noise import NoiseModel
from .daps import DAPSSettings, daps
from .dps import frozen_parameters
from .latent import DecodedOperator, decoded, decoding_callback

__all__ = ["latent_daps", "LatentDAPSSettings"]


@dataclass(frozen=True)
class LatentDAPSSettings(DAPSSettings):
    """DAPS's settings (:class:`~dps.solvers.daps.DAPSSettings`) with the latent defaults (module docstring)."""

    levels: int = 50
    ode_steps: int = 2
    langevin_steps: int = 50
    tau: Optional[float] = 0.005
    grid: GridSpec = GridSpec("edm", sigma_min=0.1, sigma_max=10.0)


def latent_daps(prior: LatentPrior, op, y, noise: NoiseModel, generators,
                settings: LatentDAPSSettings = LatentDAPSSettings(), callback=None):
    """Latent DAPS (module docstring): x (B, *event_shape) in data space."""
    with frozen_parameters(prior):
        z = daps(prior.latent, DecodedOperator(op, prior), y, noise, generators, settings,
                 callback=decoding_callback(prior, callback))
    return decoded(prior, z)
