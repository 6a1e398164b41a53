"""Priors conditioned on the noise level itself: variance-exploding (VE) and EDM-preconditioned networks, and
the analytic priors in every form.

Each gives the denoiser contract D(x; sigma) = E[x_0 | x], x = x_0 + sigma n (:mod:`dps.diffusion.denoiser`):

- :class:`VEPrior`: a score network s(x, sigma) ~ grad_x log p_sigma(x), conditioned on sigma (score-SDE's
  NCSN++; a diffusers ``UNet2DModel`` with Fourier time embedding divides its output by sigma, which makes it
  this score). Tweedie's formula in VE form: D(x; sigma) = x + sigma^2 s(x, sigma).
- :class:`EDMPrior`: a network F with EDM's preconditioning (Karras et al. 2022, Table 1),
  D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with c_skip = sigma_d^2 / (sigma^2 + sigma_d^2),
  c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2) (negated for a v-predicting network, diffusers'
  ``prediction_type="v_prediction"``), c_in = 1 / sqrt(sigma^2 + sigma_d^2), c_noise = ln(sigma) / 4.
- :func:`in_form`: an analytic prior (Gaussian, Gaussian mixture) as a VE score network or an EDM network F,
  computed from its closed-form denoiser, so the exact-posterior benchmark runs every form through the same
  adapters as the networks.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..errors import DPSError
from .denoiser import DenoiserOutput, NetworkPrior, bcast

__all__ = ["SigmaPrior", "VEPrior", "EDMPrior", "edm_coefficients", "in_form", "FORMS", "FORM_RANGES"]

#: the forms of a prior (``Prior.form``) and what each network is conditioned on.
FORMS = ("vp", "ve", "edm")
#: the noise range an analytic prior takes in each non-VP form: score-SDE's sigma_min with sigma_max above the
#: spread of the benchmark's data; EDM's published range.
FORM_RANGES = {"ve": (0.01, 100.0), "edm": (0.002, 80.0)}


class SigmaPrior(NetworkPrior):
    """A network prior conditioned on sigma: ``forward(x, sigma) -> DenoiserOutput`` is the sigma contract.

    :param network: the module (its call signature is the subclass's).
    :param sigma_min, sigma_max: the noise levels it was trained on (a grid is clamped to them).
    :param data_range: the range of its images (mapped to [0, 1] data); None: it works in data space.
    :param event_shape: the shape of one sample.
    """

    form = "sigma"

    def __init__(self, network: nn.Module, sigma_min: float, sigma_max: float,
                 data_range: Optional[tuple[float, float]] = (-1.0, 1.0),
                 event_shape: Optional[tuple[int, ...]] = None) -> None:
        super().__init__(network, None, "epsilon", False, data_range, event_shape)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if event_shape is None:
            raise ValueError(f"{type(self).__name__} needs event_shape, the shape of one sample, e.g. (3, 256, 256)")
        self.event_shape = tuple(event_shape)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sigma_range(self) -> tuple[float, float]:
        return self.sigma_min, self.sigma_max

    def training_sigmas(self) -> torch.Tensor:
        raise DPSError(f"a {self.form.upper()} model has no VP timesteps; use a method that takes a grid "
                       "(`dps methods`)")

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> DenoiserOutput:
        return self(x, sigma)

    def x0_of(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> DenoiserOutput:
        """D(x; sigma) for x (B, *event_shape), sigma (B,); eps_hat = (x - x0_hat) / sigma."""
        sigma = sigma.double().to(x.device)
        x0 = self.x0_of(x, sigma)
        return DenoiserOutput(eps=(x - x0) / bcast(sigma, x), x0=x0)


class VEPrior(SigmaPrior):
    """A VE score network ``network(x, sigma)`` (module docstring): D(x; sigma) = x + sigma^2 s(x, sigma).
    Its images are in [0, 1] by default (``data_range``), as score-SDE's VE models have them."""

    form = "ve"

    def __init__(self, network: nn.Module, sigma_min: float, sigma_max: float,
                 data_range: Optional[tuple[float, float]] = (0.0, 1.0),
                 event_shape: Optional[tuple[int, ...]] = None) -> None:
        super().__init__(network, sigma_min, sigma_max, data_range, event_shape)

    def x0_of(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        score = self._net(x, sigma.to(x.dtype))
        return x + bcast(sigma ** 2, x) * score


def edm_coefficients(sigma: torch.Tensor, sigma_data: float, prediction: str = "epsilon"):
    """EDM's preconditioning (Karras et al. 2022, Table 1) for sigma (B,): (c_skip, c_out, c_in, c_noise),
    float64 (B,); c_out is negated for a v-predicting network."""
    d2 = sigma ** 2 + sigma_data ** 2
    c_out = sigma * sigma_data / d2.sqrt()
    return sigma_data ** 2 / d2, -c_out if prediction == "v" else c_out, d2.rsqrt(), sigma.log() / 4


class EDMPrior(SigmaPrior):
    """An EDM-preconditioned network ``network(c_in x, c_noise) -> F`` (module docstring).

    :param sigma_data: sigma_d, the data's standard deviation the preconditioning assumes (EDM: 0.5).
    :param prediction: ``"epsilon"`` (EDM's F) or ``"v"`` (diffusers' v_prediction: c_out negated).
    Defaults: EDM's sigma range 0.002 to 80.
    """

    form = "edm"

    def __init__(self, network: nn.Module, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 sigma_data: float = 0.5, prediction: str = "epsilon",
                 data_range: Optional[tuple[float, float]] = (-1.0, 1.0),
                 event_shape: Optional[tuple[int, ...]] = None) -> None:
        super().__init__(network, sigma_min, sigma_max, data_range, event_shape)
        if prediction not in ("epsilon", "v"):
            raise ValueError(f"an EDM network predicts 'epsilon' or 'v', got {prediction!r}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_data, self.edm_prediction = float(sigma_data), prediction

    def x0_of(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data, self.edm_prediction)
        F = self._net(bcast(c_in, x) * x, c_noise.to(x.dtype))
        return bcast(c_skip, x) * x + bcast(c_out, x) * F


class _AnalyticScore(nn.Module):
    """An analytic prior's exact score in VE form, s(x, sigma) = (D(x; sigma) - x) / sigma^2."""

    def __init__(self, prior) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.double()
        return self.prior.score_sigma(x, s)


class _AnalyticEDM(nn.Module):
    """An analytic prior's exact EDM network: F = (D(x; sigma) - c_skip x) / c_out at x = input / c_in and
    sigma = exp(4 c_noise) (the training target of EDM's loss, exactly)."""

    def __init__(self, prior, sigma_data: float) -> None:
        super().__init__()
        self.prior, self.sigma_data = prior, sigma_data

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        sigma = (4 * c_noise.double()).exp()
        c_skip, c_out, c_in, _ = edm_coefficients(sigma, self.sigma_data)
        x = x_in / bcast(c_in, x_in)
        return (self.prior.exact_denoise(x, sigma) - bcast(c_skip, x) * x) / bcast(c_out, x)


def in_form(prior, form: str):
    """An analytic prior (with ``exact_denoise``/``score_sigma``) in ``form``: itself for ``"vp"``, a
    :class:`VEPrior` over its exact score or an :class:`EDMPrior` over its exact F (sigma_d = the data's
    standard deviation) for ``"ve"``/``"edm"``, with the ranges :data:`FORM_RANGES`. The wrapper keeps the
    analytic prior's data variance, radius, sampling and posterior (``wrapper.analytic``)."""
    if form not in FORMS:
        raise DPSError(f"unknown parameterization {form!r}; choose one of {', '.join(FORMS)}")
    if form == "vp":
        return prior
    lo, hi = FORM_RANGES[form]
    if form == "ve":
        wrapped = VEPrior(_AnalyticScore(prior), lo, hi, data_range=None, event_shape=prior.event_shape)
    else:
        wrapped = EDMPrior(_AnalyticEDM(prior, math.sqrt(prior.data_variance)), lo, hi,
                           sigma_data=math.sqrt(prior.data_variance), data_range=None, event_shape=prior.event_shape)
    wrapped.data_variance = prior.data_variance
    wrapped.model_radius = prior.model_radius
    wrapped.analytic = prior
    return wrapped
