"""Metrics: PSNR, SSIM, the Frechet distance, and the embedded digit classifier's scores."""
from .frechet import frechet_distance, gaussian_stats
from .image import psnr, ssim

__all__ = ["frechet_distance", "gaussian_stats", "psnr", "ssim"]
