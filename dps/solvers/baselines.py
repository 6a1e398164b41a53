"""The paper's comparison methods behind one signature.

Every method is ``solve(prior, A, y, noise, generators, **settings) -> (x, residual)`` with x (B, C, H, W)
in [0, 1] and residual (B,) = ||y - A(x)|| per image. Images and measurements are in data space ([0, 1]);
diffusion-based methods work in the prior's space and map with ``prior.to_data`` / ``prior.from_data``.

=================  ============================================================================  ==========
method             what it does (source)                                                         operators
=================  ============================================================================  ==========
``ddrm``           SVD-space denoising diffusion restoration, 20 steps, eta 0.85, eta_b 1       SVD-able
                   (Kawar et al. 2022; :mod:`dps.solvers.ddrm`)
``mcg``            DPS's gradient step, then the projection x <- x - A^+(A x - y_i) onto the     linear
                   measurement noised to the level of step i (Chung et al. 2022a, "MCG")
``score_sde``      unconditional DDPM steps, each followed by the same projection onto the        linear
                   noised measurement: replacement for inpainting (Song et al. 2021b), the
                   low-frequency refinement A^+ A for SR and deblurring (ILVR, Choi et al. 2021)
``pnp_admm``       ADMM with the exact data step (closed form for masks, FFT for circular blur,   linear
                   CG otherwise) and, as the denoiser, the prior's own
                   Tweedie denoiser at a fixed noise level (Chan et al. 2016; our substitute
                   for the paper's DnCNN)
``admm_tv``        anisotropic total-variation regularised least squares by ADMM                  linear
``hio``, ``er``,   Fienup's hybrid input-output and error reduction, and oversampling smoothness  phase
``oss``            (Rodriguez et al. 2013), with support and non-negativity, several random      retrieval
                   restarts, the best kept by measurement residual
=================  ============================================================================  ==========

Operators outside a method's column raise :class:`NotApplicable` (the tables print "n/a").
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from ..diffusion.denoiser import Prior, bcast
from ..diffusion.schedule import respace
from ..diffusion.steps import ddpm_step, randn
from ..noise import NoiseModel
from ..operators import Blur, Inpainting, LinearOperator, Operator, PhaseRetrieval, conjugate_gradient, fft2c
from .dps import DPSConfig, dps_sample, frozen_parameters

__all__ = ["NotApplicable", "BASELINES", "FOLLOWS_TASK_STEPS", "ddrm", "mcg", "score_sde", "pnp_admm", "admm_tv", "hio", "er", "oss",
           "noised_measurement_projection"]


class NotApplicable(ValueError):
    """The method does not apply to this operator (e.g. a projection method on a nonlinear blur)."""


def _require_linear(op: Operator, method: str) -> LinearOperator:
    if not isinstance(op, LinearOperator):
        raise NotApplicable(f"{method} needs a linear operator with a pseudo-inverse; {op.name} is not one")
    return op


def _clip_x0(prior: Prior, x0: torch.Tensor) -> torch.Tensor:
    """Clamp x0_hat to the prior's data bounds (the authors' clip_denoised), if it has any."""
    bounds = getattr(prior, "data_bounds", None)
    return x0 if bounds is None else prior.from_data(prior.to_data(x0).clamp(*bounds))


def _residual(op: Operator, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (y - op(x)).flatten(1).norm(dim=1)


# ------------------------------------------------------------------------------------------- projections
def pseudo_inverse(op: LinearOperator, r: torch.Tensor, delta: float) -> torch.Tensor:
    """A^+ r: exact for masks and SR; for other operators (blur) the damped A^T (A A^T + delta I)^-1 r by CG,
    which keeps the projection from amplifying noise at the kernel's zeros (delta ~ sigma_y^2)."""
    if getattr(op, "exact_pinv", False):  # masks, SR, dense matrices
        return op.A_dagger(r)
    z = conjugate_gradient(lambda v: op(op.A_adjoint(v)) + delta * v, r, iters=50, tol=1e-8)
    return op.A_adjoint(z)


def _delta(noise: NoiseModel) -> float:
    return max(float(getattr(noise, "sigma", 0.1)) ** 2, 1e-4)


