"""Write the embedded latent model's card from measurements: `python scripts/digits_latent_card.py RUN`.

RUN is the folder of `python scripts/train_digits_latent.py --out RUN`. Copies its model file to
dps/assets/digits_latent.safetensors, measures the autoencoder's reconstructions of the held-out digits (PSNR,
SSIM, the embedded classifier's accuracy on them) and 359 unconditional samples (250 DDPM steps on the latents,
seed 0, decoded; scored like `dps bench prior`), and writes dps/assets/digits_latent.md, digits_latent_card.json and
digits_latent_samples.png. Every number in the card comes from this run.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dps.data.digits import digits_split  # noqa: E402
from dps.images import make_grid, save_image  # noqa: E402
from dps.metrics import psnr, ssim  # noqa: E402
from dps.metrics.digits_classifier import load_classifier, prior_quality  # noqa: E402
from dps.models.loading import load_model  # noqa: E402
from dps.runs.sampling import draw_samples  # noqa: E402
from model_card import quality_table  # noqa: E402  (scripts/, this script's folder)

ASSETS = ROOT / "dps" / "assets"


def reconstructions(prior, images: torch.Tensor) -> torch.Tensor:
    """D(E(x)) in [0, 1] for data-space images x."""
    with torch.no_grad():
        return prior.clip_data(prior.to_data(prior.decode(prior.encode(prior.from_data(images)))))


def unet_losses(log: Path) -> list[tuple[int, float]]:
    """(step, EMA-smoothed loss) of the latent UNet from the training log."""
    if not log.is_file():
        return []
    return [(int(m[1]), float(m[2])) for m in re.finditer(r"latent unet step (\d+) loss ([0-9.]+)", log.read_text())]


def main(run: Path, n: int = 359, steps: int = 250, seed: int = 0) -> None:
    model_file = ASSETS / "digits_latent.safetensors"
    shutil.copyfile(run / "digits_latent.safetensors", model_file)
    prior = load_model(model_file)
    train_record = json.loads(prior.metadata["train"])
    classifier = load_classifier()
    held, held_labels = digits_split("held_out")
    train, _ = digits_split("train")
    rec_held, rec_train = reconstructions(prior, held), reconstructions(prior, train)
    with torch.no_grad():
        acc_rec = float((classifier(rec_held).argmax(1) == held_labels).float().mean())
        acc_orig = float((classifier(held).argmax(1) == held_labels).float().mean())
    autoencoder = {"held_out_psnr": float(psnr(rec_held, held).mean()), "held_out_ssim": float(ssim(rec_held, held).mean()),
                   "train_psnr": float(psnr(rec_train, train).mean()),
                   "classifier_acc_reconstructions": acc_rec, "classifier_acc_originals": acc_orig}

    t0 = time.time()
    x = draw_samples(prior, n, steps, seed)  # sample k from its own generator, as dps sample and dps bench prior
    sample_seconds = time.time() - t0
    save_image(make_grid(x[:64], nrow=8), ASSETS / "digits_latent_samples.png")
    q = prior_quality(classifier, x, held, train)
    nn_s = torch.cdist(x.flatten(1), train.flatten(1)).min(1).values
    nn_h = torch.cdist(held.flatten(1), train.flatten(1)).min(1).values
    q["nearest_train_l2_samples_median"] = float(nn_s.median())
    q["nearest_train_l2_held_out_median"] = float(nn_h.median())
    q["samples_closer_than_1st_percentile_of_held_out"] = float((nn_s < nn_h.quantile(0.01)).float().mean())
    losses = unet_losses(run / "log.txt")
    card = {
        "weights": model_file.name, "bytes": model_file.stat().st_size,
        "parameters": {"autoencoder": sum(p.numel() for p in prior.decoder.parameters()),
                       "unet": sum(p.numel() for p in prior.latent.parameters())},
        "latent_shape": list(prior.latent_shape), "scaling_factor": prior.scaling_factor,
        "autoencoder_config": json.loads(prior.metadata["autoencoder_config"]),
        "unet_config": json.loads(prior.metadata["unet_config"]), "train": train_record,
        "unet_loss": {"first": losses[0], "final": losses[-1]} if losses else None,
        "autoencoder_quality": autoencoder,
        "samples": {"n": n, "steps": steps, "sampler": "ddpm fixed_small on the latents, decoded", "seed": seed,
                    "seconds": round(sample_seconds, 1)},
        "quality": q,
    }
    (ASSETS / "digits_latent_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (ASSETS / "digits_latent.md").write_text(render(card))
    print(render(card))


def render(c: dict) -> str:
    q, a, t = c["quality"], c["autoencoder_quality"], c["train"]
    loss = "" if c["unet_loss"] is None else (
        f"| latent UNet loss (EMA-smoothed) at step {c['unet_loss']['first'][0]} | {c['unet_loss']['first'][1]:.4f} |\n"
        f"| final latent UNet loss (EMA-smoothed, step {c['unet_loss']['final'][0]}) | {c['unet_loss']['final'][1]:.4f} |\n")
    return f"""# Model card: `digits_latent.safetensors` (the embedded latent model, `--model digits-latent`)

