"""Our latent-model file: an autoencoder and a latent diffusion UNet in one safetensors file (format ``dps-latent``).

Tensors ``autoencoder.*`` (:class:`~dps.models.autoencoder.ConvAutoencoder`) and ``unet.*`` (our guided-diffusion
UNet, an epsilon network of the VP schedule named in the metadata); metadata: ``autoencoder_config`` and
``unet_config`` (JSON), ``schedule``, ``T``, ``scaling_factor``, ``image_shape`` and ``data_range``. Loaded as a
:class:`~dps.diffusion.latent.LatentPrior` (the embedded ``digits-latent`` model is such a file).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn

from ..diffusion.latent import LatentPrior
from ..diffusion.schedule import make_schedule
from .autoencoder import AutoencoderConfig, ConvAutoencoder
from .unet import UNetConfig, UNetModel

__all__ = ["LATENT_UNET", "save_latent_safetensors", "load_latent_safetensors", "is_latent_file"]

#: The embedded latent model's UNet: 4 x 8 x 8 latents of 32 x 32 digits.
LATENT_UNET = dict(image_size=8, in_channels=4, num_channels=64, channel_mult="1,2", num_res_blocks=1,
                   attention_resolutions="4", num_head_channels=32, use_scale_shift_norm=True, resblock_updown=True,
                   learn_sigma=False, dropout=0.0)

FORMAT = "dps-latent"


class _Decode(nn.Module):
    def __init__(self, ae: ConvAutoencoder) -> None:
        super().__init__()
        self.ae = ae

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.ae.decode(h)


class _Encode(nn.Module):
    def __init__(self, ae: ConvAutoencoder) -> None:
        super().__init__()
        self.ae = ae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ae.encode(x)


def save_latent_safetensors(path: Union[str, Path], autoencoder: ConvAutoencoder, unet: UNetModel,
                            scaling_factor: float, schedule: str = "linear", T: int = 1000, image_size: int = 32,
                            extra: Optional[Mapping[str, str]] = None) -> None:
    """Write both networks and the metadata (module docstring) atomically."""
    from safetensors.torch import save_file

    from ..utils import atomic_path

    shape = (autoencoder.config.in_channels, image_size, image_size)
    meta = {"format": FORMAT, "autoencoder_config": json.dumps(autoencoder.config.to_dict()),
            "unet_config": json.dumps(unet.config.to_dict()), "schedule": schedule, "T": str(T),
            "scaling_factor": repr(float(scaling_factor)), "image_shape": json.dumps(list(shape)),
            "data_range": "-1,1", **(extra or {})}
    tensors = {f"autoencoder.{k}": v for k, v in autoencoder.state_dict().items()}
    tensors.update({f"unet.{k}": v for k, v in unet.state_dict().items()})
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)


def is_latent_file(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a safetensors file of format ``dps-latent`` (reads the header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:
        return False


def load_latent_safetensors(path: Union[str, Path]) -> LatentPrior:
    """A file of :func:`save_latent_safetensors` as a :class:`LatentPrior` (a mismatching state dict is a
    :class:`~dps.models.loading.CheckpointMismatchError`)."""
    from ..io import open_safetensors
    from .loading import CheckpointMismatchError, _prior_from_unet, check_state_dict

    tensors, meta = open_safetensors(path, "model file")
    if meta.get("format") != FORMAT:
        raise CheckpointMismatchError(f"{path} is not a dps latent model file (metadata format={meta.get('format')!r})")
    try:
        ae = ConvAutoencoder(AutoencoderConfig.from_dict(json.loads(meta["autoencoder_config"])))
        unet = UNetModel(UNetConfig.from_dict(json.loads(meta["unet_config"])))
        scaling_factor = float(meta["scaling_factor"])
        shape = tuple(int(v) for v in json.loads(meta["image_shape"]))
        lo, hi = (float(v) for v in meta.get("data_range", "-1,1").split(","))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointMismatchError(f"{path}: damaged metadata ({type(exc).__name__}: {exc}); write the file "
                                      "again") from None
    for prefix, net in (("autoencoder.", ae), ("unet.", unet)):
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        check_state_dict(net, part, source=f"{path} ({prefix[:-1]})")
        net.load_state_dict(part, strict=True)
    stray = [k for k in tensors if not k.startswith(("autoencoder.", "unet."))]
    if stray:
        raise CheckpointMismatchError(f"{path}: unexpected tensors {stray[:3]}")
    latent = _prior_from_unet(unet, make_schedule(meta.get("schedule", "linear"), int(meta.get("T", 1000))), None)
    prior = LatentPrior(latent, _Decode(ae), _Encode(ae), shape, scaling_factor, data_range=(lo, hi)).eval()
    prior.metadata = meta
    return prior
