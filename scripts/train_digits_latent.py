"""Train the embedded latent model (``--model digits-latent``): an autoencoder on the digits' training split, then
a DDPM on its scaled latents; write ``dps/assets/digits_latent.safetensors`` (both networks, one file).

    python scripts/train_digits_latent.py --out runs/digits-latent      # then copy the file it names

Stage 1: :class:`~dps.models.autoencoder.ConvAutoencoder` with Adam, loss ||D(E(x)) - x||^2 + 1e-4 ||E(x)||^2
(images in [-1, 1]). Stage 2: scaling_factor = 1 / std(E(x)) over the training images, then our guided-diffusion
UNet trained with L_simple (``dps.train.ddpm_loss``, the linear 1000-step schedule) on z = scaling_factor E(x),
EMA of the weights. Seeds are fixed; the model card (``dps/assets/digits_latent_card.json``) is written by
``scripts/digits_latent_card.py`` from the saved file.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from dps.data.digits import digits_split
from dps.diffusion.schedule import make_schedule
from dps.models.autoencoder import AutoencoderConfig, ConvAutoencoder
from dps.models.latent_files import LATENT_UNET, save_latent_safetensors
from dps.models.unet import UNetConfig, UNetModel
from dps.train import _update_ema, ddpm_loss

LATENT_PENALTY = 1e-4


def train_autoencoder(images: torch.Tensor, steps: int, seed: int) -> ConvAutoencoder:
    torch.manual_seed(seed)
    ae = ConvAutoencoder(AutoencoderConfig())
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed + 1)
    for step in range(1, steps + 1):
        x = images[torch.randint(0, len(images), (64,), generator=gen)]
        h = ae.encode(x)
        loss = (ae.decode(h) - x).pow(2).mean() + LATENT_PENALTY * h.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0:
            print(f"autoencoder step {step} loss {float(loss):.5f}", flush=True)
    return ae.eval()


def train_latent_unet(latents: torch.Tensor, steps: int, seed: int) -> UNetModel:
    abar = make_schedule("linear", 1000).alphas_cumprod
    torch.manual_seed(seed)
    net = UNetModel(UNetConfig.from_dict(LATENT_UNET))
    ema = UNetModel(UNetConfig.from_dict(LATENT_UNET))
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4)
    gen = torch.Generator().manual_seed(seed + 1)
    t0, smooth = time.time(), math.nan
    for step in range(1, steps + 1):
        z = latents[torch.randint(0, len(latents), (64,), generator=gen)]
        loss = ddpm_loss(net, z, abar, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        _update_ema(ema, net, min(0.999, (1 + step) / (10 + step)))
        smooth = float(loss) if math.isnan(smooth) else 0.98 * smooth + 0.02 * float(loss)
        if step % 250 == 0:
            print(f"latent unet step {step} loss {smooth:.5f} ({time.time() - t0:.0f} s)", flush=True)
    return ema.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the model file and the training record")
    p.add_argument("--ae-steps", type=int, default=4000)
    p.add_argument("--unet-steps", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    images = digits_split("train")[0] * 2 - 1
    t0 = time.time()
    ae = train_autoencoder(images, a.ae_steps, a.seed)
    ae_s = time.time() - t0
    with torch.no_grad():
        h = ae.encode(images)
    scaling_factor = float(1.0 / h.std())
    t1 = time.time()
    unet = train_latent_unet(h * scaling_factor, a.unet_steps, a.seed + 10)
    unet_s = time.time() - t1
    record = {"autoencoder_steps": a.ae_steps, "unet_steps": a.unet_steps, "seed": a.seed,
              "latent_penalty": LATENT_PENALTY, "autoencoder_wall_s": round(ae_s), "unet_wall_s": round(unet_s),
              "threads": torch.get_num_threads()}
    save_latent_safetensors(a.out / "digits_latent.safetensors", ae, unet, scaling_factor,
                            extra={"train": json.dumps(record)})
    (a.out / "train_record.json").write_text(json.dumps({**record, "scaling_factor": scaling_factor}, indent=1) + "\n")
    print(f"wrote {a.out / 'digits_latent.safetensors'} (scaling factor {scaling_factor:.4f})")


if __name__ == "__main__":
    main()
