"""Full-reference image metrics on (B, C, H, W) tensors in [0, 1]; both return one value per image (B,)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim"]


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR = 10 log10(data_range^2 / MSE) per image, in dB (inf for identical images)."""
    mse = ((x.double() - ref.double()) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(data_range ** 2 / mse)).to(x.dtype)


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    g = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(g ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """SSIM (Wang et al. 2004) per image, mean over channels and valid pixels.

    Gaussian-weighted local statistics (11 x 11, sigma 1.5; no padding), sample covariances
    (N/(N-1) correction), C1 = (k1 L)^2, C2 = (k2 L)^2: the settings of scikit-image's
    ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=True)``, which the tests
    compare against. Images smaller than the window use a window of their size.
    """
    b, c, h, w = x.shape
    win_size = min(win_size, h, w)
    if win_size % 2 == 0:
        win_size -= 1
    x, ref = x.double(), ref.double()
    g = _gaussian_window(win_size, sigma, x.dtype, x.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, win_size, win_size)

    def filt(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, kernel, groups=c)

    n = win_size * win_size
    cov_norm = n / (n - 1)
    ux, uy = filt(x), filt(ref)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(ref * ref) - uy * uy)
    vxy = cov_norm * (filt(x * ref) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()
