"""A small digit classifier, trained on the digits training split and embedded, to judge the embedded prior.

It gives two download-free measures (FID and LPIPS need weights fetched from the internet):

* on unconditional samples: how confidently (mean max-probability) and how evenly (normalised entropy
  of the predicted-class histogram, 1 = all ten classes equally often) it classifies them;
* the Frechet distance in its 128-d penultimate feature space between two image sets, e.g. samples vs
  held-out images, next to training vs held-out images (the level a perfect prior would reach);
* for reconstructions: its accuracy on DPS outputs vs on the measurements' naive inverses.

Input: (N, 1, 32, 32) in [0, 1].
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from .frechet import frechet_distance, gaussian_stats

__all__ = ["DigitClassifier", "train_classifier", "load_classifier", "prior_quality", "CLASSIFIER_FILE"]

CLASSIFIER_FILE = Path(__file__).resolve().parent.parent / "assets" / "digits_classifier.safetensors"


class DigitClassifier(nn.Module):
    """Three conv blocks (32 -> 16 -> 8 -> 4 px) and two linear layers; ``features`` is the 128-d layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(64 * 4 * 4, 128)
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 32, 32) in [0, 1] -> (N, 128)."""
        return F.relu(self.fc(self.conv(x * 2 - 1).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10)."""
        return self.head(self.features(x))


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 px (zero fill), per image."""
    n = x.shape[0]
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    out = torch.zeros_like(x)
    for k in range(n):
        out[k] = torch.roll(x[k], shifts=(int(shifts[k, 0]), int(shifts[k, 1])), dims=(-2, -1))
    return out


def train_classifier(epochs: int = 20, seed: int = 0, batch_size: int = 64, device="cpu") -> tuple[DigitClassifier, dict]:
    """Train on the digits training split only (on ``device``; every random draw on the CPU); returns the model
    (on the CPU) and {train_acc, held_out_acc}."""
    from ..data.digits import digits_split

    x, y = digits_split("train")
    xh, yh = digits_split("held_out")
    x, y, xh, yh = (t.to(device) for t in (x, y, xh, yh))
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = DigitClassifier().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size].to(device)
            loss = F.cross_entropy(model(_augment(x[idx].cpu(), g).to(device)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        stats = {"train_acc": float((model(x).argmax(1) == y).float().mean()),
                 "held_out_acc": float((model(xh).argmax(1) == yh).float().mean()),
                 "epochs": epochs, "seed": seed}
    return model.cpu(), stats


def save_classifier(model: DigitClassifier, stats: dict, path: Union[str, Path] = CLASSIFIER_FILE) -> None:
    from safetensors.torch import save_file

    from ..utils import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"format": "dps-digit-classifier", **{k: str(v) for k, v in stats.items()}})


def load_classifier(path: Union[str, Path] = CLASSIFIER_FILE) -> DigitClassifier:
    """The embedded classifier (eval mode); a file that does not fit raises an error listing the keys."""
    from safetensors.torch import load_file

    from ..models.loading import check_state_dict

    if not Path(path).is_file():
        raise FileNotFoundError(f"digit classifier {path} is missing; train it with `dps train-classifier`")
    model = DigitClassifier()
    sd = load_file(str(path))
    check_state_dict(model, sd, source=str(path))
    model.load_state_dict(sd)
    return model.eval()


@torch.no_grad()
def classify(model: DigitClassifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (N, 10) and 128-d features (N, 128)."""
    f = model.features(x)
    return F.softmax(model.head(f), dim=1), f


@torch.no_grad()
def prior_quality(model: DigitClassifier, samples: torch.Tensor, held_out: torch.Tensor,
                  train: torch.Tensor) -> dict:
    """Confidence, class evenness and Frechet distances of unconditional samples (see module docstring).

    ``train`` is subsampled to the size of ``held_out`` so that both distances have the same sample-size bias.
    """
    probs, f_s = classify(model, samples)
    _, f_h = classify(model, held_out)
    _, f_t = classify(model, train[: len(held_out)])
    counts = torch.bincount(probs.argmax(1), minlength=10).double()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum() / math.log(10))
    return {
        "n_samples": len(samples),
        "confidence": float(probs.max(1).values.mean()),
        "class_evenness": entropy,
        "class_counts": [int(c) for c in counts],
        "frechet_samples_vs_held_out": frechet_distance(*gaussian_stats(f_s), *gaussian_stats(f_h)),
        "frechet_train_vs_held_out": frechet_distance(*gaussian_stats(f_t), *gaussian_stats(f_h)),
    }