def noised_measurement_projection(prior: Prior, op: LinearOperator, y: torch.Tensor, x: torch.Tensor,
                                  abar: float, eps: torch.Tensor, delta: float = 1e-4) -> torch.Tensor:
    """Project model-space x_i onto {x : A d(x) = y_i}, with y_i the measurement noised to level i.

    With d(x) = a x + b the affine map to data space (a = 1/2, b = 1/2 for [-1, 1] models), the data part
    of x_i is sqrt(abar) x_0, so the target is  A d_lin(x_i) = sqrt(abar) A d_lin(x0)  plus the forward
    noise sqrt(1 - abar) A eps (eps drawn fresh). In model space:
        x <- x - A^+(A x - y_i) / a,   y_i = sqrt(abar) (y - A b_img) + sqrt(1 - abar) A (a eps)
    where A b_img is A applied to the constant image b. Inpainting: this replaces the observed pixels.
    """
    ones = torch.ones_like(x[:1])
    offset = prior.to_data(torch.zeros_like(x[:1]))  # d(0) = b
    scale = (prior.to_data(ones) - offset).flatten()[0]  # a
    Ab = op(offset)
    y_i = math.sqrt(abar) * (y - Ab) + math.sqrt(1 - abar) * op(scale * eps)
    r = op(scale * x) - y_i
    return x - pseudo_inverse(op, r, delta) / scale


# ------------------------------------------------------------------------------------------- MCG / score-SDE
def mcg(prior: Prior, op: Operator, y: torch.Tensor, noise: NoiseModel, generators, steps: int = 1000,
        zeta: float = 1.0, **_: object) -> tuple[torch.Tensor, torch.Tensor]:
    """MCG: every DPS step (rule "paper", zeta') is followed by the projection onto the noised measurement."""
    A = _require_linear(op, "mcg")
    schedule = respace(prior.schedule, steps)
    state = {"gen": generators}

    def project(s: dict) -> None:  # runs after each DPS update, on x_{i-1}
        i = s["i"]
        abar_prev = float(schedule.alphas_cumprod_prev[i])
        eps = randn(s["x"].shape, state["gen"], s["x"].device, s["x"].dtype)
        s["x"].copy_(noised_measurement_projection(prior, A, y, s["x"], abar_prev, eps, _delta(noise)))

    res = dps_sample(prior, A, y, noise, DPSConfig(steps=steps, zeta=zeta), generator=generators, callback=project)
    x = res.x[:, 0]
    return x, _residual(A, y, x)


