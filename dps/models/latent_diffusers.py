"""Latent diffusion pipelines from local diffusers folders (extras ``diffusers``, and ``latent`` for the text encoder):
Stable Diffusion 1.x / 2.x and unconditional LDM, as :class:`~dps.diffusion.latent.LatentPrior` (nothing is
downloaded).

- Stable Diffusion (``model_index.json`` with a ``StableDiffusionPipeline``, or the folders ``vae/``, ``unet/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``): ``AutoencoderKL`` (decoder D, encoder E = the mean of its
  posterior), ``UNet2DConditionModel`` conditioned on CLIP text states (``transformers``' ``CLIPTextModel`` and
  ``CLIPTokenizer``, prompts padded to the tokenizer's length), the VP schedule of ``scheduler/`` (epsilon or
  v_prediction: 2.x's 768 px models), latents scaled by the VAE's ``scaling_factor`` (0.18215 for 1.x/2.x) and
  ``shift_factor`` (none for them). The prompt and classifier-free guidance scale are set by
  :meth:`LatentPrior.condition` (default: the empty prompt, scale 1).
- Unconditional LDM (``LDMPipeline``: ``vqvae/`` ``VQModel``, ``unet/`` ``UNet2DModel``, ``scheduler/``): latents
  decoded through the VQ codebook (quantisation's gradient passes straight through), not rescaled (the pipeline's
  convention: its scaling factor is 1).

Images are [-1, 1] in the model and [0, 1] at our API edge; the image size is the UNet's ``sample_size`` times
the autoencoder's downsampling factor 2^(number of blocks - 1) (512 for Stable Diffusion 1.5).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch
from torch import nn

from ..diffusion.denoiser import NetworkPrior
from ..diffusion.latent import GuidedNetwork, LatentPrior
from ..diffusion.schedule import Schedule
from .diffusers_adapter import DiffusersUNet, _PREDICTION, _scheduler_config, betas_from_scheduler_config, scheduler_form

__all__ = ["is_latent_pipeline", "load_latent_pipeline", "LATENT_PIPELINES"]

#: pipeline classes this loader reads, by their autoencoder folder.
LATENT_PIPELINES = {"StableDiffusionPipeline": "vae", "LDMPipeline": "vqvae"}


def _class(folder: Path) -> str:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return ""
    try:
        return str(json.loads(cfg.read_text()).get("_class_name", ""))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{cfg} is not valid JSON; restore the model's config") from None


def is_latent_pipeline(path: Union[str, Path]) -> bool:
    """Whether ``path`` holds a latent pipeline: ``unet/`` beside ``vae/`` or ``vqvae/``."""
    path = Path(path)
    return path.is_dir() and (path / "unet").is_dir() and any((path / sub).is_dir() for sub in ("vae", "vqvae"))


def _need(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(f"loading this model needs {module}: pip install 'dps[{extra}]'", name=module) from exc


class _KLDecode(nn.Module):
    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(h).sample


class _KLEncode(nn.Module):
    """E(x) = the mean of the VAE's posterior q(h | x) (deterministic)."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mean


class _VQDecode(nn.Module):
    def __init__(self, vq) -> None:
        super().__init__()
        self.vq = vq

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.vq.decode(h).sample


class _VQEncode(nn.Module):
    def __init__(self, vq) -> None:
        super().__init__()
        self.vq = vq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vq.encode(x).latents


