"""Measurement operators: ``A`` maps data-space x (B, *in_shape), images in [0, 1], to y (B, *out_shape).

Linear operators also carry a true adjoint ``A_adjoint`` and a pseudo-inverse ``A_dagger`` (exact
where the structure allows it, conjugate gradients on the normal equations otherwise). Nonlinear
operators are plain differentiable modules. Random parameters (masks, kernels, latents) are drawn once
from a given generator, stored as buffers, and saved with :func:`save_operator` so that a measurement
can be reproduced exactly.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from ..errors import CapabilityMissing, DPSError

if TYPE_CHECKING:  # pragma: no cover
    from .spectral import SpectralForm

__all__ = ["Operator", "LinearOperator", "MatrixOperator", "conjugate_gradient"]


class Operator(nn.Module):
    """A differentiable forward model. Subclasses implement :meth:`A` and record their constructor
    arguments in ``self.config`` (plain numbers, strings, lists) for saving.

    Capabilities that solvers read (declared here, overridden by the operators that have them; no solver
    inspects a concrete class):

    - ``linear``: A is linear with a true adjoint (:class:`LinearOperator`);
    - ``fourier_support``: for Fourier-magnitude operators y = |F pad(x)|, the zero padding p per side,
      which makes the object's support known (phase-retrieval algorithms need it); None otherwise;
    - :meth:`naive_inverse`: a cheap estimate of x from y (the baseline of the demo and figures).
    """

    name: str = "operator"
    config: dict[str, Any]
    linear: bool = False
    fourier_support: Optional[int] = None

    @classmethod
    def from_saved(cls, config: dict[str, Any], state: dict[str, torch.Tensor], **resources: Any) -> "Operator":
        """Rebuild from a saved ``config`` and state dict (see :func:`dps.operators.save_operator`)."""
        raise NotImplementedError(f"{cls.__name__} cannot be rebuilt from a file")

    def A(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.config["in_shape"])

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The shape of one measurement y (computed once, by applying A to zeros)."""
        if "_out_shape" not in self.__dict__:
            ref = next(iter(self.buffers()), None)  # probe on the operator's own device and dtype
            probe = torch.zeros(1, *self.in_shape) if ref is None else \
                torch.zeros(1, *self.in_shape, device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
            with torch.no_grad():
                self.__dict__["_out_shape"] = tuple(self.A(probe).shape[1:])
        return self.__dict__["_out_shape"]

    def naive_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """A cheap estimate of x (B, *in_shape) in [0, 1] from y: here y itself (for same-shape operators)."""
        if tuple(y.shape[1:]) != self.in_shape:
            raise CapabilityMissing(f"{self.name} has no naive inverse for measurements of shape {tuple(y.shape[1:])}")
        return y.clamp(0, 1)

    def check_input(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.in_shape:
            raise DPSError(
                f"{self.name} expects inputs of shape (B, {', '.join(map(str, self.in_shape))}), "
                f"got {tuple(x.shape)}; resize or crop the image, or build the operator for this size"
            )


class LinearOperator(Operator):
    """A linear operator with a true adjoint: <A x, y> = <x, A^T y>.

    Capabilities (overridden where the structure allows it):

    - ``exact_pinv``: :meth:`A_dagger` is the exact pseudo-inverse (masks, SR, matrices), not CG;
    - :meth:`spectral`: the SVD form A = U S V^T (DDRM), or :class:`~dps.errors.CapabilityMissing`;
    - :meth:`solve_normal`: (A^T A + rho I)^-1 rhs, the data step of ADMM (closed form or FFT where possible);
    - :meth:`damped_pinv`: A^+ r for projections, damped where A^+ is not exact.
    """

    linear = True
    exact_pinv: bool = False

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def A_dagger(self, y: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
        """Pseudo-inverse A^+ y: the least-squares solution of A x = y (minimum norm from x = 0),
        by conjugate gradients on A^T A x = A^T y. Subclasses override it where it is exact and cheap."""
        return conjugate_gradient(lambda v: self.A_adjoint(self.A(v)), self.A_adjoint(y), iters=iters, tol=tol)

    def spectral(self) -> "SpectralForm":
        """The SVD form of A (computed once per operator); operators without one raise
        :class:`~dps.errors.CapabilityMissing`. Subclasses implement :meth:`_spectral`."""
        if "_spectral_form" not in self.__dict__:
            self.__dict__["_spectral_form"] = self._spectral()
        return self.__dict__["_spectral_form"]

    def _spectral(self) -> "SpectralForm":
        raise CapabilityMissing(f"no SVD form is available for {self.name}")

    def solve_normal(self, rhs: torch.Tensor, rho: float, x0: torch.Tensor, iters: int = 30) -> torch.Tensor:
        """x = (A^T A + rho I)^-1 rhs, by conjugate gradients started at x0 (overridden where exact)."""
        return x0 + conjugate_gradient(lambda v: self.A_adjoint(self.A(v)) + rho * v,
                                       rhs - self.A_adjoint(self.A(x0)) - rho * x0, iters=iters, tol=1e-8)

    def damped_pinv(self, r: torch.Tensor, delta: float) -> torch.Tensor:
        """A^+ r: exact where ``exact_pinv``; otherwise A^T (A A^T + delta I)^-1 r by CG, which keeps a
        projection from amplifying noise at the operator's zeros (delta ~ sigma_y^2)."""
        if self.exact_pinv:
            return self.A_dagger(r)
        return self.A_adjoint(self.gram_solve(r, 1.0, delta))

    def gram_solve(self, r: torch.Tensor, scale: float, delta: float, iters: int = 50) -> torch.Tensor:
        """(scale A A^T + delta I)^-1 r in measurement space, per sample, by conjugate gradients (r: (B,
        *out_shape)). With scale = r_t^2 and delta = sigma_y^2 it is the inverse covariance of y given x_t
        that Pi-GDM weighs its residual with; with scale = 1 it damps a pseudo-inverse."""
        if scale < 0 or delta < 0 or scale + delta <= 0:
            raise ValueError(f"gram_solve needs scale, delta >= 0, not both 0; got {scale}, {delta}")
        return conjugate_gradient(lambda v: scale * self.A(self.A_adjoint(v)) + delta * v, r, iters=iters, tol=1e-8)

    def naive_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """A^+ y clipped to [0, 1] where the pseudo-inverse is exact; y itself for same-shape operators."""
        if self.exact_pinv:
            return self.A_dagger(y).clamp(0, 1)
        return super().naive_inverse(y)


class MatrixOperator(LinearOperator):
    """y = A x for vectors x (B, d) and a dense matrix A (d_y, d) (the GMM benchmark's operator)."""

    name = "matrix"
    exact_pinv = True

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("matrix", A.clone())
        self.register_buffer("matrix_pinv", torch.linalg.pinv(A))
        self.config = {"in_shape": [A.shape[1]]}

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x @ self.matrix.to(x).T

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self.matrix.to(y)

    def A_dagger(self, y: torch.Tensor, iters: int = 0, tol: float = 0.0) -> torch.Tensor:
        return y @ self.matrix_pinv.to(y).T

    def _spectral(self) -> "SpectralForm":
        from .spectral import dense_form

        return dense_form(self.matrix)

    @classmethod
    def from_saved(cls, config, state, **resources):
        return cls(state["matrix"])


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).reshape(a.shape[0], -1).sum(1)


def conjugate_gradient(matvec, b: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Solve M x = b per sample for a symmetric positive semi-definite M (given as ``matvec``).

    b: (B, ...); each sample has its own step lengths, so samples do not interact.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = _dot(r, r)
    shape = (-1,) + (1,) * (b.ndim - 1)
    b_norm = _dot(b, b).sqrt().clamp_min(torch.finfo(b.dtype).tiny)
    for _ in range(iters):
        Mp = matvec(p)
        denom = _dot(p, Mp)
        alpha = torch.where(denom > 0, rs / denom.clamp_min(torch.finfo(b.dtype).tiny), torch.zeros_like(rs))
        x = x + alpha.reshape(shape) * p
        r = r - alpha.reshape(shape) * Mp
        rs_new = _dot(r, r)
        if bool((rs_new.sqrt() <= tol * b_norm).all()):
            break
        p = r + (rs_new / rs.clamp_min(torch.finfo(b.dtype).tiny)).reshape(shape) * p
        rs = rs_new
    return x
