"""Classical phase retrieval: Fienup's HIO and ER, and OSS (Rodriguez et al. 2013).

They need an operator y = |F pad(x)| whose zero padding p (``op.fourier_support``) gives the object's
support; non-negativity is imposed too. Several random restarts; the best by measurement residual is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..diffusion.denoiser import bcast
from ..errors import check_float, check_int
from ..operators import Operator, fft2c, ifft2c

__all__ = ["hio", "er", "oss", "HIOSettings", "ERSettings"]


@dataclass(frozen=True)
class HIOSettings:
    """HIO's and OSS's settings: ``iters`` iterations with feedback ``beta``, then ``final_er`` error-reduction
    steps; the best of ``restarts`` random starts by measurement residual."""

    restarts: int = 4
    iters: int = 1000
    beta: float = 0.9
    final_er: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "restarts", check_int(self.restarts, "restarts", 1))
        object.__setattr__(self, "iters", check_int(self.iters, "iters", 1))
        object.__setattr__(self, "beta", check_float(self.beta, "beta", 0.0, 2.0))
        object.__setattr__(self, "final_er", check_int(self.final_er, "final_er", 0))


@dataclass(frozen=True)
class ERSettings:
    """ER's settings: ``iters`` error-reduction iterations; the best of ``restarts`` random starts."""

    restarts: int = 4
    iters: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "restarts", check_int(self.restarts, "restarts", 1))
        object.__setattr__(self, "iters", check_int(self.iters, "iters", 1))


def _fourier_projection(g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Keep the phase of F g, impose the measured magnitude y; back to the (real part of the) image."""
    G = fft2c(g.to(torch.complex64 if g.dtype == torch.float32 else torch.complex128))
    return ifft2c(y * torch.exp(1j * torch.angle(G))).real


def _iterate(kind: str, op: Operator, y: torch.Tensor, g: torch.Tensor, iters: int, beta: float,
             final_er: int) -> torch.Tensor:
    H, W = op.in_shape[1:]
    p = op.fourier_support
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


def _residual(op: Operator, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (y - op(x)).flatten(1).norm(dim=1)


def _phase_retrieval(kind: str, op: Operator, y: torch.Tensor, generators, restarts: int, iters: int,
                     beta: float, final_er: int) -> torch.Tensor:
    B = y.shape[0]
    best_x, best_r = None, None
    gens = generators if isinstance(generators, Sequence) else [generators] * B
    for _r in range(restarts):
        g0 = torch.stack([torch.rand(tuple(y.shape[1:]), generator=gens[b], dtype=y.dtype, device=y.device) for b in range(B)])
        x = _iterate(kind, op, y, g0, iters, beta, final_er).clamp(0, 1)
        res = _residual(op, y, x)
        if best_x is None:
            best_x, best_r = x, res
        else:
            better = res < best_r
            best_x = torch.where(bcast(better.to(x.dtype), x) > 0, x, best_x)
            best_r = torch.minimum(res, best_r)
    return best_x


def hio(prior, op, y, noise, generators, settings: HIOSettings = HIOSettings()) -> torch.Tensor:
    """Fienup's hybrid input-output (beta 0.9), then ``final_er`` error-reduction steps; best of restarts."""
    return _phase_retrieval("hio", op, y, generators, settings.restarts, settings.iters, settings.beta,
                            settings.final_er)


def er(prior, op, y, noise, generators, settings: ERSettings = ERSettings()) -> torch.Tensor:
    """Error reduction (Gerchberg-Saxton with support and non-negativity); best of restarts."""
    return _phase_retrieval("er", op, y, generators, settings.restarts, settings.iters, 0.0, 0)


def oss(prior, op, y, noise, generators, settings: HIOSettings = HIOSettings()) -> torch.Tensor:
    """Oversampling smoothness: HIO whose out-of-support region is smoothed by a Gaussian filter whose
    width shrinks over the iterations (Rodriguez et al. 2013); best of restarts."""
    return _phase_retrieval("oss", op, y, generators, settings.restarts, settings.iters, settings.beta,
                            settings.final_er)