Written by `scripts/digits_latent_card.py` from the training run and fresh measurements; the numbers are in
`digits_latent_card.json`.

## Data
The embedded digits model's data and split (`dps/assets/digits_unet.md`): scikit-learn's handwritten digits at
32 x 32, one channel, values in [0, 1]; 359 held out (seed 0), training on the other 1,438 only.

## Architecture
- Autoencoder (`dps.models.autoencoder.ConvAutoencoder`, {c['parameters']['autoencoder']:,} parameters):
  `{json.dumps(c['autoencoder_config'])}`; images in [-1, 1] -> latents {' x '.join(map(str, c['latent_shape']))},
  scaled by {c['scaling_factor']:.4f} (1 / their standard deviation over the training images, as Stable Diffusion's
  0.18215 is).
- Latent diffusion model: our guided-diffusion UNet ({c['parameters']['unet']:,} parameters)
  `{json.dumps(c['unet_config'])}`; linear betas 1e-4..0.02, T = 1000, epsilon prediction.
- File: {c['bytes'] / 1e6:.1f} MB, both networks (format `dps-latent`).

## Training
Command: `python scripts/train_digits_latent.py --out RUN --ae-steps {t['autoencoder_steps']} --unet-steps
{t['unet_steps']}` (seed {t['seed']}), on 2 CPU cores shared with other work.

| | |
|---|---|
| autoencoder | {t['autoencoder_steps']} Adam steps (batch 64, lr 1e-3 cosine), loss squared error + {t['latent_penalty']} mean h^2; {t['autoencoder_wall_s'] / 60:.0f} min |
| latent UNet | {t['unet_steps']} AdamW steps (batch 64, lr 2e-4, EMA 0.999), L_simple; {t['unet_wall_s'] / 60:.0f} min |
{loss}
## The autoencoder on the held-out digits
D(E(x)) of the 359 held-out digits: PSNR {a['held_out_psnr']:.2f} dB (training digits {a['train_psnr']:.2f} dB), SSIM
{a['held_out_ssim']:.3f}; the embedded classifier labels {100 * a['classifier_acc_reconstructions']:.1f}% of the
reconstructions correctly ({100 * a['classifier_acc_originals']:.1f}% of the originals). A latent method's result is
a decoded latent, so this PSNR bounds what it can reach on these digits.

## Samples
64 unconditional samples (`dps sample --model digits-latent --n 64 --out grid.png`: 250 DDPM steps on the latents,
decoded):

![samples](digits_latent_samples.png)

## Quality (no download needed)
{c['samples']['n']} unconditional samples ({c['samples']['steps']} DDPM steps, seed {c['samples']['seed']}), scored by the
embedded digit classifier as `dps bench prior --model digits-latent` does.

{quality_table(q)}

## Limits
- 32 x 32 grey digits only: a latent model for demos, tests and benchmarks of the latent methods, small enough to
  run on a CPU; it is not Stable Diffusion and says nothing of text conditioning.
"""


if __name__ == "__main__":
    main(Path(sys.argv[1]))
