"""``dps sample``: unconditional samples of a prior, as a grid image and a tensor file."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..diffusion.denoiser import Prior
from ..images import make_grid, save_image
from ..seeds import unconditional_generators
from ..solvers.unconditional import sample_prior
from ..utils import save_torch

__all__ = ["draw_samples", "run_sample"]


def draw_samples(prior: Prior, n: int, steps: int, seed: int, sampler: str = "ddpm", eta: float = 0.0,
                 batch_size: int = 64, device="cpu") -> torch.Tensor:
    """n unconditional samples (n, *event_shape) in data space on the CPU, ``batch_size`` at a time on
    ``device``; sample k from its own generator (:mod:`dps.seeds`), so it never depends on the batch."""
    gens = unconditional_generators(seed, n, device)
    chunks = [sample_prior(prior, len(g), steps=steps, sampler=sampler, eta=eta, generator=g, device=device).cpu()
              for g in (gens[i:i + batch_size] for i in range(0, n, batch_size))]
    return torch.cat(chunks)


def run_sample(prior: Prior, n: int, steps: int, seed: int, out: Path, sampler: str = "ddpm", eta: float = 0.0,
               batch_size: int = 64, device="cpu") -> torch.Tensor:
    """Draw ``n`` samples and write ``out`` (a grid PNG) and ``out`` with suffix ``.pt`` (all samples)."""
    from ..errors import DPSError

    x = draw_samples(prior, n, steps, seed, sampler, eta, batch_size, device)
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise DPSError(f"the samples hold {int(bad.sum())} NaN or infinite value(s): the model does not fit its "
                       "diffusion (check the checkpoint and its scheduler); nothing was written")
    save_image(make_grid(x, nrow=int(math.ceil(math.sqrt(n)))), out)
    save_torch(x, Path(out).with_suffix(".pt"))
    return x
