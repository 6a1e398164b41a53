"""Write the embedded model's card from measurements: `python scripts/model_card.py runs/digits`.

Copies the run's EMA weights into dps/assets/digits_unet.safetensors, draws 359 unconditional samples
(the size of the held-out set; 250 DDPM steps, seed 0), scores them with the embedded digit classifier
(`dps bench prior`), and writes dps/assets/digits_unet.md, digits_unet_card.json, digits_samples.png
(64 samples, `dps sample --n 64`) and digits_loss.png. Every number in the card comes from this run.
"""
from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dps.data.digits import digits_split  # noqa: E402
from dps.images import make_grid, save_image  # noqa: E402
from dps.seeds import unconditional_generators  # noqa: E402
from dps.metrics.digits_classifier import CLASSIFIER_FILE, load_classifier, prior_quality  # noqa: E402
from dps.train import UNCOMPARED  # noqa: E402
from dps.models.loading import load_model  # noqa: E402
from dps.solvers.unconditional import sample_prior  # noqa: E402

ASSETS = ROOT / "dps" / "assets"


def main(run: Path, n: int = 359, steps: int = 250, seed: int = 0) -> None:
    model_file = ASSETS / "digits_unet.safetensors"
    shutil.copyfile(run / "model.safetensors", model_file)
    shutil.copyfile(run / "loss.png", ASSETS / "digits_loss.png")
    prior = load_model(model_file)
    meta = prior.metadata
    record = json.loads((run / "train.json").read_text())  # {"settings": {...}, "steps": N, ...}
    train_cfg = {**record["settings"], **{k: record[k] for k in UNCOMPARED if k in record}}
    rows = list(csv.DictReader((run / "loss.csv").open()))
    last = rows[-1]
    first = rows[0]

    t0 = time.time()
    gens = unconditional_generators(seed, n)
    x = torch.cat([sample_prior(prior, len(c), steps=steps, generator=c) for c in (gens[i:i + 64] for i in range(0, n, 64))])
    sample_seconds = time.time() - t0
    save_image(make_grid(x[:64], nrow=8), ASSETS / "digits_samples.png")
    held, _ = digits_split("held_out")
    train, _ = digits_split("train")
    q = prior_quality(load_classifier(), x, held, train)
    # memorisation check: distance of each sample to its nearest training image, next to the same for
    # held-out images (which training never saw); copies of training images would sit near 0
    nn_s = torch.cdist(x.flatten(1), train.flatten(1)).min(1).values
    nn_h = torch.cdist(held.flatten(1), train.flatten(1)).min(1).values
    q["nearest_train_l2_samples_median"] = float(nn_s.median())
    q["nearest_train_l2_held_out_median"] = float(nn_h.median())
    q["samples_closer_than_1st_percentile_of_held_out"] = float((nn_s < nn_h.quantile(0.01)).float().mean())
    from safetensors import safe_open

    with safe_open(str(CLASSIFIER_FILE), framework="pt") as f:
        cmeta = f.metadata()
    n_params = sum(p.numel() for p in prior.network.parameters())
    card = {
        "weights": model_file.name, "bytes": model_file.stat().st_size, "parameters": n_params,
        "unet_config": json.loads(meta["unet_config"]), "train_steps": int(meta["train_steps"]),
        "train_wall_s": float(meta.get("train_wall_s", "nan")), "train_config": train_cfg,
        "loss_first_logged": {"step": int(first["step"]), "ema_loss": float(first["ema_loss"])},
        "loss_final": {"step": int(last["step"]), "loss": float(last["loss"]), "ema_loss": float(last["ema_loss"])},
        "samples": {"n": n, "steps": steps, "sampler": "ddpm fixed_small, x0 clipped", "seed": seed,
                    "seconds": round(sample_seconds, 1)},
        "quality": q,
        "classifier": {"train_acc": float(cmeta["train_acc"]), "held_out_acc": float(cmeta["held_out_acc"])},
    }
    (ASSETS / "digits_unet_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (ASSETS / "digits_unet.md").write_text(render(card))
    print(render(card))


def quality_table(q: dict) -> str:
    """The card's table of sample quality (classifier, Frechet distance, nearest training images)."""
    counts = ", ".join(f"{d}: {k}" for d, k in enumerate(q["class_counts"]))
    return f"""| measure | value |
|---|---|
| mean classifier confidence (max softmax) | {q['confidence']:.3f} |
| class evenness (normalised entropy of predicted labels; 1 = uniform) | {q['class_evenness']:.3f} |
| predicted label counts | {counts} |
| Frechet distance, samples vs held-out (classifier features) | {q['frechet_samples_vs_held_out']:.2f} |
| Frechet distance, training vs held-out images (reference level) | {q['frechet_train_vs_held_out']:.2f} |
| median L2 distance to the nearest training image: samples | {q['nearest_train_l2_samples_median']:.2f} |
| median L2 distance to the nearest training image: held-out digits | {q['nearest_train_l2_held_out_median']:.2f} |
| share of samples nearer to a training image than 99% of held-out digits are | {q['samples_closer_than_1st_percentile_of_held_out']:.3f} |"""


def render(c: dict) -> str:
    q, u = c["quality"], c["unet_config"]
    return f"""# Model card: `digits_unet.safetensors` (the embedded default prior)

Written by `scripts/model_card.py` from the training run and fresh measurements; the numbers are in
`digits_unet_card.json`.

## Data
- scikit-learn's handwritten digits (`sklearn.datasets.load_digits`: the UCI optdigits test set,
  1,797 images, 8 x 8, 17 grey levels), shipped inside scikit-learn, nothing downloaded.
- Resized to 32 x 32 with Pillow's bicubic filter, values in [0, 1] (white strokes on black), one channel.
- Split: a seeded permutation (seed 0) holds out 20% = 359 images (`dps.data.digits_split("held_out")`).
  Training used only the other 1,438. Demos, tests and benchmarks use only held-out images.

## Architecture
Our guided-diffusion UNet (`dps.models.UNetModel`), {c['parameters']:,} parameters, file {c['bytes'] / 1e6:.1f} MB:
`{json.dumps(u)}`.
Diffusion: linear betas 1e-4..0.02, T = 1000, epsilon prediction, fixed variance, images in [-1, 1].

## Training
Command: `dps train --out runs/digits --steps {c['train_steps']}` (defaults: batch {c['train_config']['batch_size']},
AdamW lr {c['train_config']['lr']}, EMA {c['train_config']['ema_decay']} with warm-up, gradient clipping
{c['train_config']['grad_clip']}, seed {c['train_config']['seed']}), on 2 CPU cores.

| | |
|---|---|
| optimiser steps | {c['train_steps']} |
| wall time | {c['train_wall_s'] / 60:.0f} min (2 CPU cores, shared with other work) |
| loss (EMA-smoothed) at step {c['loss_first_logged']['step']} | {c['loss_first_logged']['ema_loss']:.4f} |
| final loss (EMA-smoothed, step {c['loss_final']['step']}) | {c['loss_final']['ema_loss']:.4f} |

![loss](digits_loss.png)

## Samples
64 unconditional samples (`dps sample --n 64 --out grid.png`: 250 DDPM steps):

![samples](digits_samples.png)

## Quality (no download needed)
{c['samples']['n']} unconditional samples ({c['samples']['steps']} DDPM steps, seed {c['samples']['seed']}), scored by the
embedded digit classifier (trained on the training split only; accuracy {c['classifier']['train_acc']:.4f} train,
{c['classifier']['held_out_acc']:.4f} held-out). Reproduce with `dps bench prior`.

{quality_table(q)}

The Frechet distance of the samples is at the level of real digits, and the nearest-neighbour distances
show whether that comes from copying: samples that were copies of training digits would sit much
nearer to the training set than held-out digits do.

## Limits
- 32 x 32 grey digits only: a prior for demos, tests and benchmarks of the method, not for natural images.
- The source digits are 8 x 8, so the 32 x 32 images are smooth; fine detail is not part of this prior.
"""


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "digits")
