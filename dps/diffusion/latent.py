"""Latent diffusion priors: a diffusion model over latents z and a decoder to images, x = D(z).

A :class:`LatentPrior` is a prior over images whose samples are x_0 = D(z_0) with z_0 drawn by a latent diffusion
model (Rombach et al., CVPR 2022; Stable Diffusion). It holds

- ``latent``: the latent model, itself a prior of the denoiser contract (:mod:`dps.diffusion.denoiser`) over
  z (B, *latent_shape): D_z(z; sigma) = E[z_0 | z], z = z_0 + sigma n, in any form (VP for Stable Diffusion and
  LDM, a network of this package, or an analytic mixture in the exact-posterior benchmark);
- the decoder and encoder between latents and the model's image space: :meth:`decode` x = D(z / c + b) and
  :meth:`encode` z = c (E(x) - b), with c the latents' ``scaling_factor`` (Stable Diffusion 1.x/2.x: 0.18215)
  and b the ``shift_factor`` (0 for them);
- the image side of the prior contract: ``event_shape`` (the image shape), the model-to-data map
  (``data_range`` [-1, 1] images -> [0, 1] data, as for pixel models) and the data bounds.

Measurements stay in data space, y = A(to_data(D(z_0))) + n. Only the methods of the method table marked for
latent models run on it (they work on z and decode once at the end); pixel-space methods refuse it. Its
:meth:`running` (precision, checkpointing, compile) applies to the latent network, and the evaluation counter
counts evaluations of the latent denoiser (one per evaluation with or without classifier-free guidance, whose
evaluation runs the text-conditioned UNet on two rows).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from ..errors import DPSError
from .denoiser import DenoiserOutput, Prior

__all__ = ["LatentPrior", "LinearDecoder", "LinearEncoder", "GuidedNetwork"]


class LinearDecoder(nn.Module):
    """x = W z + b for vectors z (B, D): a known full-rank decoder (d x D) (the exact-posterior benchmark)."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("W", W.clone())
        self.register_buffer("b", b.clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W.to(z).T + self.b.to(z)


class LinearEncoder(nn.Module):
    """z = W^+ (x - b): the exact left inverse of :class:`LinearDecoder` (E(D(z)) = z)."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("W_pinv", torch.linalg.pinv(W))
        self.register_buffer("b", b.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b.to(x)) @ self.W_pinv.to(x).T


class GuidedNetwork(nn.Module):
    """A text-conditioned noise network as ``forward(z, t)``: classifier-free guidance (Ho & Salimans 2022),

        eps = eps(z, t, c_empty) + w (eps(z, t, c_prompt) - eps(z, t, c_empty)),

    with w the guidance scale; w = 1 evaluates the prompt's branch only (one network row per sample), w != 1 both
    branches in one batch of 2B (two rows). ``unet(z, t, encoder_hidden_states)`` returns the noise (B, C, h, w).

    :param cond, uncond: the prompt's and the empty prompt's text-encoder states (1, L, E).
    """

    def __init__(self, unet: Callable[..., torch.Tensor], cond: torch.Tensor, uncond: torch.Tensor,
                 guidance_scale: float = 1.0) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("cond", cond)
        self.register_buffer("uncond", uncond)
        self.guidance_scale = float(guidance_scale)

    @property
    def use_checkpoint(self) -> bool:
        """The UNet's gradient checkpointing (``--checkpointing``), where it has the switch."""
        return bool(getattr(self.unet, "use_checkpoint", False))

    @use_checkpoint.setter
    def use_checkpoint(self, on: bool) -> None:
        self.unet.use_checkpoint = on

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        B = z.shape[0]
        if self.guidance_scale == 1.0:
            return self.unet(z, t, self.cond.expand(B, -1, -1).to(z.dtype))
        states = torch.cat([self.uncond.expand(B, -1, -1), self.cond.expand(B, -1, -1)]).to(z.dtype)
        e_u, e_c = self.unet(torch.cat([z, z]), torch.cat([t, t]), states).chunk(2)
        return e_u + self.guidance_scale * (e_c - e_u)


class LatentPrior(Prior):
    """A prior over images x_0 = D(z_0), z_0 from a latent diffusion model (module docstring).

    :param latent: the latent model (a :class:`~dps.diffusion.denoiser.Prior` over z, unbounded, data map identity).
    :param decoder: ``decoder(h) -> x`` (B, *event_shape) in the model's image space.
    :param encoder: ``encoder(x) -> h`` (B, *latent_shape), a left inverse of the decoder on its images (the mean of
        a VAE's posterior); None for a model without one (then PSLD and encoding refuse).
    :param scaling_factor, shift_factor: z = scaling_factor (h - shift_factor).
    :param data_range: the range of the model's images, mapped to [0, 1] data (None: the images are data).
    :param event_shape: the image shape.
    :param text: for text-conditioned models, ``text(prompt) -> states (1, L, E)`` (the tokenizer and the text
        encoder; an ``nn.Module`` moves with the prior to its device); :meth:`condition` then sets the prompt and
        guidance scale of ``latent.network`` (a :class:`GuidedNetwork`).
    """

    form = "latent"

    def __init__(self, latent: Prior, decoder: nn.Module, encoder: Optional[nn.Module], event_shape: tuple[int, ...],
                 scaling_factor: float = 1.0, shift_factor: float = 0.0,
                 data_range: Optional[tuple[float, float]] = (-1.0, 1.0),
                 text: Optional[Callable[[str], torch.Tensor]] = None) -> None:
        super().__init__()
        if getattr(latent, "form", None) == "latent":
            raise ValueError("a latent prior's latent model must be a prior over latents, not another latent prior")
        if not scaling_factor > 0:
            raise ValueError(f"scaling_factor must be positive, got {scaling_factor}")
        self.latent = latent
        self.decoder = decoder
        self.encoder = encoder
        self.scaling_factor, self.shift_factor = float(scaling_factor), float(shift_factor)
        self.event_shape = tuple(event_shape)
        self.data_range = data_range
        if data_range is not None:
            lo, hi = data_range
            self.data_scale, self.data_offset = 1.0 / (hi - lo), -lo / (hi - lo)
            self.data_bounds = (0.0, 1.0)
        self.text = text
        self.prompt, self.guidance_scale = "", 1.0

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.latent.event_shape)

    @property
    def conditional(self) -> bool:
        """Whether the model takes a prompt."""
        return self.text is not None

    def condition(self, prompt: str = "", guidance_scale: float = 1.0) -> "LatentPrior":
        """Set the prompt and the classifier-free guidance scale w >= 0 in place (text-conditioned models only; an
        unconditional model takes the empty prompt and w = 1). The prompt is encoded as the model's tokenizer does,
        cut at its length (77 tokens for CLIP). A scale w != 1 needs a prompt (with the empty prompt both branches are
        the same). Returns self."""
        prompt = "" if prompt is None else str(prompt)
        w = float(guidance_scale)
        if not (w >= 0 and w < float("inf")):
            raise DPSError(f"the guidance scale must be a number >= 0, got {guidance_scale!r}")
        if not self.conditional:
            if prompt or w != 1.0:
                raise DPSError("this latent model is unconditional: it takes no prompt or guidance scale; leave out "
                               "--prompt and --guidance-scale (in Python: condition() with no arguments)")
            return self
        if w != 1.0 and not prompt:
            raise DPSError("a guidance scale needs a prompt: with the empty prompt both branches of the guidance are "
                           "the same; give --prompt, or leave out --guidance-scale")
        net = self.latent.network
        net.cond = self.text(prompt).to(net.cond)
        net.guidance_scale = w
        self.prompt, self.guidance_scale = prompt, w
        return self

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x = D(z / scaling_factor + shift_factor): latents (B, *latent_shape) -> images (B, *event_shape), model
        space."""
        return self.decoder(z / self.scaling_factor + self.shift_factor)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z = scaling_factor (E(x) - shift_factor): model-space images -> latents."""
        if self.encoder is None:
            raise DPSError("this latent model has no encoder; use a method that does not encode (latent_dps, "
                           "latent_daps)")
        return self.scaling_factor * (self.encoder(x) - self.shift_factor)

    def sigma_range(self) -> tuple[float, float]:
        return self.latent.sigma_range()

    def model_radius(self) -> float:
        return self.latent.model_radius()

    def register_forward_hook(self, hook, *args, **kwargs):
        """Hooks watch the latent network (the evaluation counter counts its rows)."""
        return self.latent.register_forward_hook(hook, *args, **kwargs)

    @contextmanager
    def running(self, precision: str = "fp32", checkpointing: bool = False, compile: bool = False) -> Iterator[None]:
        with self.latent.running(precision, checkpointing, compile):
            yield

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> DenoiserOutput:
        raise DPSError("a latent model denoises latents, not images: use a latent method (latent_dps, psld, resample, "
                       "latent_daps)")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> DenoiserOutput:
        return self.denoise(x, t)
