"""Analytic priors with exact scores at every noise level, behind the same contract as networks.

Under the VP forward process x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps:
- isotropic Gaussian N(mu, s^2 I)  ->  p_t = N(sqrt(abar_t) mu, (abar_t s^2 + 1 - abar_t) I);
- mixture sum_k w_k N(mu_k, I)      ->  p_t = sum_k w_k N(sqrt(abar_t) mu_k, I) (unit covariance is kept).
The exact score gives eps = -sqrt(1 - abar_t) score and the exact Tweedie mean x0_hat.

In the noise-level form x = x_0 + sigma n (the VE and EDM forms, :func:`~dps.diffusion.forms.in_form`):
- Gaussian: score = -(x - mu) / (s^2 + sigma^2),  D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu);
- mixture: r_k(x) proportional to w_k N(x; mu_k, (1 + sigma^2) I), score = -sum_k r_k (x - mu_k) / (1 + sigma^2),
  D(x; sigma) = sum_k r_k (mu_k + (x - mu_k) / (1 + sigma^2))  (:meth:`exact_denoise`, :meth:`score_sigma`).

Both work on any event shape: vectors (d,) or images (C, H, W); samples are (B, *event_shape).
For a linear operator A (a matrix on the flattened event) with Gaussian noise sigma_y, the posteriors
are closed form (:meth:`GaussianPrior.posterior`, :meth:`GaussianMixturePrior.posterior`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..diffusion.denoiser import DenoiserOutput, Prior, bcast, tweedie_x0
from ..diffusion.schedule import Schedule, make_schedule

__all__ = ["GaussianPrior", "GaussianMixturePrior", "GaussianPosterior", "MixturePosterior", "LinearImageMixturePrior",
           "LinearImagePosterior"]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


@dataclass
class GaussianPosterior:
    """N(mean, cov) on the flattened event; mean (D,), cov (D, D)."""

    mean: torch.Tensor
    cov: torch.Tensor
    event_shape: tuple[int, ...]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        L = torch.linalg.cholesky(self.cov)
        z = torch.randn(n, self.mean.numel(), generator=generator, dtype=self.mean.dtype)
        return (self.mean + z @ L.T).reshape(n, *self.event_shape)


@dataclass
class MixturePosterior:
    """sum_k weights_k N(means_k, cov) on the flattened event; weights (K,), means (K, D), cov (D, D)."""

    weights: torch.Tensor
    means: torch.Tensor
    cov: torch.Tensor
    event_shape: tuple[int, ...]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        L = torch.linalg.cholesky(self.cov)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=self.means.dtype)
        return (self.means[k] + z @ L.T).reshape(n, *self.event_shape)


class GaussianPrior(Prior):
    """x_0 ~ N(mean, std^2 I).

    :param mean: tensor of the event shape, e.g. (d,) or (C, H, W).
    :param std: the prior standard deviation s.
    :param schedule: the diffusion's T-step schedule (default: linear, T = 1000).
    """

    def __init__(self, mean: torch.Tensor, std: float = 1.0, schedule: Schedule | None = None) -> None:
        super().__init__()
        self.schedule = schedule if schedule is not None else make_schedule("linear")
        self.register_buffer("mean", mean.clone())
        self.std = float(std)
        self.data_variance = self.std ** 2
        self.event_shape = tuple(mean.shape)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> DenoiserOutput:
        abar = self.abar(t)
        a = bcast(abar, x)
        var_t = a * self.std**2 + 1 - a
        score = -(x - a.sqrt() * self.mean.to(x)) / var_t
        eps = -(1 - a).sqrt() * score
        return DenoiserOutput(eps=eps, x0=tweedie_x0(x, eps, abar))

    def exact_denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu) for x (B, *event_shape), sigma (B,)."""
        mu = self.mean.to(x)
        return mu + bcast(self.std ** 2 / (self.std ** 2 + sigma ** 2), x) * (x - mu)

    def score_sigma(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """grad log p_sigma(x) = -(x - mu) / (s^2 + sigma^2)."""
        return -(x - self.mean.to(x)) / bcast(self.std ** 2 + sigma ** 2, x)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, *self.event_shape, generator=generator, dtype=self.mean.dtype)
        return self.mean + self.std * z

    def model_radius(self) -> float:
        """RMS of the mean plus the standard deviation: a bound of x_0's typical per-element RMS."""
        return float(self.mean.double().pow(2).mean().sqrt()) + self.std

    def posterior(self, A: torch.Tensor, sigma_y: float, y: torch.Tensor) -> GaussianPosterior:
        """Exact p(x | y) for y = A x + sigma_y n; A (d_y, D), y (d_y,).

        C = (I / s^2 + A^T A / sigma_y^2)^-1,  m = C (mu / s^2 + A^T y / sigma_y^2).
        """
        A = A.to(self.mean.dtype)
        D = A.shape[1]
        precision = torch.eye(D, dtype=A.dtype) / self.std**2 + A.T @ A / sigma_y**2
        C = torch.linalg.inv(precision)
        C = (C + C.T) / 2
        m = C @ (self.mean.reshape(-1) / self.std**2 + A.T @ y.reshape(-1).to(A.dtype) / sigma_y**2)
        return GaussianPosterior(mean=m, cov=C, event_shape=self.event_shape)


