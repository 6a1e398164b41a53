"""DDRM: Denoising Diffusion Restoration Models (Kawar, Elad, Ermon, Song, NeurIPS 2022).

DDRM works in the spectral space of A = U S V^T: with x_bar = V^T x (in the variance-exploding scale
x_VE = x_VP / sqrt(abar), sigma_t^2 = (1 - abar_t) / abar_t) and y_bar = S^+ U^T y, every component i is
updated from step t to t-1 given x0_hat = D(x_t) (Kawar et al. 2022, Eq. 7-8):

* s_i = 0 (not observed):   x_bar_i <- x0_i + sqrt(1 - eta^2) sigma_{t-1} (x_bar_i - x0_i) / sigma_t + eta sigma_{t-1} z
* sigma_{t-1} < sigma_y / s_i:   x_bar_i <- x0_i + sqrt(1 - eta^2) sigma_{t-1} (y_bar_i - x0_i) / (sigma_y / s_i)
                                               + eta sigma_{t-1} z
* sigma_{t-1} >= sigma_y / s_i:  x_bar_i <- (1 - eta_b) x0_i + eta_b y_bar_i
                                               + sqrt(sigma_{t-1}^2 - (sigma_y / s_i)^2 eta_b^2) z

(z ~ N(0, I) fresh), with the defaults of the paper's comparison: 20 steps, eta = 0.85, eta_b = 1.

It applies to operators that declare an SVD form (:meth:`~dps.operators.LinearOperator.spectral`:
inpainting, super-resolution, separable blur, dense matrices; not motion blur, as in the paper's table)
with Gaussian noise. Measurements are converted to the prior's space: for data = a x + b,
y_model = (y - A b) / a with noise sigma_y / a.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..diffusion.denoiser import Prior
from ..diffusion.schedule import respace
from ..diffusion.steps import randn
from ..errors import check_float, check_int
from ..noise import NoiseModel
from ..operators import LinearOperator

__all__ = ["ddrm", "DDRMSettings"]


@dataclass(frozen=True)
class DDRMSettings:
    """DDRM's settings; the defaults are those of the DPS paper's comparison (Kawar et al.'s eta, eta_b).

    :param steps: reverse steps (network forwards), the training schedule respaced to them.
    :param eta: eta of Eq. 7-8 (the weight of fresh noise against the DDIM direction).
    :param eta_b: eta_b, the weight of the measurement where it is more certain than the iterate.
    """

    steps: int = 20
    eta: float = 0.85
    eta_b: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", check_int(self.steps, "ddrm steps", 1, 100_000))
        object.__setattr__(self, "eta", check_float(self.eta, "ddrm eta", 0.0, 1.0))
        object.__setattr__(self, "eta_b", check_float(self.eta_b, "ddrm eta_b", 0.0, 1.0))


@torch.no_grad()
def ddrm(prior: Prior, op: LinearOperator, y: torch.Tensor, noise: NoiseModel, generators,
         settings: DDRMSettings = DDRMSettings(), callback=None) -> torch.Tensor:
    """DDRM sampling; returns x (B, *event_shape) in data space. Needs ``op.spectral()`` and Gaussian noise
    (checked by the method table). ``callback`` gets {i, t, x, x0} (model space) after every step."""
    steps, eta, eta_b = settings.steps, settings.eta, settings.eta_b
    svd = op.spectral()
    B = y.shape[0]
    shape = (B, *prior.event_shape)
    b_img = torch.full((1, *prior.event_shape), prior.data_offset, dtype=y.dtype, device=y.device)
    a = prior.data_scale
    y_m = (y - op(b_img)) / a  # the measurement of the model-space image
    sigma_y = noise.typical_sigma / a
    s = svd.s.to(y.device, y.dtype)
    obs = s > 0
    s_safe = torch.where(obs, s, torch.ones_like(s))
    y_bar = torch.where(obs, svd.Ut(y_m) / s_safe, torch.zeros_like(s))
    sy = torch.where(obs, sigma_y / s_safe, torch.full_like(s, float("inf")))  # sigma_y / s_i

    schedule = respace(prior.schedule, steps)
    abar = schedule.alphas_cumprod
    sig = ((1 - abar) / abar).sqrt()  # VE noise level of step i
    # initialisation at the largest noise level (Kawar et al., Eq. 7 at t = T)
    z = randn(shape, generators, y.device, y.dtype)
    sT = float(sig[-1])
    x_bar = torch.where(obs & (sy <= sT), y_bar + (sT ** 2 - torch.where(obs, sy, torch.zeros_like(sy)) ** 2)
                        .clamp_min(0).sqrt() * z, sT * z)
    for i in reversed(range(len(schedule))):
        t = torch.full((B,), int(schedule.timesteps[i]), dtype=torch.long, device=y.device)
        x_vp = math.sqrt(float(abar[i])) * svd.V(x_bar)
        x0 = prior.clip_x0(prior(x_vp, t).x0)
        x0_bar = svd.Vt(x0)
        s_t, s_prev = float(sig[i]), (float(sig[i - 1]) if i > 0 else 0.0)
        z = randn(shape, generators, y.device, y.dtype) if i > 0 else torch.zeros(shape, dtype=y.dtype, device=y.device)
        c = math.sqrt(1 - eta ** 2) * s_prev
        unobserved = x0_bar + c * (x_bar - x0_bar) / s_t + eta * s_prev * z
        low = x0_bar + c * (y_bar - x0_bar) / torch.where(obs, sy, torch.ones_like(sy)) + eta * s_prev * z
        high = (1 - eta_b) * x0_bar + eta_b * y_bar + (s_prev ** 2 - (torch.where(obs, sy, torch.zeros_like(sy))
                                                                       * eta_b) ** 2).clamp_min(0).sqrt() * z
        x_bar = torch.where(~obs, unobserved, torch.where(s_prev < sy, low, high))
        if callback is not None:
            callback({"i": i, "t": int(t[0]), "x": math.sqrt(float(schedule.alphas_cumprod_prev[i])) * svd.V(x_bar),
                      "x0": x0.clone()})
    return prior.clip_data(prior.to_data(svd.V(x_bar)))
