"""Divergence guards: a run whose iterate leaves what the prior allows, or whose result explains the
measurement far worse than the noise allows, stops with an error that names the setting to lower.

Two ratios, both per sample:

* the iterate ratio rho_i = RMS(x_i) / (R + 1), with R = :meth:`~dps.diffusion.denoiser.Prior.model_radius`
  (1 for [-1, 1] images). Under the VP process x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) eps, so
  RMS(x_i) <= sqrt(abar_i) R + sqrt(1 - abar_i) <= R + 1 for an x_0 the prior allows: rho_i <= 1 on every
  sampling path that stays on the data manifold. :class:`DivergenceGuard` stops at rho > ITERATE_LIMIT.
* the residual ratio q = ||y - A(x_hat)||_2 / sqrt(sum_j max(Var n_j, FLOOR^2)), the final residual over the
  norm the noise would give (Gaussian: sigma sqrt(m); Poisson: sqrt(sum_j y_j / peak)), each element's
  noise floored at FLOOR = 0.01 (1 % of the [0, 1] range), so noise-free tasks have a scale too.
  :func:`check_residual` stops at q > RESIDUAL_LIMIT.

The limits are calibrated on every shipped task with every method that applies (the study
``benchmarks/divergence_guard/`` lists the largest ratio each correct run reached and a step-size sweep that
diverges): no correct run comes within a factor of two of them.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..errors import Diverged

__all__ = ["DivergenceGuard", "ITERATE_LIMIT", "RESIDUAL_LIMIT", "FLOOR", "iterate_ratio", "noise_norm",
           "residual_ratio", "check_residual"]

#: rho above which an iterate has diverged (benchmarks/divergence_guard/).
ITERATE_LIMIT = 4.0
#: q above which a result has diverged (benchmarks/divergence_guard/).
RESIDUAL_LIMIT = 50.0
#: the per-element noise floor of the residual ratio, in data units: 1 % of the [0, 1] range of images.
FLOOR = 0.01


def iterate_ratio(x: torch.Tensor, radius: float) -> torch.Tensor:
    """rho = RMS(x) / (R + 1) per sample, x (B, ...) in model space; (B,)."""
    return x.detach().flatten(1).float().pow(2).mean(1).sqrt() / (radius + 1.0)


def noise_norm(y: torch.Tensor, noise) -> torch.Tensor:
    """sqrt(sum_j max(Var n_j, FLOOR^2)): the residual norm the noise alone gives, per measurement; y (B, ...),
    returns (B,). Var n_j from the noise model (:meth:`element_variance`)."""
    var = noise.element_variance(y).clamp_min(FLOOR ** 2)
    return var.flatten(1).sum(1).sqrt()


def residual_ratio(residual: torch.Tensor, y: torch.Tensor, noise) -> torch.Tensor:
    """q = residual / :func:`noise_norm`; residual (B, K) of y (B, ...), returns (B, K)."""
    return residual / noise_norm(y, noise).to(residual).unsqueeze(1)


def check_residual(residual: torch.Tensor, y: torch.Tensor, noise, advice: str,
                   limit: Optional[float] = None) -> None:
    """Raise :class:`~dps.errors.Diverged` when a sample's residual ratio q exceeds ``limit`` (default
    RESIDUAL_LIMIT) or is not finite; ``advice`` says which setting to lower."""
    limit = RESIDUAL_LIMIT if limit is None else limit
    q = residual_ratio(residual, y, noise)
    worst = float(q.max()) if q.numel() else 0.0
    if math.isfinite(worst) and worst <= limit:
        return
    what = "is not finite" if not math.isfinite(worst) else \
        f"is {worst:.3g} times what the noise allows (the guard stops at {limit:g})"
    raise Diverged(f"diverged: the final residual ||y - A(x)|| {what}; {advice}")


class DivergenceGuard:
    """Stops an iteration whose iterate leaves the range the prior allows: rho > ``limit`` (module docstring;
    default ITERATE_LIMIT) or a non-finite iterate. Reading rho on the host synchronises a GPU, so on an
    accelerator the largest rho is kept on the device and read every ``every`` steps (default 20) and at
    step 0; on the CPU, where reading is free, at every step.
    """

    def __init__(self, prior, limit: Optional[float] = None, every: Optional[int] = None) -> None:
        self.radius = prior.model_radius()
        self.limit = ITERATE_LIMIT if limit is None else limit
        self.every = every
        self._worst: Optional[torch.Tensor] = None
        self._seen = 0
        self._scaled = False  # whether an iterate of an unscaled grid was checked (the message's wording)

    @property
    def worst(self) -> float:
        """The largest rho seen so far (NaN once an iterate was not finite)."""
        return float("nan") if self._worst is None else float(self._worst)

    def check(self, x: torch.Tensor, i: int, t, advice: str, scale: float = 1.0) -> None:
        """Check iterate x (B, ...) made by step i (t: the model timestep or noise level, for the message);
        ``scale`` = s sqrt(1 + sigma^2) of x's level on a grid whose iterate is not the VP x_t
        (x = s (x_0 + sigma n): rho is then RMS(x) / (scale (R + 1)); 1 on a VP grid)."""
        rho = iterate_ratio(x, self.radius).max() / scale
        self._scaled = self._scaled or scale != 1.0
        self._worst = rho if self._worst is None else torch.maximum(self._worst, rho)  # NaN propagates
        self._seen += 1
        every = self.every or (1 if x.device.type == "cpu" else 20)
        if i != 0 and self._seen % every:
            return
        worst = float(self._worst)
        if worst <= self.limit:
            return
        state = "is not finite" if not math.isfinite(worst) else \
            f"is {worst:.3g} times the size the prior allows at its noise level (the guard stops at {self.limit:g} " \
            "times)" if self._scaled else \
            f"has RMS {worst * (self.radius + 1):.3g}, {worst:.3g} times the {self.radius + 1:g} the prior allows " \
            f"(the guard stops at {self.limit:g} times)"
        place = t if isinstance(t, str) else f"t={t}"
        when = f"at {place}, {self._seen} step(s) into the run" if every == 1 else \
            f"by {place}, within the first {self._seen} steps of the run"
        raise Diverged(f"diverged {when}: the iterate {state}; {advice}")
