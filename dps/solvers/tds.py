"""TDS: twisted diffusion sampler (Wu, Trippe, Naesseth, Blei, Cunningham, NeurIPS 2023), noisy linear problems.

Sequential Monte Carlo over the reverse diffusion: the K samples of one measurement are K particles that are
reweighted and resampled, so that as K grows they become exact posterior samples whatever the guidance's
approximation error, the error DPS, Pi-GDM and the other single-chain samplers keep. With a Gaussian
p(x_0 | x_t) ~ N(x0_hat, r_t^2 I) as in Pi-GDM, the twisting function is

    p~_t(y | x_t) = N(y; A x0_hat(x_t), r_t^2 A A^T + sigma_y^2 I)                      (Pi-GDM Eq. 7-8)

with r_t^2 = s^2 (1 - abar_t) / (abar_t s^2 + 1 - abar_t) = s^2 sigma_t^2 / (s^2 + sigma_t^2) (:meth:`~dps.diffusion.denoiser.Prior.x0_variance`),
the variance of x_0 given x_t were the prior Gaussian with its per-coordinate variance s^2
(``Prior.data_variance``: computed by the analytic priors, 1 for a network prior, which gives Pi-GDM's
1 - abar_t). On the GMM benchmark s^2 is what makes TDS work (with Pi-GDM's 1 - abar_t it stays far from the
posterior; ``benchmarks/gmm/``): the early, flatter twisting keeps particles in every mode y allows.

each particle moves by Pi-GDM's guided DDIM step (eta 1), the proposal q(x_{t-1} | x_t, y), and its weight is

    w_{t-1} = p(x_{t-1} | x_t) p~_{t-1}(y | x_{t-1}) / (q(x_{t-1} | x_t, y) p~_t(y | x_t))     (TDS Alg. 1)

with p(x_{t-1} | x_t) the unguided DDIM step (same variance, mean from x0_hat instead of the guided x0),
w_T = p~_T(y | x_T). The particles are resampled (systematic) whenever the effective sample size falls below
``ess_threshold`` K, and always before the last step; the last step (t = 0, no noise) returns the guided x0.
Cost per particle: one network forward and one VJP per step, as DPS and Pi-GDM.

Where we differ from the paper: its twisting function is N(y; A x0_hat, sigma_y^2 I) (with a variance
inflation for inpainting); ours adds the x_0 variance above, which makes it exact for a Gaussian prior
(then every weight is 1 up to the proposal's discretisation; tested).
In high dimensions with few particles the weights degenerate (``dps solve --task super_resolution --method
tds --nfe 20 --samples 4`` on a held-out digit gives copies of one particle). TDS is for problems where many
particles are affordable (the GMM benchmark: 2,000); on images with small K its samples are copies of a few
Pi-GDM chains.

The particles of one measurement interact (they are resampled together), so, unlike the other samplers,
a sample depends on the other K - 1 samples of its measurement (never on other measurements); each
measurement's resampling draws from a generator seeded by its first sample's generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diffusion.denoiser import Prior
from ..diffusion.grid import GridSpec
from ..diffusion.steps import ddim_grid_std, ddim_grid_step, randn
from ..errors import DPSError, check_float, check_int
from ..noise import NoiseModel, floored_variance
from ..operators import LinearOperator
from .dps import DivergenceGuard, frozen_parameters
from .pigdm import pigdm_likelihood

__all__ = ["tds", "TDSSettings", "systematic_resample", "effective_sample_size"]


@dataclass(frozen=True)
class TDSSettings:
    """TDS's settings: ``steps`` guided DDIM steps (eta 1) on ``grid`` (default: the model's own); a
    measurement's K particles are resampled when their effective sample size falls below ``ess_threshold`` K."""

    steps: int = 100
    ess_threshold: float = 0.5
    grid: GridSpec = GridSpec()

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", check_int(self.steps, "tds steps", 2, 100_000))
        object.__setattr__(self, "ess_threshold", check_float(self.ess_threshold, "TDS's ess_threshold", 0.0, 1.0))


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """ESS = 1 / sum_k w_k^2 of the normalised weights, per row of log_w (B, K) -> (B,)."""
    w = torch.softmax(log_w, dim=1)
    return 1.0 / (w * w).sum(1)


def systematic_resample(log_w: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Indices (B, K) into each row's K particles, by systematic resampling of the weights softmax(log_w)
    (one uniform per row from that row's generator): particle k is kept about K w_k times."""
    B, K = log_w.shape
    w = torch.softmax(log_w.double(), dim=1)
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators]).to(w.device)
    points = (u[:, None] + torch.arange(K, dtype=torch.float64, device=w.device)) / K  # (B, K) in [0, 1)
    cdf = torch.cumsum(w, dim=1)
    cdf[:, -1] = 1.0
    return torch.searchsorted(cdf, points).clamp_max(K - 1)