class _ConditionedUNet(nn.Module):
    """``unet(z, t, states) -> noise`` of a ``UNet2DConditionModel`` (its checkpointing switch exposed)."""

    def __init__(self, unet) -> None:
        super().__init__()
        self.unet = unet

    use_checkpoint = DiffusersUNet.use_checkpoint

    def forward(self, z: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return self.unet(z, t, encoder_hidden_states=states).sample


class _CLIPText(nn.Module):
    """prompt -> CLIP text states (1, L, E), L the tokenizer's model_max_length (Stable Diffusion's encoding). A
    module of the latent prior, so the text encoder follows it to the run's device."""

    def __init__(self, tokenizer, text_encoder) -> None:
        super().__init__()
        self.tokenizer, self.text_encoder = tokenizer, text_encoder.eval().requires_grad_(False)

    def forward(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        device = next(self.text_encoder.parameters()).device
        with torch.no_grad():
            return self.text_encoder(ids.to(device))[0]


def _pretrained(cls, folder: Path):
    """``cls.from_pretrained(folder)`` from local files only, in eval mode; a damaged or missing weight file is a
    one-line ValueError naming the folder."""
    try:
        kwargs = {"low_cpu_mem_usage": False} if cls.__module__.startswith("diffusers") else {}
        return cls.from_pretrained(str(folder), local_files_only=True, **kwargs).eval()
    except (OSError, ValueError, RuntimeError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{folder} cannot be loaded ({type(exc).__name__}: {first[:200]}); its weight file is damaged, "
                         "incomplete or missing: copy the folder again") from None
    except Exception as exc:  # safetensors' SafetensorError and other reader errors
        if type(exc).__name__ != "SafetensorError":
            raise
        raise ValueError(f"{folder} holds a damaged safetensors file ({exc}); copy the folder again") from None


def _pretrained_tokenizer(cls, folder: Path):
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{folder} is not a readable tokenizer ({type(exc).__name__}); copy the folder again") from None


def _schedule(path: Path, unet_dir: Path) -> tuple[Schedule, str]:
    sched = _scheduler_config(path, unet_dir)
    if scheduler_form(sched, path) != "vp":
        raise ValueError(f"{path}: a latent pipeline with a {sched.get('_class_name')}; latent models load with a "
                         "DDPM-family (VP) scheduler")
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in _PREDICTION:
        raise ValueError(f"{path}: the scheduler's prediction_type {prediction!r} is not supported; supported: "
                         f"{', '.join(_PREDICTION)}")
    betas = betas_from_scheduler_config(sched)
    return Schedule(betas=betas, timesteps=torch.arange(len(betas), dtype=torch.int64)), _PREDICTION[prediction]


def load_latent_pipeline(path: Union[str, Path]) -> LatentPrior:
    """A Stable Diffusion or LDM folder (module docstring) as a :class:`LatentPrior`."""
    path = Path(path)
    _need("diffusers", "diffusers")
    import diffusers

    unet_cls = _class(path / "unet")
    schedule, prediction = _schedule(path, path / "unet")
    if (path / "vae").is_dir():
        if unet_cls != "UNet2DConditionModel":
            raise ValueError(f"{path}/unet is a {unet_cls or 'folder without config.json'}; a Stable Diffusion folder "
                             "has a UNet2DConditionModel")
        missing = [d for d in ("text_encoder", "tokenizer") if not (path / d).is_dir()]
        if missing:
            raise ValueError(f"{path} has no {' or '.join(missing)}/: a Stable Diffusion folder needs them for its prompt")
        _need("transformers", "latent")
        from transformers import CLIPTextModel, CLIPTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        vae = _pretrained(diffusers.AutoencoderKL, path / "vae")
        unet = _pretrained(diffusers.UNet2DConditionModel, path / "unet")
        text = _CLIPText(_pretrained_tokenizer(CLIPTokenizer, path / "tokenizer"),
                         _pretrained(CLIPTextModel, path / "text_encoder"))
        empty = text("")
        if empty.shape[-1] != unet.config.cross_attention_dim:
            raise ValueError(f"{path}: the text encoder's states have {empty.shape[-1]} features, the UNet's "
                             f"cross_attention_dim is {unet.config.cross_attention_dim}")
        network = GuidedNetwork(_ConditionedUNet(unet), empty, empty, 1.0)
        decoder, encoder = _KLDecode(vae), _KLEncode(vae)
        scaling = float(vae.config.get("scaling_factor", 0.18215) or 0.18215)
        shift = float(vae.config.get("shift_factor", 0.0) or 0.0)
        blocks, image_channels = len(vae.config.block_out_channels), vae.config.in_channels
    else:
        if unet_cls != "UNet2DModel":
            raise ValueError(f"{path}/unet is a {unet_cls or 'folder without config.json'}; an LDM folder has a "
                             "UNet2DModel")
        vq = _pretrained(diffusers.VQModel, path / "vqvae")
        unet = _pretrained(diffusers.UNet2DModel, path / "unet")
        network, text = DiffusersUNet(unet), None
        decoder, encoder = _VQDecode(vq), _VQEncode(vq)
        scaling, shift = 1.0, 0.0
        blocks, image_channels = len(vq.config.block_out_channels), vq.config.in_channels
    size = unet.config.sample_size
    hw = (size, size) if isinstance(size, int) else tuple(size)
    f = 2 ** (blocks - 1)
    latent = NetworkPrior(network, schedule, prediction=prediction, data_range=None,
                          event_shape=(unet.config.in_channels, *hw))
    prior = LatentPrior(latent, decoder, encoder, (image_channels, hw[0] * f, hw[1] * f), scaling, shift,
                        data_range=(-1.0, 1.0), text=text)
    return prior.eval()
