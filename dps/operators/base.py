"""Measurement operators: ``A`` maps data-space x (B, *in_shape), images in [0, 1], to y (B, *out_shape).

Linear operators also carry a true adjoint ``A_adjoint`` and a pseudo-inverse ``A_dagger`` (exact
where the structure allows it, conjugate gradients on the normal equations otherwise). Nonlinear
operators are plain differentiable modules. Random parameters (masks, kernels, latents) are drawn once
from a given generator, stored as buffers, and saved with :func:`save_operator` so that a measurement
can be reproduced exactly.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["Operator", "LinearOperator", "MatrixOperator", "conjugate_gradient"]


class Operator(nn.Module):
    """A differentiable forward model. Subclasses implement :meth:`A` and record their constructor
    arguments in ``self.config`` (plain numbers, strings, lists) for saving."""

    name: str = "operator"
    config: dict[str, Any]

    def A(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.config["in_shape"])

    def check_input(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(
                f"{self.name} expects inputs of shape (B, {', '.join(map(str, self.in_shape))}), "
                f"got {tuple(x.shape)}; resize or crop the image, or build the operator for this size"
            )


class LinearOperator(Operator):
    """A linear operator with a true adjoint: <A x, y> = <x, A^T y>."""

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def A_dagger(self, y: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
        """Pseudo-inverse A^+ y: the least-squares solution of A x = y (minimum norm from x = 0),
        by conjugate gradients on A^T A x = A^T y. Subclasses override it where it is exact and cheap."""
        return conjugate_gradient(lambda v: self.A_adjoint(self.A(v)), self.A_adjoint(y), iters=iters, tol=tol)


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
        return x @ self.matrix.to(x).T

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self.matrix.to(y)

    def A_dagger(self, y: torch.Tensor, iters: int = 0, tol: float = 0.0) -> torch.Tensor:
        return y @ self.matrix_pinv.to(y).T


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
