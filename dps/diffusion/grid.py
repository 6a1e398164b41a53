"""Noise-level grids: the schedule that every sampler takes as an argument.

Every sampler works in one form (Karras et al. 2022, "EDM", Eq. 4 with a scale): its iterate at step i is

    x_i = s_i (x_0 + sigma_i n),    n ~ N(0, I),

and the prior is asked for D(x_i / s_i; sigma_i) = E[x_0 | x_i] (:meth:`~dps.diffusion.denoiser.Prior.denoise`).
A :class:`Grid` is the N pairs (sigma_i, s_i), index 0 the least noisy (a sampler goes from i = N-1 down to 0,
with sigma_{-1} = 0 and s_{-1} = 1 after the last step). Small pure functions build them:

- :func:`vp_grid`: a VP checkpoint's own training steps respaced to N (guided-diffusion's even spacing, or
  DDIM's), sigma_i = sqrt((1 - abar_i) / abar_i) and s_i = sqrt(abar_i): the iterate is the VP x_t, and a
  sampler on this grid is the VP sampler of the papers;
- :func:`edm_grid`: EDM's rho grid, sigma_k = (sigma_max^(1/rho) + k / (N-1) (sigma_min^(1/rho) -
  sigma_max^(1/rho)))^rho for k = 0..N-1 from the top, s = 1;
- :func:`ve_grid`: score-SDE's geometric grid, sigma(t) = sigma_min (sigma_max / sigma_min)^t at t evenly
  spaced from 1 down to 0, s = 1.

A :class:`GridSpec` (``--grid vp|edm|ve`` with ``rho``, ``sigma_min``, ``sigma_max``) names a grid without its
length; :meth:`GridSpec.build` makes it for a prior and a step count. Its range is clamped to the noise levels
the prior knows (:meth:`~dps.diffusion.denoiser.Prior.sigma_range`). No kind (``None``) means the model's own:
the respaced training steps of a VP model, the geometric grid of a VE model, the rho grid of an EDM model.

Each grid also has VP-equivalent quantities, the VP process with the same noise-to-signal ratios:
abar_i = 1 / (1 + sigma_i^2) and beta_i = 1 - abar_i / abar_{i-1}; step rules and variance choices written
for DDPM read them, so they mean the same on every grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import torch

from ..errors import DPSError, check_float
from .schedule import Schedule, check_step_count, respace

__all__ = ["Grid", "GridSpec", "GRID_KINDS", "vp_grid", "edm_grid", "ve_grid", "denoise_on", "noise_model"]

#: the grid kinds (``--grid``) and what each is.
GRID_KINDS: dict[str, str] = {
    "vp": "the VP model's own training steps, respaced to N (the iterate is the VP x_t)",
    "edm": "EDM's rho grid between sigma_max and sigma_min (default rho 7), unscaled iterate",
    "ve": "score-SDE's geometric grid sigma_min (sigma_max / sigma_min)^t, t from 1 to 0, unscaled iterate",
}


@dataclass(frozen=True, eq=False)
class Grid:
    """N noise levels and scales of a sampler (module docstring); float64 tensors, index 0 the least noisy.

    :param sigmas: (N,) strictly increasing noise levels sigma_i > 0.
    :param scales: (N,) the iterate's scale s_i (sqrt(abar_i) on a VP grid, 1 otherwise).
    :param kind: ``"vp"``, ``"edm"`` or ``"ve"``.
    :param timesteps: (N,) the VP checkpoint's timesteps of a ``"vp"`` grid (for progress records), else None.
    """

    sigmas: torch.Tensor
    scales: torch.Tensor
    kind: str
    timesteps: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.sigmas.dtype != torch.float64 or self.scales.dtype != torch.float64:
            raise TypeError("Grid.sigmas and Grid.scales must be float64")
        if self.sigmas.ndim != 1 or self.sigmas.shape != self.scales.shape or len(self.sigmas) == 0:
            raise ValueError("sigmas and scales must be non-empty 1-D tensors of the same length")
        if not bool((self.sigmas > 0).all()) or not bool((self.sigmas[1:] > self.sigmas[:-1]).all()):
            raise ValueError("a grid's noise levels must be positive and strictly increasing")

    def __len__(self) -> int:
        return int(self.sigmas.shape[0])

    def sigma(self, i: int) -> float:
        """sigma_i; sigma_{-1} = 0."""
        return float(self.sigmas[i]) if i >= 0 else 0.0

    def scale(self, i: int) -> float:
        """s_i; s_{-1} = 1."""
        return float(self.scales[i]) if i >= 0 else 1.0

    def timestep(self, i: int) -> Optional[int]:
        """The VP checkpoint's timestep of step i (``"vp"`` grids), else None."""
        return None if self.timesteps is None else int(self.timesteps[i])

    def where(self, i: int) -> str:
        """Step i for messages: ``t=123`` on a VP grid, ``sigma=12.3`` otherwise."""
        return f"t={self.timestep(i)}" if self.timesteps is not None else f"sigma={self.sigma(i):.4g}"

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """VP-equivalent abar_i = 1 / (1 + sigma_i^2), float64 (N,)."""
        return 1.0 / (1.0 + self.sigmas ** 2)

    @cached_property
    def betas(self) -> torch.Tensor:
        """VP-equivalent beta_i = 1 - abar_i / abar_{i-1} (abar_{-1} = 1), float64 (N,)."""
        abar = self.alphas_cumprod
        return 1.0 - abar / torch.cat([abar.new_ones(1), abar[:-1]])

    @cached_property
    def vp_schedule(self) -> Schedule:
        """The VP-equivalent schedule (for DDPM's variance choices)."""
        steps = self.timesteps if self.timesteps is not None else torch.arange(len(self), dtype=torch.int64)
        return Schedule(betas=self.betas, timesteps=steps.clone())

    def level_std(self, i: int) -> float:
        """s_i sqrt(1 + sigma_i^2): the iterate's standard deviation at step i for unit-variance data (1 on a
        VP grid; 1 at i = -1, the result)."""
        return self.scale(i) * math.sqrt(1.0 + self.sigma(i) ** 2)

    def start_std(self) -> float:
        """:meth:`level_std` at the top level: samplers start from N(0, start_std^2 I) (N(0, I) on a VP grid, as
        DDPM does)."""
        return self.level_std(len(self) - 1)


