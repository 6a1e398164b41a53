"""Variance-preserving (DDPM) noise schedules, all in float64.

Forward process (Ho et al. 2020, Eq. 4):  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,
with abar_t = prod_{s<=t} (1 - beta_s).

A :class:`Schedule` is a plain, immutable record: ``betas`` of the N sampling steps and ``timesteps``,
the index in the model's own T-step training schedule that each step corresponds to (the integer the
network is conditioned on). A freshly built schedule has ``timesteps = arange(T)``; :func:`respace`
keeps a subset of them and recomputes the betas from abar so that abar is unchanged at the kept steps
(improved-diffusion's ``SpacedDiffusion``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

__all__ = ["Schedule", "linear_betas", "cosine_betas", "make_schedule", "respace", "spaced_timesteps", "subschedule",
           "SPACINGS", "check_spacing"]

#: how a T-step schedule is respaced to fewer steps (:func:`spaced_timesteps`)
SPACINGS = ("even", "ddim")


def check_spacing(spacing: str) -> str:
    """``spacing`` if it is one of :data:`SPACINGS`, else a one-line DPSError."""
    if spacing not in SPACINGS:
        from ..errors import DPSError

        raise DPSError(f"unknown spacing {spacing!r}; use {' or '.join(repr(v) for v in SPACINGS)}")
    return spacing


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete VP schedule (derived arrays are computed once and cached).

    :param betas: float64 tensor (N,), beta_i of sampling step i (i = 0 is the least noisy).
    :param timesteps: int64 tensor (N,), the model timestep of step i (0..T-1, increasing).
    """

    betas: torch.Tensor
    timesteps: torch.Tensor

    def __post_init__(self) -> None:
        if self.betas.dtype != torch.float64:
            raise TypeError("Schedule.betas must be float64")
        if self.betas.ndim != 1 or self.betas.shape != self.timesteps.shape:
            raise ValueError("betas and timesteps must be 1-D tensors of the same length")
        if not bool(((self.betas > 0) & (self.betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")

    def __len__(self) -> int:
        return int(self.betas.shape[0])

    @cached_property
    def alphas(self) -> torch.Tensor:
        """alpha_i = 1 - beta_i, float64 (N,)."""
        return 1.0 - self.betas

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_i = prod_{j<=i} alpha_j, float64 (N,)."""
        return torch.cumprod(self.alphas, dim=0)

    @cached_property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        """abar_{i-1} with abar_{-1} = 1, float64 (N,)."""
        a = self.alphas_cumprod
        return torch.cat([a.new_ones(1), a[:-1]])

    @cached_property
    def posterior_variance(self) -> torch.Tensor:
        """beta~_i = beta_i (1 - abar_{i-1}) / (1 - abar_i): variance of q(x_{i-1} | x_i, x_0) (Ho et al. Eq. 7)."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al.'s linear schedule, float64 (T,). guided-diffusion scales the endpoints by 1000 / T."""
    scale = 1000.0 / T
    return torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule (improved DDPM, Eq. 17), float64 (T,)."""

    def abar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


def make_schedule(name: str = "linear", T: int = 1000) -> Schedule:
    """Build a T-step training schedule by name: ``"linear"`` or ``"cosine"``."""
    builders = {"linear": linear_betas, "cosine": cosine_betas}
    if name not in builders:
        raise ValueError(f"unknown beta schedule {name!r}; choose one of {sorted(builders)}")
    betas = builders[name](T)
    return Schedule(betas=betas, timesteps=torch.arange(T, dtype=torch.int64))


def check_step_count(n: int, T: int, who: str = "the sampler", origin: str = "") -> int:
    """``n`` when 1 <= n <= T (a respaced run keeps n of the model's T steps), else a DPSError that says who
    would run how many steps, where the count came from (``origin``, e.g. "--nfe 5000") and what fits."""
    from ..errors import DPSError

    if not 1 <= int(n) <= T:
        raise DPSError(f"{who} would run {n} steps{f' ({origin})' if origin else ''}, but the model has {T} diffusion "
                       f"steps: use 1 to {T}")
    return int(n)


def spaced_timesteps(T: int, n: int, mode: str = "even") -> list[int]:
    """The n model timesteps kept out of T.

    ``"even"``: guided-diffusion's ``space_timesteps(T, [n])``, round(k (T-1)/(n-1)), which keeps both
    0 and T-1. ``"ddim"``: DDIM's ``range(0, T, T // n)``.
    """
    check_step_count(n, T)
    if mode == "ddim":
        return list(range(0, T, T // n))[:n]
    if mode != "even":
        raise ValueError(f"unknown spacing {mode!r}; use 'even' or 'ddim'")
    if n == 1:
        return [T - 1]
    stride = (T - 1) / (n - 1)
    return sorted({round(k * stride) for k in range(n)})


def respace(schedule: Schedule, n: int, mode: str = "even") -> Schedule:
    """Keep n of the schedule's steps; new beta_k = 1 - abar[t_k] / abar[t_{k-1}] (SpacedDiffusion)."""
    return subschedule(schedule, spaced_timesteps(len(schedule), n, mode))


def subschedule(schedule: Schedule, keep: list[int]) -> Schedule:
    """The schedule restricted to the steps ``keep`` (increasing indices into ``schedule``): abar is
    unchanged at the kept steps, beta_k = 1 - abar[keep_k] / abar[keep_{k-1}], abar_{-1} = 1."""
    if any(b <= a for a, b in zip(keep, keep[1:])) or not keep or keep[0] < 0 or keep[-1] >= len(schedule):
        raise ValueError(f"kept steps must be strictly increasing indices in [0, {len(schedule)}), got {keep}")
    abar = schedule.alphas_cumprod[keep]
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    betas = 1.0 - abar / abar_prev
    return Schedule(betas=betas, timesteps=schedule.timesteps[keep].clone())
