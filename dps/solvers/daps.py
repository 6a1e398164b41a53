"""DAPS: decoupled annealing posterior sampling (Zhang, Chu, Berner, Sun, Yue, Anandkumar, Song, 2024).

DAPS anneals a noise level sigma_j (x = x_0 + sigma n, the denoiser contract's form) down a grid of ``levels``
noise levels (:mod:`dps.diffusion.grid`; by default EDM's rho grid from sigma_max 100 to sigma_min 0.1, as its
paper runs every model, VP checkpoints included) and, at each level, decouples consecutive iterates:

1. x0_hat = the probability-flow ODE solved from x at sigma_j down to the model's lowest noise level in
   ``ode_steps`` Euler steps on an EDM grid (rho 7; one network forward each; no VJP anywhere in DAPS);
2. x0_y ~ p(x_0 | x_t, y) ∝ exp(-||y - A(x_0)||^2 / (2 tau^2) - ||x_0 - x0_hat||^2 / (2 r_t^2)), r_t = sigma_t,
   by ``langevin_steps`` steps of unadjusted Langevin dynamics (:func:`langevin_x0`), started at x0_hat;
3. x = x0_y + sigma_{j+1} n at the next level (fresh noise), and x0_y itself after the last level.

A VP network is evaluated at the timestep nearest each level (the VP adapter's rule). The budget is
``levels x ode_steps`` network forwards: the paper's configurations are
:data:`DAPS_PRESETS` (DAPS-1K = 200 x 5, the paper's default). Our default is 1000 levels x 1 ODE step
(x0_hat is Tweedie's estimate, so a budget of N forwards buys N annealing levels): not the paper's
proportions, but one step per level was best at 250 forwards on training digits and beat DAPS-1K at 1000 on
the held-out digits (``benchmarks/method_tuning/``).

Langevin step size (ours; the paper's lr is in the units of its [-1, 1] images and its tau): at level j
    eta_j = lr * (1 + j / (levels - 1) (lr_min_ratio - 1)) / L_j,   L_j = a^2 ||A||^2 / tau^2 + 1 / r_j^2,
the curvature bound of the target (a = the prior's data_scale, ||A||^2 the largest eigenvalue of J_A^T J_A
by power iteration: once, exactly, for a linear A; for a nonlinear A at every level at x0_hat, 5 warm-started
iterations times a safety factor 1.5, as its Jacobian changes with x: 0.3 at a grey image and 20-26 at
digits for the nonlinear blur), decaying linearly to
``lr_min_ratio`` of itself as in the paper. tau, the likelihood's standard deviation, is 0.01 (data units)
by default, below the noise level as in the paper (0.01 on its [-1, 1] measurements), which was better than
tau = sigma_y on training digits (``benchmarks/method_tuning/``).
``tau=None`` uses the noise model's sigma, the exact likelihood (the GMM benchmark's protocol, where the
target is the exact posterior). tau is at least 1e-3.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..diffusion.denoiser import Prior
from ..diffusion.grid import GridSpec, denoise_on, edm_grid
from ..diffusion.steps import ddim_grid_step, randn
from ..errors import check_float, check_int
from ..noise import NoiseModel
from .dps import DivergenceGuard, frozen_parameters

__all__ = ["daps", "DAPSSettings", "DAPS_PRESETS", "langevin_x0", "operator_norm_sq", "pf_ode_x0"]

#: The paper's configurations: name -> (annealing levels, ODE steps per level); budget = their product.
DAPS_PRESETS: dict[str, tuple[int, int]] = {"daps-100": (50, 2), "daps-1k": (200, 5), "daps-4k": (500, 8)}


def operator_norm_sq(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, iters: int = 20,
                     v: Optional[torch.Tensor] = None) -> float:
    """The largest eigenvalue of J^T J, J the Jacobian of ``op`` at x (B = 1 of x used), by power iteration
    with forward-mode and reverse-mode products (from ``v``, else a fixed random start; ``v`` is updated in
    place, so a caller can warm-start the next estimate); for a linear operator it is ||A||^2."""
    x = x[:1].detach()
    if v is None:
        g = torch.Generator(device=x.device).manual_seed(0)
        v = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    out = v
    lam = 0.0
    for _ in range(iters):
        v = v / v.norm().clamp_min(1e-30)
        jv = _jvp(op, x, v)
        _, vjp = torch.func.vjp(op, x)
        (w,) = vjp(jv)
        lam = float((w * v).sum())
        v = w
    out.copy_(v / v.norm().clamp_min(1e-30))
    return max(lam, 0.0)


def _jvp(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """J v by forward-mode AD; where a layer has no forward-mode rule (fused attention kernels on the CPU, a VQ
    codebook's distance search), with attention on its plain (math) kernel and by the double-VJP identity
    J v = d/du <J^T u, v> (reverse mode twice; exact as well)."""
    try:
        return torch.func.jvp(op, (x,), (v,))[1]
    except NotImplementedError:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = op(xg)
            u = torch.zeros_like(out, requires_grad=True)
            (g,) = torch.autograd.grad(out, xg, u, create_graph=True)
            (jv,) = torch.autograd.grad(g, u, v)
        return jv.detach()


def langevin_x0(x0_hat: torch.Tensor, r: float, data_grad: Callable[[torch.Tensor], torch.Tensor],
                curvature: torch.Tensor, steps: int, lr: float, generators) -> torch.Tensor:
    """Unadjusted Langevin dynamics on U(x) = f(x) + ||x - x0_hat||^2 / (2 r^2), started at x0_hat:

        x <- x - eta grad U(x) + sqrt(2 eta) z,   eta = lr / (curvature + 1 / r^2)   (per sample),

    whose stationary law approaches exp(-U) as lr -> 0 (for a quadratic U with curvature c per direction
    it is Gaussian with the exact mean and variance 1 / (c (1 - lr c / (2 L)))). ``data_grad(x)`` is grad f,
    f the negative log-likelihood; ``curvature`` (B,) an upper bound of its Hessian's largest eigenvalue.
    Returns the last iterate (detached), shape of x0_hat.
    """
    shape = (-1,) + (1,) * (x0_hat.ndim - 1)
    eta = (lr / (curvature + 1.0 / r ** 2)).reshape(shape)
    noise_scale = (2 * eta).sqrt()
    x = x0_hat.detach().clone()
    for _ in range(steps):
        g = data_grad(x)
        z = randn(x.shape, generators, x.device, x.dtype)
        x = x - eta * (g + (x - x0_hat) / r ** 2) + noise_scale * z
    return x


@torch.no_grad()
def pf_ode_x0(prior: Prior, x: torch.Tensor, sigma: float, ode_steps: int, clip: bool = True) -> torch.Tensor:
    """x0_hat from x = x_0 + sigma n (B, *event_shape) by ``ode_steps`` Euler steps of the probability-flow ODE
    (DDIM, eta 0) on an EDM grid (rho 7) from sigma down to the model's lowest noise level; one step is
    Tweedie's D(x; sigma). Model space."""
    lo = prior.sigma_range()[0]
    grid = edm_grid(ode_steps if sigma > lo else 1, min(lo, sigma), sigma)
    x0 = x
    for i in reversed(range(len(grid))):
        x0 = denoise_on(prior, x, grid, i).x0
        x0 = prior.clip_x0(x0) if clip else x0
        x = ddim_grid_step(x, x0, grid, i, torch.zeros_like(x), 0.0)
    return x0


@dataclass(frozen=True)
class DAPSSettings:
    """DAPS's settings (module docstring).

    :param levels: annealing levels; :param ode_steps: probability-flow ODE steps per level (network forwards);
    :param langevin_steps: Langevin steps per level; :param lr: Langevin step size relative to the curvature
    bound, decaying linearly to ``lr_min_ratio`` of itself; :param tau: the likelihood's standard deviation
    (data units; None: the noise model's sigma); :param grid: the annealing levels (EDM's grid from 100 to 0.1 by
    default; any :class:`~dps.diffusion.grid.GridSpec`).
    """

    levels: int = 1000
    ode_steps: int = 1
    langevin_steps: int = 100
    lr: float = 0.5
    lr_min_ratio: float = 0.01
    tau: Optional[float] = 0.01
    grid: GridSpec = GridSpec("edm", sigma_min=0.1, sigma_max=100.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", check_int(self.levels, "daps levels", 1))
        object.__setattr__(self, "ode_steps", check_int(self.ode_steps, "daps ode_steps", 1))
        object.__setattr__(self, "langevin_steps", check_int(self.langevin_steps, "daps langevin_steps", 0))
        object.__setattr__(self, "lr", check_float(self.lr, "daps lr", 0.0, lo_open=True))
        object.__setattr__(self, "lr_min_ratio", check_float(self.lr_min_ratio, "daps lr_min_ratio", 0.0, 1.0,
                                                             lo_open=True))
        if self.tau is not None:
            object.__setattr__(self, "tau", check_float(self.tau, "daps tau", 0.0, lo_open=True))


def daps(prior: Prior, op, y: torch.Tensor, noise: NoiseModel, generators, settings: DAPSSettings = DAPSSettings(),
         callback=None) -> torch.Tensor:
    """DAPS with ``levels`` annealing levels of ``ode_steps`` network forwards each; returns x (B,
    *event_shape) in data space. Works for any differentiable operator (Gaussian noise)."""
    levels, ode_steps, langevin_steps = settings.levels, settings.ode_steps, settings.langevin_steps
    lr, lr_min_ratio, tau = settings.lr, settings.lr_min_ratio, settings.tau
    B = y.shape[0]
    a = prior.data_scale
    tau2 = max(tau if tau is not None else noise.typical_sigma, 1e-3) ** 2
    grey = torch.full((1, *prior.event_shape), prior.data_offset, dtype=y.dtype, device=y.device)
    power_v = torch.randn(grey.shape, generator=torch.Generator(device=y.device).manual_seed(0), device=y.device,
                          dtype=y.dtype)

    with torch.enable_grad():
        linear_norm2 = operator_norm_sq(op, grey, 50, power_v) if op.linear else None

    def curvature(x0: torch.Tensor) -> torch.Tensor:  # (B,) bound of the data term's Hessian at x0 (model space)
        if linear_norm2 is not None:
            norm2 = linear_norm2
        else:
            with torch.enable_grad():
                norm2 = 1.5 * operator_norm_sq(op, prior.to_data(x0), 5, power_v)
        return torch.full((B,), a * a * norm2 / tau2, dtype=y.dtype, device=y.device)

    def data_grad(x0: torch.Tensor) -> torch.Tensor:  # grad of -log p(y | x_0) = ||y - A(d(x_0))||^2 / (2 tau^2)
        if op.linear:  # a A^T (A d(x_0) - y) / tau^2, no autograd (the Langevin loop's hot path)
            return (a / tau2) * op.A_adjoint(op(prior.to_data(x0)) - y)
        with torch.enable_grad():
            x0 = x0.detach().requires_grad_(True)
            (g,) = torch.autograd.grad((y - op(prior.to_data(x0))).pow(2).sum() / (2 * tau2), x0)
        return g

    grid = settings.grid.build(prior, levels)
    sigmas = [grid.sigma(i) for i in reversed(range(len(grid)))]  # from the top
    guard = DivergenceGuard(prior)
    x = randn((B, *prior.event_shape), generators, y.device, y.dtype) * math.sqrt(1.0 + sigmas[0] ** 2)
    with frozen_parameters(prior):
        for j, sigma in enumerate(sigmas):
            i = len(sigmas) - 1 - j
            x0_hat = pf_ode_x0(prior, x, sigma, ode_steps)
            decay = 1.0 + (j / (len(sigmas) - 1) if len(sigmas) > 1 else 1.0) * (lr_min_ratio - 1.0)
            x0_y = langevin_x0(x0_hat, sigma, data_grad, curvature(x0_hat), langevin_steps, lr * decay, generators)
            guard.check(x0_y, i, grid.where(i), "DAPS's Langevin step is too large for this problem: lower lr")
            if j + 1 < len(sigmas):
                z = randn(x.shape, generators, x.device, x.dtype)
                x = x0_y + sigmas[j + 1] * z
            else:
                x = x0_y
            if callback is not None:
                callback({"i": i, "t": grid.timestep(i), "sigma": sigma, "x": x.clone(), "x0": x0_hat.clone()})
    return prior.clip_data(prior.to_data(x))
