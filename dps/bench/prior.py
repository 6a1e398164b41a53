"""``dps bench prior``: the quality of a digits prior without downloads: the embedded classifier's confidence
and class evenness on unconditional samples, and the Frechet distance in its feature space between samples
and held-out digits, next to the same distance between training and held-out digits (a perfect prior's)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..diffusion.denoiser import Prior
from ..errors import DPSError

__all__ = ["run_prior_bench", "prior_bench_text"]


def run_prior_bench(prior: Prior, model: str, n: int, steps: int, seed: int, grid: Optional[Path] = None,
                    device="cpu") -> dict:
    from ..data.digits import digits_split
    from ..images import make_grid, save_image
    from ..metrics.digits_classifier import load_classifier, prior_quality
    from ..runs.sampling import draw_samples

    if tuple(prior.event_shape) != (1, 32, 32):
        raise DPSError(f"the digit classifier needs a (1, 32, 32) prior, got {tuple(prior.event_shape)}")
    x = draw_samples(prior, n, steps, seed, device=device)
    held, _ = digits_split("held_out")
    train, _ = digits_split("train")
    q = {"model": model, "steps": steps, "seed": seed, **prior_quality(load_classifier(), x, held, train)}
    if grid is not None:
        save_image(make_grid(x[:64], nrow=8), grid)
    return q


def prior_bench_text(q: dict, n: int) -> str:
    return (f"{n} samples, {q['steps']} DDPM steps: confidence {q['confidence']:.3f}, class evenness "
            f"{q['class_evenness']:.3f}, class counts {q['class_counts']}\n"
            f"Frechet distance (classifier features): samples vs held-out {q['frechet_samples_vs_held_out']:.2f}; "
            f"train vs held-out {q['frechet_train_vs_held_out']:.2f}")