def noise_model(prior):
    """The prior whose noise levels a grid spans: a latent model's latent prior, else the prior itself."""
    return prior.latent if getattr(prior, "form", None) == "latent" else prior


def denoise_on(prior, x: torch.Tensor, grid: Grid, i: int):
    """The prior's D(x_i / s_i; sigma_i) for the iterate x (B, *event_shape) at step i of ``grid``
    (a :class:`~dps.diffusion.denoiser.DenoiserOutput`; gradients flow to x)."""
    sigma = torch.full((x.shape[0],), grid.sigma(i), dtype=torch.float64, device=x.device)
    return prior.denoise(x / grid.scale(i), sigma)


def vp_grid(schedule: Schedule, n: int, spacing: str = "even") -> Grid:
    """n of a VP training schedule's steps (:func:`~dps.diffusion.schedule.respace`): sigma_i =
    sqrt((1 - abar_i) / abar_i), s_i = sqrt(abar_i)."""
    sub = respace(schedule, n, spacing)
    abar = sub.alphas_cumprod
    return Grid(sigmas=((1.0 - abar) / abar).sqrt(), scales=abar.sqrt(), kind="vp", timesteps=sub.timesteps.clone())


def _unscaled(sigmas: torch.Tensor, kind: str) -> Grid:
    """A grid of levels given from the top (decreasing), scale 1."""
    sigmas = sigmas.flip(0).contiguous()
    return Grid(sigmas=sigmas, scales=torch.ones_like(sigmas), kind=kind)


