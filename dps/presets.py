"""Step-size presets (zeta', rule "paper").

``AUTHORS_CONFIG_ZETA``: the ``scale`` of each task config in the authors' public repository; with our
[0, 1] image convention and a linear operator this equals zeta' exactly (see :mod:`dps.solvers.dps`).
Those configs use Gaussian noise sigma = 0.05 on [-1, 1] images (``GaussianNoise.authors()``), except
Gaussian deblurring and phase retrieval, which use Poisson noise with rate 1.
"""
from __future__ import annotations

AUTHORS_CONFIG_ZETA: dict[str, float] = {
    "super_resolution": 0.3,
    "inpainting_box": 0.5,
    "inpainting_random": 0.5,
    "gaussian_blur": 0.3,
    "motion_blur": 0.3,
    "phase_retrieval": 1.0,
    "nonlinear_blur": 0.3,
}
