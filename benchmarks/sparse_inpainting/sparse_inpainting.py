"""DDRM and Score-SDE on random inpainting at 50% and 92% missing, with the embedded model (4 held-out
digits): the check behind the reading of benchmarks/images_digits/README.md. DDRM runs its own 20 steps,
Score-SDE 100 steps.

    python benchmarks/sparse_inpainting/sparse_inpainting.py
"""
from __future__ import annotations

import torch

import dps
from dps.data.digits import digits_split
from dps.metrics import psnr
from dps.noise import GaussianNoise
from dps.operators import Inpainting
from dps.solvers.ddrm import DDRMSettings
from dps.solvers.methods import reconstruct
from dps.solvers.projection import ScoreSDESettings

prior = dps.load_model("default")
x, _ = digits_split("held_out")
x = x[:4]
SETTINGS = {"ddrm": DDRMSettings(), "score_sde": ScoreSDESettings(steps=100)}
for missing in (0.5, 0.92):
    op = Inpainting.random((1, 32, 32), missing, generator=torch.Generator().manual_seed(0))
    for sigma in (0.0, 0.025):
        y = op(x) + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * op.mask
        for method in ("ddrm", "score_sde"):
            out = reconstruct(method, prior, op, y, GaussianNoise(max(sigma, 1e-4)), SETTINGS[method],
                              [torch.Generator().manual_seed(k) for k in range(4)]).x[:, 0]
            print(f"missing {missing:.2f} sigma {sigma:.3f} {method:9s} PSNR {float(psnr(out, x).mean()):.2f} dB")