def edm_grid(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Grid:
    """EDM's grid (Karras et al. 2022, Eq. 5): n levels from sigma_max down to sigma_min, polynomial of degree
    rho in between; s = 1."""
    if n == 1:
        return _unscaled(torch.tensor([sigma_max], dtype=torch.float64), "edm")
    k = torch.arange(n, dtype=torch.float64) / (n - 1)
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _unscaled((top + k * (bottom - top)) ** rho, "edm")


def ve_grid(n: int, sigma_min: float, sigma_max: float) -> Grid:
    """Score-SDE's VE grid: sigma(t) = sigma_min (sigma_max / sigma_min)^t at n values of t evenly spaced from
    1 down to 0 (one level: sigma_max); s = 1."""
    t = torch.linspace(1.0, 0.0, n, dtype=torch.float64) if n > 1 else torch.ones(1, dtype=torch.float64)
    return _unscaled(sigma_min * (sigma_max / sigma_min) ** t, "ve")


@dataclass(frozen=True)
class GridSpec:
    """A grid without its length: ``kind`` (None: the model's own) and the range/shape parameters (None: the
    model's own range, clamped to what the model knows; rho 7, EDM's).

    :param kind: None, ``"vp"``, ``"edm"`` or ``"ve"`` (:data:`GRID_KINDS`).
    :param rho: the EDM grid's exponent (``"edm"`` only).
    :param sigma_min: the lowest noise level (``"edm"``, ``"ve"``).
    :param sigma_max: the highest noise level (``"edm"``, ``"ve"``).
    """

    kind: Optional[str] = None
    rho: Optional[float] = None
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in GRID_KINDS:
            raise DPSError(f"unknown grid {self.kind!r}; choose one of {', '.join(GRID_KINDS)}")
        if self.rho is not None:
            object.__setattr__(self, "rho", check_float(self.rho, "the grid's rho", 0.0, lo_open=True))
        for name in ("sigma_min", "sigma_max"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_float(getattr(self, name), f"the grid's {name}", 0.0,
                                                           lo_open=True))
        if self.sigma_min is not None and self.sigma_max is not None and self.sigma_min >= self.sigma_max:
            raise DPSError(f"the grid's sigma_min ({self.sigma_min}) must be below its sigma_max ({self.sigma_max})")
        if self.kind == "vp" and (self.rho, self.sigma_min, self.sigma_max) != (None, None, None):
            raise DPSError("the vp grid is the model's own respaced steps: it takes no rho, sigma_min or sigma_max "
                           "(use --grid edm or ve to choose a range)")
        if self.kind == "ve" and self.rho is not None:
            raise DPSError("rho shapes the edm grid only; leave it out with --grid ve")

    def build(self, prior, n: int, spacing: str = "even", origin: str = "", who: str = "the sampler") -> Grid:
        """The grid of ``n`` levels for ``prior`` (its own kind and range where this spec names none);
        ``spacing`` respaces a VP grid (:func:`vp_grid`), ``origin`` says where n came from (messages)."""
        prior = noise_model(prior)
        kind = self.kind or prior.form
        lo, hi = prior.sigma_range()
        if kind == "vp":
            if (self.rho, self.sigma_min, self.sigma_max) != (None, None, None):
                raise DPSError("this model's own grid is its respaced VP training steps, which take no rho, sigma_min "
                               "or sigma_max; choose --grid edm or ve to set a range")
            if prior.form != "vp":
                raise DPSError(f"the vp grid is the respaced training steps of a VP model; this model is "
                               f"{prior.form.upper()}: use --grid {prior.form} or edm")
            check_step_count(n, len(prior.schedule), who, origin)
            return vp_grid(prior.schedule, n, spacing)
        s_min = lo if self.sigma_min is None else min(max(self.sigma_min, lo), hi)
        s_max = hi if self.sigma_max is None else min(max(self.sigma_max, lo), hi)
        if s_min >= s_max:
            asked = ", ".join(f"{k} {v:g}" for k, v in (("sigma_min", self.sigma_min), ("sigma_max", self.sigma_max))
                              if v is not None)
            raise DPSError(f"the grid asks for {asked}, which leaves no range inside the noise levels the model "
                           f"knows, {lo:.4g} to {hi:.4g}: choose sigma_min below sigma_max, both inside it")
        if kind == "edm":
            return edm_grid(n, s_min, s_max, 7.0 if self.rho is None else self.rho)
        if self.rho is not None:
            raise DPSError("rho shapes the edm grid only, and this model's own grid is ve; choose --grid edm or "
                           "leave out --rho")
        return ve_grid(n, s_min, s_max)

    def override(self, kind: Optional[str] = None, rho: Optional[float] = None, sigma_min: Optional[float] = None,
                 sigma_max: Optional[float] = None) -> "GridSpec":
        """This spec with the given values replacing its own (None: kept). A change of kind keeps the range
        (not for ``"vp"``, which has none) and rho (not for ``"vp"`` and ``"ve"``, which have none)."""
        new_kind = self.kind if kind is None else kind
        keep_range = new_kind != "vp"
        keep_rho = new_kind not in ("vp", "ve")
        return GridSpec(new_kind, rho if rho is not None else (self.rho if keep_rho else None),
                        sigma_min if sigma_min is not None else (self.sigma_min if keep_range else None),
                        sigma_max if sigma_max is not None else (self.sigma_max if keep_range else None))

    def __str__(self) -> str:
        return self.describe()

    def resolved(self, prior) -> "GridSpec":
        """The spec of the grid that runs on ``prior``: its kind, rho and range made explicit (the range clamped),
        so two requests that mean the same grid are equal (run records compare them). The model's own VP steps
        stay ``GridSpec()``."""
        prior = noise_model(prior)
        kind = self.kind or prior.form
        self.build(prior, 2)  # every refusal first
        if kind == "vp":
            return GridSpec()
        lo, hi = prior.sigma_range()
        s_min = lo if self.sigma_min is None else min(max(self.sigma_min, lo), hi)
        s_max = hi if self.sigma_max is None else min(max(self.sigma_max, lo), hi)
        return GridSpec(kind, (7.0 if self.rho is None else self.rho) if kind == "edm" else None, s_min, s_max)

    def describe(self) -> str:
        """E.g. ``edm (rho 7, sigma 0.002 to 80)`` or ``the model's own``."""
        if self.kind is None:
            return "the model's own"
        parts = [f"rho {self.rho}"] if self.rho is not None else []
        if self.sigma_min is not None or self.sigma_max is not None:
            parts.append(f"sigma {self.sigma_min or 'min'} to {self.sigma_max or 'max'}")
        return self.kind + (f" ({', '.join(parts)})" if parts else "")
