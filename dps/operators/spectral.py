"""The spectral (SVD) form A = U S V^T of a linear operator, as DDRM and other spectral methods use it.

Operators that have one return it from :meth:`~dps.operators.LinearOperator.spectral`: masks (V = U = I),
super-resolution and separable blur (Kronecker products of the SVDs of two 1-D matrices), dense matrices.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["SpectralForm", "blur_matrix_1d", "full_svd", "kron_form", "dense_form"]


class SpectralForm:
    """A = U S V^T for images (C, H, W) acting per channel; spectral coordinates have shape (C, H, W).

    ``kind="mask"``: V = U = I, s = mask (H, W). ``kind="dense"``: vectors (d,), A = U S V^T of a matrix. ``kind="kron"``: A X = Mh X Mw^T with full SVDs of Mh
    (m_h x H) and Mw (m_w x W); s_ij = sh_i sw_j (zero beyond m_h, m_w), and U^T y is placed in the top-left
    (m_h, m_w) corner of the (H, W) spectral grid.
    """

    def __init__(self, kind: str, s: torch.Tensor, mats: Optional[tuple] = None,
                 out_hw: Optional[tuple[int, int]] = None) -> None:
        self.kind, self.s, self.mats, self.out_hw = kind, s, mats, out_hw

    def Vt(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "mask":
            return x
        if self.kind == "dense":
            return x @ self.mats[1].to(x)
        Uh, Vh, Uw, Vw = self.mats
        return torch.einsum("hi,bchw,wj->bcij", Vh.to(x), x, Vw.to(x))

    def V(self, xb: torch.Tensor) -> torch.Tensor:
        if self.kind == "mask":
            return xb
        if self.kind == "dense":
            return xb @ self.mats[1].to(xb).T
        Uh, Vh, Uw, Vw = self.mats
        return torch.einsum("hi,bcij,wj->bchw", Vh.to(xb), xb, Vw.to(xb))

    def Ut(self, y: torch.Tensor) -> torch.Tensor:
        """U^T y placed on the (C, H, W) spectral grid."""
        if self.kind == "mask":
            return y
        if self.kind == "dense":
            U, V = self.mats
            out = torch.zeros(y.shape[0], V.shape[0], dtype=y.dtype, device=y.device)
            out[:, : U.shape[1]] = y @ U.to(y)
            return out
        Uh, Vh, Uw, Vw = self.mats
        core = torch.einsum("oi,bcop,pj->bcij", Uh.to(y), y, Uw.to(y))
        out = torch.zeros(*y.shape[:2], Vh.shape[0], Vw.shape[0], dtype=y.dtype, device=y.device)
        out[..., : core.shape[-2], : core.shape[-1]] = core
        return out

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """A x computed from the factors (for tests): U S V^T x."""
        z = self.s.to(x) * self.Vt(x)
        if self.kind == "mask":
            return z
        if self.kind == "dense":
            U, V = self.mats
            return z[:, : U.shape[1]] @ U.to(x).T
        Uh, Vh, Uw, Vw = self.mats
        mh, mw = Uh.shape[0], Uw.shape[0]
        return torch.einsum("oi,bcij,pj->bcop", Uh.to(x), z[..., :mh, :mw], Uw.to(x))


def blur_matrix_1d(g: torch.Tensor, n: int, idx: torch.Tensor) -> torch.Tensor:
    """(n, n) matrix of the 1-D cross-correlation with taps g over a padded signal whose position q reads
    source ``idx[q]`` (-1 = zero padding): out[i] = sum_a g[a] x[idx[i + a]]."""
    M = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for a in range(len(g)):
            j = int(idx[i + a])
            if j >= 0:
                M[i, j] += float(g[a])
    return M


def full_svd(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    U, S, Vh = torch.linalg.svd(M.double(), full_matrices=True)
    return U, S, Vh.T


def kron_form(Mh: torch.Tensor, Mw: torch.Tensor) -> SpectralForm:
    """The spectral form of X -> Mh X Mw^T (per channel) from the SVDs of the two 1-D matrices."""
    Uh, sh, Vh = full_svd(Mh)
    Uw, sw, Vw = full_svd(Mw)
    H, W = Vh.shape[0], Vw.shape[0]
    s = torch.zeros(H, W, dtype=torch.float64)
    s[: len(sh), : len(sw)] = sh[:, None] * sw[None, :]
    return SpectralForm("kron", s, (Uh, Vh, Uw, Vw))


def dense_form(matrix: torch.Tensor) -> SpectralForm:
    """The spectral form of a dense (d_y, d) matrix acting on vectors (d,)."""
    U, S, Vh = torch.linalg.svd(matrix.double(), full_matrices=True)
    s = torch.zeros(Vh.shape[0], dtype=torch.float64)
    s[: len(S)] = S
    return SpectralForm("dense", s, (U, Vh.T))
