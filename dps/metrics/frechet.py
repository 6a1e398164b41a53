"""The Frechet distance between Gaussians fitted to two feature sets (the formula behind FID)."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["gaussian_stats", "frechet_distance"]


def gaussian_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = features.detach().double().cpu().numpy()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson & Landau 1982; Heusel et al. 2017).

    Tr (S1 S2)^(1/2) is computed as sum_k sqrt(lambda_k) over the eigenvalues of the symmetric PSD matrix
    S1^(1/2) S2 S1^(1/2) (similar to S1 S2), which stays real and stable for singular covariances,
    where a general matrix square root (scipy's sqrtm, pytorch-fid) can return complex noise.
    """
    diff = np.asarray(mu1) - np.asarray(mu2)
    r = _psd_sqrt(np.asarray(sigma1))
    lam = np.linalg.eigvalsh(r @ np.asarray(sigma2) @ r)
    tr_sqrt = float(np.sqrt(np.clip(lam, 0, None)).sum())
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt)