def _group_generators(generators, B: int, K: int) -> list[torch.Generator]:
    """One resampling generator per measurement, seeded from its first sample's generator (or the one
    generator of the batch)."""
    firsts = [generators] * B if isinstance(generators, torch.Generator) or generators is None else generators[::K]
    seeds = [int(torch.randint(0, 2**62, (), generator=g, device=g.device if g is not None else None)) for g in firsts]
    return [torch.Generator().manual_seed(s) for s in seeds]


def tds(prior: Prior, op: LinearOperator, y: torch.Tensor, noise: NoiseModel, generators,
        settings: TDSSettings = TDSSettings(), callback=None, *, num_samples: int = 1) -> torch.Tensor:
    """TDS with ``settings.steps`` steps (one forward and one VJP each) for the B * K particles of y (B * K, ...):
    K = ``num_samples`` consecutive rows share a measurement and form one particle system. Returns x (B * K,
    *event_shape) in data space, resampled by the final weights. ``callback`` is called after steps N-2 .. 0."""
    steps, ess_threshold = settings.steps, settings.ess_threshold
    n, K = y.shape[0], num_samples
    if K < 1 or n % K:
        raise DPSError(f"TDS needs the batch ({n}) to be a multiple of num_samples ({K})")
    B = n // K
    grid = settings.grid.build(prior, steps)
    sigma_y2 = floored_variance(noise)
    resample_gens = _group_generators(generators, B, K)
    guard = DivergenceGuard(prior)
    x = randn((n, *prior.event_shape), generators, y.device, y.dtype) * grid.start_std()

    def twisted(x: torch.Tensor, i: int):
        abar = float(grid.alphas_cumprod[i])  # VP-equivalent: x0_variance's r_t^2 in sigma terms
        x0, g, log_twist = pigdm_likelihood(prior, op, y, x, grid, i, sigma_y2, prior.x0_variance(abar))
        x0_guided = prior.clip_x0(x0 + grid.sigma(i) ** 2 * grid.scale(i) * g)
        return prior.clip_x0(x0), x0_guided, log_twist

    def resample(log_w: torch.Tensor, threshold: float, *tensors: torch.Tensor):
        """Resample the measurements whose ESS is below threshold K (each draws its uniform every time, so
        one measurement's stream never depends on another's weights); returns (log_w, *tensors)."""
        lw = log_w.reshape(B, K)
        need = effective_sample_size(lw) < threshold * K  # (B,)
        keep = torch.arange(K, device=lw.device).expand(B, K)
        idx = torch.where(need[:, None], systematic_resample(lw, resample_gens).to(lw.device), keep)
        flat = (idx + K * torch.arange(B, device=idx.device)[:, None]).reshape(-1)
        lw = torch.where(need[:, None], torch.zeros_like(lw), lw)
        return [lw.reshape(-1)] + [v[flat] for v in tensors]

    with frozen_parameters(prior), torch.enable_grad():
        i = len(grid) - 1
        x0, x0_guided, log_twist = twisted(x, i)
        log_w = log_twist.clone()  # w_T = p~_T(y | x_T)
        for i in reversed(range(1, len(grid))):
            log_w, x, x0, x0_guided, log_twist = resample(log_w, ess_threshold, x, x0, x0_guided, log_twist)
            with torch.no_grad():
                s = grid.scale(i - 1) * ddim_grid_std(grid, i, 1.0)  # the iterate's noise std
                mean_q = ddim_grid_step(x, x0_guided, grid, i, torch.zeros_like(x), 1.0)
                mean_p = ddim_grid_step(x, x0, grid, i, torch.zeros_like(x), 1.0)
                x_new = mean_q + s * randn(x.shape, generators, x.device, x.dtype)
                log_p_over_q = ((x_new - mean_q).pow(2) - (x_new - mean_p).pow(2)).flatten(1).sum(1) / (2 * s * s)
            x0, x0_guided, new_twist = twisted(x_new, i - 1)
            log_w = log_w + log_p_over_q + new_twist - log_twist
            x, log_twist = x_new, new_twist
            guard.check(x, i - 1, grid.where(i - 1), "TDS's guidance is unstable for this problem", grid.level_std(i - 1))
            if callback is not None:
                callback({"i": i - 1, "t": grid.timestep(i - 1), "sigma": grid.sigma(i - 1), "x": x.clone(),
                          "x0": x0_guided.clone()})
        _, x0_guided = resample(log_w, float("inf"), x0_guided)  # always, by the final weights
    return prior.clip_data(prior.to_data(x0_guided.detach()))
