"""The embedded digits model: it loads offline, matches its card, samples digits, and DPS works with it."""
from __future__ import annotations

import json
from pathlib import Path

import torch

import dps
from dps.data.digits import digits_split
from dps.metrics import psnr
from dps.metrics.digits_classifier import classify, load_classifier
from dps.solvers.unconditional import sample_prior

ASSETS = Path(dps.__file__).resolve().parent / "assets"


def test_embedded_model_matches_its_card():
    prior = dps.load_model("default")
    card = json.loads((ASSETS / "digits_unet_card.json").read_text())
    assert prior.event_shape == (1, 32, 32)
    assert int(prior.metadata["train_steps"]) == card["train_steps"]
    assert sum(p.numel() for p in prior.network.parameters()) == card["parameters"]
    assert (ASSETS / "digits_unet.safetensors").stat().st_size <= 20e6


def test_embedded_model_samples_are_digits():
    """32 unconditional samples (50 DDIM steps): the classifier reads them confidently and sees most classes.
    A broken loader, wrong schedule or untrained weights gives blobs that fail this."""
    prior = dps.load_model("default")
    x = sample_prior(prior, 32, steps=50, sampler="ddim", generator=torch.Generator().manual_seed(0))
    probs, _ = classify(load_classifier(), x)
    assert float(probs.max(1).values.mean()) > 0.85
    assert len(set(probs.argmax(1).tolist())) >= 7


def test_dps_with_embedded_model_inpaints_held_out_digits():
    """Box inpainting of 4 held-out digits: DPS beats the zero-filled measurement by a wide margin and the
    classifier recognises the reconstructions."""
    from dps.runs.demo import demo_tasks
    from dps.tasks import build_operator

    prior = dps.load_model("default")
    (_, task), = demo_tasks(100, ["inpainting_box"])
    op, noise = build_operator(task.operator, (1, 32, 32), 0), task.noise_model()
    x, labels = digits_split("held_out")
    x, labels = x[:4], labels[:4]
    y = noise(op(x), torch.Generator().manual_seed(0))
    res = dps.dps_sample(prior, op, y, noise, task.dps_config(),
                         generator=[torch.Generator().manual_seed(k) for k in range(4)])
    recon = res.x[:, 0]
    assert float(psnr(recon, x).mean()) > float(psnr(op.A_dagger(y).clamp(0, 1), x).mean()) + 8
    probs, _ = classify(load_classifier(), recon)
    assert int((probs.argmax(1) == labels).sum()) >= 3


# ------------------------------------------------------------------------------------ the embedded latent model
def test_embedded_latent_model_matches_its_card():
    """digits-latent loads offline as a latent prior whose autoencoder reconstructs held-out digits as well as its
    card says (a broken encoder, decoder or scaling factor would not)."""
    prior = dps.load_model("digits-latent")
    card = json.loads((ASSETS / "digits_latent_card.json").read_text())
    assert prior.form == "latent" and prior.event_shape == (1, 32, 32)
    assert list(prior.latent_shape) == card["latent_shape"] and prior.scaling_factor == card["scaling_factor"]
    assert (ASSETS / "digits_latent.safetensors").stat().st_size <= 20e6
    x, _ = digits_split("held_out")
    with torch.no_grad():
        rec = prior.clip_data(prior.to_data(prior.decode(prior.encode(prior.from_data(x[:64])))))
    assert float(psnr(rec, x[:64]).mean()) > card["autoencoder_quality"]["held_out_psnr"] - 1.0
    with torch.no_grad():
        z = prior.encode(prior.from_data(x))
    assert 0.7 < float(z.std()) < 1.4  # scaled latents have about unit variance, as the diffusion model assumes


def test_embedded_latent_model_samples_are_digits():
    prior = dps.load_model("digits-latent")
    x = sample_prior(prior, 32, steps=50, sampler="ddim", generator=torch.Generator().manual_seed(0))
    assert x.shape == (32, 1, 32, 32)
    probs, _ = classify(load_classifier(), x)
    assert float(probs.max(1).values.mean()) > 0.8
    assert len(set(probs.argmax(1).tolist())) >= 7


def test_latent_methods_with_the_embedded_latent_model_inpaint_held_out_digits():
    """Box inpainting of 4 held-out digits with each latent method at 100 evaluations: better than the zero-filled
    measurement by a wide margin."""
    from dps.runs.demo import demo_tasks
    from dps.solvers.methods import METHODS
    from dps.tasks import build_operator

    prior = dps.load_model("digits-latent")
    (_, task), = demo_tasks(100, ["inpainting_box"])
    op, noise = build_operator(task.operator, (1, 32, 32), 0), task.noise_model()
    x, _ = digits_split("held_out")
    x = x[:4]
    y = noise(op(x), torch.Generator().manual_seed(0))
    naive = float(psnr(op.A_dagger(y).clamp(0, 1), x).mean())
    for name, m in METHODS.items():
        if not m.latent:
            continue
        res = dps.reconstruct(name, prior, op, y, noise, m.at_budget(100, m.settings()),
                              [torch.Generator().manual_seed(k) for k in range(4)])
        assert float(psnr(res.x[:, 0], x).mean()) > naive + 4, name
