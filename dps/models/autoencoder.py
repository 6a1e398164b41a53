"""The embedded latent model's autoencoder: a small convolutional encoder E and decoder D, written for this project.

Images x (B, C, H, W) in the model's [-1, 1]; latents h = E(x) (B, latent_channels, H / f, W / f), f = 2^downsamples,
and D(h) (B, C, H, W) in [-1, 1] (unclamped). It is a deterministic autoencoder trained with the squared error
plus a small penalty on ||h||^2 (the role of Stable Diffusion's weak KL term: it keeps the latents' scale
bounded); the latent diffusion model then sees z = scaling_factor * h, scaling_factor = 1 / std(h) over the
training images, as Stable Diffusion's latents are scaled (:class:`~dps.diffusion.latent.LatentPrior`).

Architecture, per resolution: Conv3x3 -> SiLU -> Conv4x4 with stride 2 (down) -> SiLU in the encoder; nearest
upsampling then two Conv3x3 -> SiLU in the decoder; ``channels`` wide, ``latent_channels`` at the bottleneck.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["AutoencoderConfig", "ConvAutoencoder"]


@dataclass(frozen=True)
class AutoencoderConfig:
    """:param in_channels: image channels; :param channels: the width of every layer; :param latent_channels:
    latent channels; :param downsamples: the number of 2x downsamplings (factor f = 2^downsamples)."""

    in_channels: int = 1
    channels: int = 32
    latent_channels: int = 4
    downsamples: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AutoencoderConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown autoencoder settings {sorted(unknown)}")
        return cls(**{k: int(v) for k, v in d.items()})


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.SiLU()]


class ConvAutoencoder(nn.Module):
    """``encode(x) -> h`` and ``decode(h) -> x`` (module docstring)."""

    def __init__(self, config: AutoencoderConfig = AutoencoderConfig()) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        enc: list[nn.Module] = _block(config.in_channels, c)
        for _ in range(config.downsamples):
            enc += _block(c, c) + [nn.Conv2d(c, c, 4, stride=2, padding=1), nn.SiLU()]
        enc += _block(c, c) + [nn.Conv2d(c, config.latent_channels, 3, padding=1)]
        dec: list[nn.Module] = _block(config.latent_channels, c) + _block(c, c)
        for _ in range(config.downsamples):
            dec += [nn.Upsample(scale_factor=2, mode="nearest")] + _block(c, c) + _block(c, c)
        dec += [nn.Conv2d(c, config.in_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(latent_channels, H / f, W / f) of images (C, H, W)."""
        f = 2 ** self.config.downsamples
        _, h, w = image_shape
        return self.config.latent_channels, h // f, w // f

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(h)
