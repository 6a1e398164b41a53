"""The one seed formula. Every command derives its random streams from the user's ``seed`` here.

=====================  =======================================  ======================================
stream                 seed                                     used for
=====================  =======================================  ======================================
operator               ``seed``                                 masks, kernels, latents of the operator
measurement noise      ``seed * 1_000_003 + i``                 image i's noise (its index in the run)
sample k of image i    ``(seed * 1_000_003 + i) * 1_009 + k + 1``  the sampler's start noise and steps
unconditional sample   ``seed * 1_000_003 + k``                 ``dps sample``, ``dps bench prior``
=====================  =======================================  ======================================

(The GMM benchmark keeps the draws that define its canonical problems: ``dps.bench.gmm``.)

Each image and each sample has its own generator, so a result never depends on the batch it ran in.
Generators live on the run's device (CUDA's generator draws other numbers than the CPU's for the same seed,
so a run on a GPU is another draw than the same run on the CPU); the operator is always drawn on the CPU,
so it is the same on every device.
"""
from __future__ import annotations

import torch

__all__ = ["operator_seed", "noise_seed", "sample_seed", "noise_generator", "sample_generators",
           "unconditional_generators", "FORMULAS"]

FORMULAS = {"operator": "seed", "noise": "seed * 1000003 + i", "sample": "(seed * 1000003 + i) * 1009 + k + 1"}


def operator_seed(seed: int) -> int:
    return seed


def noise_seed(seed: int, i: int) -> int:
    return seed * 1_000_003 + i


def sample_seed(seed: int, i: int, k: int) -> int:
    return noise_seed(seed, i) * 1_009 + k + 1


def noise_generator(seed: int, i: int, device="cpu") -> torch.Generator:
    """The generator of image i's measurement noise."""
    return torch.Generator(device).manual_seed(noise_seed(seed, i))


def sample_generators(seed: int, indices, K: int, device="cpu") -> list[torch.Generator]:
    """len(indices) * K generators, sample k of image indices[b] at position b * K + k."""
    return [torch.Generator(device).manual_seed(sample_seed(seed, i, k)) for i in indices for k in range(K)]


def unconditional_generators(seed: int, n: int, device="cpu") -> list[torch.Generator]:
    """n generators for unconditional samples 0..n-1."""
    return [torch.Generator(device).manual_seed(noise_seed(seed, k)) for k in range(n)]