class GaussianMixturePrior(Prior):
    """x_0 ~ sum_k w_k N(mu_k, I) (unit-covariance components, as in the MCGdiff benchmark).

    :param weights: (K,) mixture weights (normalised here).
    :param means: (K, *event_shape) component means.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, schedule: Schedule | None = None) -> None:
        super().__init__()
        if weights.ndim != 1 or means.shape[0] != weights.shape[0]:
            raise ValueError("weights must be (K,) and means (K, *event_shape)")
        self.schedule = schedule if schedule is not None else make_schedule("linear")
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("means", means.clone())
        self.event_shape = tuple(means.shape[1:])
        centred = _flat(means) - (self.weights[:, None] * _flat(means)).sum(0)
        self.data_variance = 1.0 + float((self.weights[:, None] * centred ** 2).sum(0).mean())  # I + Cov of the means

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> DenoiserOutput:
        abar = self.abar(t)
        a = bcast(abar, _flat(x))  # (B, 1)
        xf, mu = _flat(x), _flat(self.means).to(x)  # (B, D), (K, D)
        centres = a.sqrt().unsqueeze(1) * mu.unsqueeze(0)  # (B, K, D)
        logits = self.weights.to(x).log() - 0.5 * ((xf.unsqueeze(1) - centres) ** 2).sum(-1)
        r = torch.softmax(logits, dim=1)  # responsibilities (B, K)
        score = (r.unsqueeze(-1) * centres).sum(1) - xf
        eps = (-(1 - a).sqrt() * score).reshape(x.shape)
        return DenoiserOutput(eps=eps, x0=tweedie_x0(x, eps, abar))

    def _responsibilities(self, x: torch.Tensor, sigma: torch.Tensor):
        """(r (B, K), x flat (B, D), means (K, D), 1 + sigma^2 (B, 1)) at noise level sigma (x = x_0 + sigma n)."""
        xf, mu = _flat(x), _flat(self.means).to(x)
        v = (1.0 + sigma.to(x) ** 2)[:, None]
        logits = self.weights.to(x).log() - 0.5 * ((xf.unsqueeze(1) - mu.unsqueeze(0)) ** 2).sum(-1) / v
        return torch.softmax(logits, dim=1), xf, mu, v

    def exact_denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) = sum_k r_k (mu_k + (x - mu_k) / (1 + sigma^2)) for x (B, *event_shape), sigma (B,)."""
        r, xf, mu, v = self._responsibilities(x, sigma)
        means = mu.unsqueeze(0) + (xf.unsqueeze(1) - mu.unsqueeze(0)) / v.unsqueeze(-1)  # (B, K, D)
        return (r.unsqueeze(-1) * means).sum(1).reshape(x.shape)

    def score_sigma(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """grad log p_sigma(x) = -sum_k r_k (x - mu_k) / (1 + sigma^2)."""
        r, xf, mu, v = self._responsibilities(x, sigma)
        return (-(r.unsqueeze(-1) * (xf.unsqueeze(1) - mu.unsqueeze(0))).sum(1) / v).reshape(x.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, *self.event_shape, generator=generator, dtype=self.means.dtype)
        return self.means[k] + z

    def model_radius(self) -> float:
        """The largest component mean's RMS plus the unit standard deviation."""
        return float(_flat(self.means.double()).pow(2).mean(1).sqrt().max()) + 1.0

    def posterior(self, A: torch.Tensor, sigma_y: float, y: torch.Tensor) -> MixturePosterior:
        """Exact p(x | y) for y = A x + sigma_y n (GMM_BENCHMARK.md):

        C = (I + A^T A / sigma_y^2)^-1,  m_k = C (A^T y / sigma_y^2 + mu_k),
        log w'_k = log w_k + log N(y; A mu_k, sigma_y^2 I + A A^T), normalised.
        """
        A = A.to(self.means.dtype)
        mu = _flat(self.means)
        D, d_y = mu.shape[1], A.shape[0]
        yv = y.reshape(-1).to(A.dtype)
        C = torch.linalg.inv(torch.eye(D, dtype=A.dtype) + A.T @ A / sigma_y**2)
        C = (C + C.T) / 2
        means = (A.T @ yv / sigma_y**2 + mu) @ C  # C symmetric: rows are C (A^T y / s^2 + mu_k)
        S = sigma_y**2 * torch.eye(d_y, dtype=A.dtype) + A @ A.T
        resid = yv - mu @ A.T  # (K, d_y)
        maha = (resid @ torch.linalg.inv(S) * resid).sum(-1)
        log_norm = -0.5 * (maha + torch.logdet(S) + d_y * math.log(2 * math.pi))
        logw = self.weights.log() + log_norm
        return MixturePosterior(weights=torch.softmax(logw, 0), means=means, cov=C, event_shape=self.event_shape)


class LinearImageMixturePrior(Prior):
    """x_0 = W z + b with z ~ sum_k w_k N(mu_k, I) in D dimensions and W (d, D) of full column rank: the image of a
    latent mixture under a known linear decoder (the exact-posterior benchmark of latent methods), a prior on
    x (d,) whose covariance W W^T is singular.

    Its exact denoiser: with W = U S V^T (thin SVD), x = x_0 + sigma n carries z through u = S^-1 U^T (x - b) =
    z + sigma S^-1 n' only (the rest of x is noise), so in the rotated latent z' = V^T z (components N(V^T mu_k, I))
    every coordinate j is independent given the component:
        E[z'_j | u', k] = m_kj + (u'_j - m_kj) / (1 + sigma^2 / s_j^2),
        r_k ∝ w_k exp(-sum_j (u'_j - m_kj)^2 / (2 (1 + sigma^2 / s_j^2))),
    and D(x; sigma) = W V E[z' | u'] + b.
    """

    def __init__(self, latent: GaussianMixturePrior, W: torch.Tensor, b: torch.Tensor,
                 schedule: Schedule | None = None) -> None:
        super().__init__()
        if W.ndim != 2 or W.shape[1] != latent.means.shape[1] or b.shape != (W.shape[0],):
            raise ValueError("W must be (d, D) for a latent mixture in D dimensions and b (d,)")
        self.schedule = schedule if schedule is not None else make_schedule("linear")
        self.latent = latent
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        if float(S.min()) <= 1e-8 * float(S.max()):
            raise ValueError("W must have full column rank")
        self.register_buffer("W", W.clone())
        self.register_buffer("b", b.clone())
        self.register_buffer("U", U)
        self.register_buffer("S", S)
        self.register_buffer("V", Vh.T)
        self.event_shape = (W.shape[0],)
        z = latent.sample(4096, torch.Generator().manual_seed(0)).to(W.dtype)
        self.data_variance = float((z @ W.T).var(0).mean())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> DenoiserOutput:
        abar = self.abar(t)
        a = bcast(abar, x)
        sigma = ((1 - abar) / abar).sqrt()
        x0 = self.exact_denoise(x / a.sqrt(), sigma)
        return DenoiserOutput(eps=(x - a.sqrt() * x0) / (1 - a).sqrt(), x0=x0)

    def exact_denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) for x (B, d), sigma (B,) (class docstring)."""
        W, b, U, S, V = (t.to(x) for t in (self.W, self.b, self.U, self.S, self.V))
        up = ((x - b) @ U) / S  # (B, D): u' = S^-1 U^T (x - b) = z' + sigma S^-1 n', z' = V^T z
        m = self.latent.means.to(x) @ V  # (K, D)
        v = 1.0 + sigma.to(x)[:, None] ** 2 / S[None] ** 2  # (B, D) variance of u' - m_k per coordinate
        diff = up[:, None, :] - m[None]  # (B, K, D)
        logits = self.latent.weights.to(x).log() - 0.5 * (diff ** 2 / v[:, None, :]).sum(-1)
        r = torch.softmax(logits, dim=1)
        zp = (r[..., None] * (m[None] + diff / v[:, None, :])).sum(1)
        return (zp @ V.T) @ W.T + b

    def score_sigma(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """grad log p_sigma(x) = (D(x; sigma) - x) / sigma^2 (Tweedie)."""
        return (self.exact_denoise(x, sigma) - x) / bcast(sigma.to(x), x) ** 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.latent.sample(n, generator).to(self.W) @ self.W.T + self.b

    def model_radius(self) -> float:
        return float(self.latent.model_radius() * self.S.max() + self.b.abs().max())

    def posterior(self, A: torch.Tensor, sigma_y: float, y: torch.Tensor) -> "LinearImagePosterior":
        """Exact p(x | y) for y = A x + sigma_y n: the latent posterior for the operator A W and y - A b, pushed
        through x = W z + b."""
        A = A.to(self.W.dtype)
        post = self.latent.posterior(A @ self.W, sigma_y, y.reshape(-1).to(A.dtype) - A @ self.b)
        return LinearImagePosterior(post, self.W, self.b)


@dataclass
class LinearImagePosterior:
    """The law of W z + b for z from a :class:`MixturePosterior` (``latent``)."""

    latent: MixturePosterior
    W: torch.Tensor
    b: torch.Tensor

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.latent.sample(n, generator) @ self.W.T + self.b