@torch.no_grad()
def score_sde(prior: Prior, op: Operator, y: torch.Tensor, noise: NoiseModel, generators, steps: int = 1000,
              **_: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Unconditional DDPM sampling with the noised-measurement projection after every step."""
    A = _require_linear(op, "score_sde")
    schedule = respace(prior.schedule, steps)
    B = y.shape[0]
    x = randn((B, *prior.event_shape), generators, y.device, y.dtype)
    x0 = x
    for i in reversed(range(len(schedule))):
        t = torch.full((B,), int(schedule.timesteps[i]), dtype=torch.long, device=y.device)
        out = prior(x, t)
        x0 = _clip_x0(prior, out.x0)
        z = randn(x.shape, generators, x.device, x.dtype) if i > 0 else torch.zeros_like(x)
        var = "learned_range" if out.var_values is not None else "fixed_small"
        x = ddpm_step(x, x0, schedule, i, z, var, out.var_values)
        abar_prev = float(schedule.alphas_cumprod_prev[i])
        eps = randn(x.shape, generators, x.device, x.dtype) if i > 0 else torch.zeros_like(x)
        x = noised_measurement_projection(prior, A, y, x, abar_prev, eps, _delta(noise))
    x = prior.to_data(x)
    bounds = getattr(prior, "data_bounds", None)
    x = x.clamp(*bounds) if bounds is not None else x
    return x, _residual(A, y, x)


# ------------------------------------------------------------------------------------------- ADMM
def _data_step(A: LinearOperator, rhs: torch.Tensor, rho: float, x0: torch.Tensor, iters: int) -> torch.Tensor:
    """Solve (A^T A + rho I) x = rhs: closed form for masks, FFT for circular blur (A^T A is diagonal in
    Fourier space with eigenvalues |H|^2, H the DFT of the impulse response), conjugate gradients otherwise."""
    if isinstance(A, Inpainting):
        return rhs / (A.mask.to(rhs.dtype) + rho)
    if isinstance(A, Blur) and A.boundary == "circular":
        delta = torch.zeros(1, *A.in_shape, dtype=rhs.dtype, device=rhs.device)
        delta[..., 0, 0] = 1
        H = torch.fft.fft2(A(delta))
        return torch.fft.ifft2(torch.fft.fft2(rhs) / (H.abs() ** 2 + rho)).real
    return x0 + conjugate_gradient(lambda v: A.A_adjoint(A(v)) + rho * v, rhs - A.A_adjoint(A(x0)) - rho * x0,
                                   iters=iters, tol=1e-8)


def pnp_admm(prior: Prior, op: Operator, y: torch.Tensor, noise: NoiseModel, generators, iters: int = 40,
             rho: float = 1.0, denoiser_sigma: float = 0.1, cg_iters: int = 30,
             **_: object) -> tuple[torch.Tensor, torch.Tensor]:
    """PnP-ADMM: x = argmin ||Ax - y||^2/2 + rho/2 ||x - z + u||^2;  z = D_sigma(x + u);  u += x - z.

    D_sigma is the prior's Tweedie denoiser for data-space noise of std ``denoiser_sigma``: the image
    v = x + sigma n is mapped to model space and scaled to x_t = sqrt(abar_t) v_model with
    (1 - abar_t) / abar_t = (sigma / a)^2 (a = data units per model unit), t the nearest timestep.
    """
    A = _require_linear(op, "pnp_admm")
    abar_all = prior.schedule.alphas_cumprod
    a = float((prior.to_data(torch.ones(1)) - prior.to_data(torch.zeros(1)))[0])
    target = 1.0 / (1.0 + (denoiser_sigma / a) ** 2)
    t_idx = int((abar_all - target).abs().argmin())
    abar_t = float(abar_all[t_idx])

    @torch.no_grad()
    def denoise(v: torch.Tensor) -> torch.Tensor:
        t = torch.full((v.shape[0],), int(prior.schedule.timesteps[t_idx]), dtype=torch.long, device=v.device)
        x_t = math.sqrt(abar_t) * prior.from_data(v)
        return prior.to_data(_clip_x0(prior, prior(x_t, t).x0))

    aty = A.A_adjoint(y)
    x = torch.full((y.shape[0], *A.in_shape), 0.5, dtype=y.dtype, device=y.device)  # flat grey start
    z, u = x.clone(), torch.zeros_like(x)
    with frozen_parameters(prior):
        for _k in range(iters):
            x = _data_step(A, aty + rho * (z - u), rho, x, cg_iters)
            z = denoise(x + u)
            u = u + x - z
    return z.clamp(0, 1), _residual(A, y, z)


def _grad(x: torch.Tensor) -> torch.Tensor:
    """Forward differences with circular boundary: (B, 2, C, H, W)."""
    return torch.stack([x.roll(-1, -1) - x, x.roll(-1, -2) - x], dim=1)


def _grad_adjoint(g: torch.Tensor) -> torch.Tensor:
    return (g[:, 0].roll(1, -1) - g[:, 0]) + (g[:, 1].roll(1, -2) - g[:, 1])


def admm_tv(prior: Optional[Prior], op: Operator, y: torch.Tensor, noise: NoiseModel, generators,
            iters: int = 100, lam: float = 0.01, rho: float = 0.1, cg_iters: int = 20,
            **_: object) -> tuple[torch.Tensor, torch.Tensor]:
    """min_x 1/2 ||A x - y||^2 + lam ||D x||_1 (anisotropic TV) by ADMM with z = D x:
    x-step (A^T A + rho D^T D) x = A^T y + rho D^T (z - u) by CG; z-step soft-thresholding at lam/rho."""
    A = _require_linear(op, "admm_tv")
    aty = A.A_adjoint(y)
    x = torch.full((y.shape[0], *A.in_shape), 0.5, dtype=y.dtype, device=y.device)  # flat grey start
    z = _grad(x)
    u = torch.zeros_like(z)
    for _k in range(iters):
        rhs = aty + rho * _grad_adjoint(z - u)
        x = x + conjugate_gradient(lambda v: A.A_adjoint(A(v)) + rho * _grad_adjoint(_grad(v)),
                                   rhs - A.A_adjoint(A(x)) - rho * _grad_adjoint(_grad(x)), iters=cg_iters, tol=1e-8)
        v = _grad(x) + u
        z = v.sign() * (v.abs() - lam / rho).clamp_min(0)
        u = u + _grad(x) - z
    x = x.clamp(0, 1)
    return x, _residual(A, y, x)


# ------------------------------------------------------------------------------------------- phase retrieval
def _phase_setup(op: Operator, method: str) -> PhaseRetrieval:
    if not isinstance(op, PhaseRetrieval):
        raise NotApplicable(f"{method} is a phase-retrieval algorithm; {op.name} is not phase retrieval")
    return op


def _fourier_projection(g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Keep the phase of F g, impose the measured magnitude y; back to the (real part of the) image."""
    G = fft2c(g.to(torch.complex64 if g.dtype == torch.float32 else torch.complex128))
    G = y * torch.exp(1j * torch.angle(G))
    return torch.fft.ifftshift(torch.fft.ifft2(torch.fft.fftshift(G, dim=(-2, -1)), norm="ortho"),
                               dim=(-2, -1)).real


def _iterate(kind: str, op: PhaseRetrieval, y: torch.Tensor, g: torch.Tensor, iters: int, beta: float,
             final_er: int) -> torch.Tensor:
    H, W = op.in_shape[1:]
    p = op.pad
    support = torch.zeros(g.shape[-2:], dtype=torch.bool, device=g.device)
    support[p:p + H, p:p + W] = True
    Hp, Wp = g.shape[-2:]
    fy = torch.fft.fftfreq(Hp, device=g.device)[:, None]
    fx = torch.fft.fftfreq(Wp, device=g.device)[None, :]
    for k in range(iters + final_er):
        gp = _fourier_projection(g, y)
        ok = support & (gp >= 0)
        if kind == "er" or k >= iters:
            g = torch.where(ok, gp, torch.zeros_like(gp))
        else:
            hio = torch.where(ok, gp, g - beta * gp)
            if kind == "oss":  # smooth the region outside the support with a shrinking Gaussian filter
                alpha = Hp * (1.0 - k / iters) + 1.0 / Hp
                filt = torch.exp(-0.5 * (fx ** 2 + fy ** 2) * (2 * math.pi * alpha) ** 2 / 4.0)
                smooth = torch.fft.ifft2(torch.fft.fft2(hio) * filt).real
                hio = torch.where(support, hio, smooth)
            g = hio
    return g[..., p:p + H, p:p + W]


def _phase_retrieval(kind: str, op: Operator, y: torch.Tensor, generators, restarts: int, iters: int,
                     beta: float, final_er: int) -> tuple[torch.Tensor, torch.Tensor]:
    op = _phase_setup(op, kind)
    B = y.shape[0]
    best_x, best_r = None, None
    gens = generators if isinstance(generators, Sequence) else [generators] * B
    for r in range(restarts):
        g0 = torch.stack([torch.rand(tuple(y.shape[1:]), generator=gens[b], dtype=y.dtype) for b in range(B)])
        x = _iterate(kind, op, y, g0, iters, beta, final_er).clamp(0, 1)
        res = _residual(op, y, x)
        if best_x is None:
            best_x, best_r = x, res
        else:
            better = res < best_r
            best_x = torch.where(bcast(better.to(x.dtype), x) > 0, x, best_x)
            best_r = torch.minimum(res, best_r)
    return best_x, best_r


def hio(prior, op, y, noise, generators, restarts: int = 4, iters: int = 1000, beta: float = 0.9,
        final_er: int = 50, **_: object):
    """Fienup's hybrid input-output (beta 0.9), then ``final_er`` error-reduction steps; best of restarts."""
    return _phase_retrieval("hio", op, y, generators, restarts, iters, beta, final_er)


def er(prior, op, y, noise, generators, restarts: int = 4, iters: int = 1000, **_: object):
    """Error reduction (Gerchberg-Saxton with support and non-negativity); best of restarts."""
    return _phase_retrieval("er", op, y, generators, restarts, iters, 0.0, 0)


def oss(prior, op, y, noise, generators, restarts: int = 4, iters: int = 1000, beta: float = 0.9,
        final_er: int = 50, **_: object):
    """Oversampling smoothness: HIO whose out-of-support region is smoothed by a Gaussian filter whose
    width shrinks over the iterations (Rodriguez et al. 2013); best of restarts."""
    return _phase_retrieval("oss", op, y, generators, restarts, iters, beta, final_er)


def ddrm(prior, op, y, noise, generators, steps: int = 20, eta: float = 0.85, eta_b: float = 1.0, **_: object):
    """DDRM (Kawar et al. 2022); see :mod:`dps.solvers.ddrm`."""
    from .ddrm import ddrm as run

    return run(prior, op, y, noise, generators, steps=steps, eta=eta, eta_b=eta_b)


#: name -> solver; the one table from method names to functions.
BASELINES: dict[str, Callable] = {"ddrm": ddrm, "mcg": mcg, "score_sde": score_sde, "pnp_admm": pnp_admm,
                                  "admm_tv": admm_tv, "hio": hio, "er": er, "oss": oss}
#: methods whose number of diffusion steps follows the task's DPS steps (DDRM keeps its own 20).
FOLLOWS_TASK_STEPS = ("mcg", "score_sde")
