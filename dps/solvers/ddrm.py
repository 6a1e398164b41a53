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

Operators with a usable SVD: inpainting (V = I, s = mask), super-resolution (separable: the SVDs of the
two resize matrices), blur with a separable kernel (Gaussian: the SVDs of the two 1-D blur matrices,
boundary handling included). Others raise :class:`~dps.solvers.baselines.NotApplicable` (motion blur,
as in the paper's table). Measurements are converted to the prior's space: for data = a x + b,
y_model = (y - A b) / a with noise sigma_y / a.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..diffusion.denoiser import Prior
from ..diffusion.schedule import respace
from ..diffusion.steps import randn
from ..noise import GaussianNoise, NoiseModel
from ..operators import Blur, Inpainting, MatrixOperator, Operator, SuperResolution
from .baselines import NotApplicable, _clip_x0, _residual

__all__ = ["SpectralOperator", "spectral_form", "ddrm", "blur_matrix_1d"]


class SpectralOperator:
    """A = U S V^T for images (C, H, W) acting per channel; spectral coordinates have shape (C, H, W).

    ``kind="mask"``: V = U = I, s = mask (H, W). ``kind="dense"``: vectors (d,), A = U S V^T of a matrix. ``kind="kron"``: A X = Mh X Mw^T with full SVDs of Mh
    (m_h x H) and Mw (m_w x W); s_ij = sh_i sw_j (zero beyond m_h, m_w), and U^T y is placed in the top-left
    (m_h, m_w) corner of the (H, W) spectral grid.
    """

    def __init__(self, kind: str, s: torch.Tensor, mats: Optional[tuple] = None,
                 out_hw: Optional[tuple[int, int]] = None) -> None:
        self.kind, self.s, self.mats, self.out_hw = kind, s, mats, out_hw

    def Vt(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "mask":
            return x
        if self.kind == "dense":
            return x @ self.mats[1].to(x)
        Uh, Vh, Uw, Vw = self.mats
        return torch.einsum("hi,bchw,wj->bcij", Vh.to(x), x, Vw.to(x))

    def V(self, xb: torch.Tensor) -> torch.Tensor:
        if self.kind == "mask":
            return xb
        if self.kind == "dense":
            return xb @ self.mats[1].to(xb).T
        Uh, Vh, Uw, Vw = self.mats
        return torch.einsum("hi,bcij,wj->bchw", Vh.to(xb), xb, Vw.to(xb))

    def Ut(self, y: torch.Tensor) -> torch.Tensor:
        """U^T y placed on the (C, H, W) spectral grid."""
        if self.kind == "mask":
            return y
        if self.kind == "dense":
            U, V = self.mats
            out = torch.zeros(y.shape[0], V.shape[0], dtype=y.dtype, device=y.device)
            out[:, : U.shape[1]] = y @ U.to(y)
            return out
        Uh, Vh, Uw, Vw = self.mats
        core = torch.einsum("oi,bcop,pj->bcij", Uh.to(y), y, Uw.to(y))
        out = torch.zeros(*y.shape[:2], Vh.shape[0], Vw.shape[0], dtype=y.dtype, device=y.device)
        out[..., : core.shape[-2], : core.shape[-1]] = core
        return out

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """A x computed from the factors (for tests): U S V^T x."""
        z = self.s.to(x) * self.Vt(x)
        if self.kind == "mask":
            return z
        if self.kind == "dense":
            U, V = self.mats
            return z[:, : U.shape[1]] @ U.to(x).T
        Uh, Vh, Uw, Vw = self.mats
        mh, mw = Uh.shape[0], Uw.shape[0]
        return torch.einsum("oi,bcij,pj->bcop", Uh.to(x), z[..., :mh, :mw], Uw.to(x))


def blur_matrix_1d(g: torch.Tensor, n: int, idx: torch.Tensor) -> torch.Tensor:
    """(n, n) matrix of the 1-D cross-correlation with taps g over a padded signal whose position q reads
    source ``idx[q]`` (-1 = zero padding): out[i] = sum_a g[a] x[idx[i + a]]."""
    M = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for a in range(len(g)):
            j = int(idx[i + a])
            if j >= 0:
                M[i, j] += float(g[a])
    return M


def _full_svd(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    U, S, Vh = torch.linalg.svd(M.double(), full_matrices=True)
    return U, S, Vh.T


def spectral_form(op: Operator) -> SpectralOperator:
    """The SVD form of ``op``, or :class:`NotApplicable`."""
    if isinstance(op, Inpainting):
        return SpectralOperator("mask", op.mask.double())
    if isinstance(op, MatrixOperator):
        U, S, Vh = torch.linalg.svd(op.matrix.double(), full_matrices=True)
        s = torch.zeros(Vh.shape[0], dtype=torch.float64)
        s[: len(S)] = S
        return SpectralOperator("dense", s, (U, Vh.T))
    if isinstance(op, SuperResolution):
        Mh, Mw = op.Mh.double(), op.Mw.double()
    elif isinstance(op, Blur):
        k = op.kernel.double()
        U, S, Vt = torch.linalg.svd(k)
        if S[1:].sum() > 1e-6 * S[0]:
            raise NotApplicable(f"DDRM needs a separable blur kernel for its SVD; this {op.config.get('kind')} "
                                "kernel is not (the paper reports DDRM as not applicable to motion blur)")
        gh, gw = U[:, 0] * S[0].sqrt(), Vt[0] * S[0].sqrt()
        if gh.sum() < 0:
            gh, gw = -gh, -gw
        _, H, W = op.in_shape
        Mh, Mw = blur_matrix_1d(gh, H, op.idx_h), blur_matrix_1d(gw, W, op.idx_w)
    else:
        raise NotApplicable(f"DDRM needs an SVD of the operator; none is available for {op.name}")
    Uh, sh, Vh = _full_svd(Mh)
    Uw, sw, Vw = _full_svd(Mw)
    H, W = Vh.shape[0], Vw.shape[0]
    s = torch.zeros(H, W, dtype=torch.float64)
    s[: len(sh), : len(sw)] = sh[:, None] * sw[None, :]
    return SpectralOperator("kron", s, (Uh, Vh, Uw, Vw))


@torch.no_grad()
def ddrm(prior: Prior, op: Operator, y: torch.Tensor, noise: NoiseModel, generators, steps: int = 20,
         eta: float = 0.85, eta_b: float = 1.0, **_: object) -> tuple[torch.Tensor, torch.Tensor]:
    """DDRM sampling; returns x (B, C, H, W) in data space and ||y - A x|| (B,)."""
    if not isinstance(noise, GaussianNoise):
        raise NotApplicable("DDRM is derived for Gaussian noise")
    svd = spectral_form(op)
    B = y.shape[0]
    shape = (B, *prior.event_shape)
    zero = torch.zeros(1, *prior.event_shape, dtype=y.dtype, device=y.device)
    b_img = prior.to_data(zero)
    a = float((prior.to_data(zero + 1) - b_img).flatten()[0])
    y_m = (y - op(b_img)) / a  # the measurement of the model-space image
    sigma_y = noise.sigma / a
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
        x0 = _clip_x0(prior, prior(x_vp, t).x0)
        x0_bar = svd.Vt(x0)
        s_t, s_prev = float(sig[i]), (float(sig[i - 1]) if i > 0 else 0.0)
        z = randn(shape, generators, y.device, y.dtype) if i > 0 else torch.zeros(shape, dtype=y.dtype, device=y.device)
        c = math.sqrt(1 - eta ** 2) * s_prev
        unobserved = x0_bar + c * (x_bar - x0_bar) / s_t + eta * s_prev * z
        low = x0_bar + c * (y_bar - x0_bar) / torch.where(obs, sy, torch.ones_like(sy)) + eta * s_prev * z
        high = (1 - eta_b) * x0_bar + eta_b * y_bar + (s_prev ** 2 - (torch.where(obs, sy, torch.zeros_like(sy))
                                                                       * eta_b) ** 2).clamp_min(0).sqrt() * z
        x_bar = torch.where(~obs, unobserved, torch.where(s_prev < sy, low, high))
    x = prior.to_data(svd.V(x_bar))
    bounds = getattr(prior, "data_bounds", None)
    x = x.clamp(*bounds) if bounds is not None else x
    return x, _residual(op, y, x)
