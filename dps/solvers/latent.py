"""What the latent methods share: the measurement of a latent, the requirement, the decoded result.

A latent method (``latent_dps``, ``psld``, ``resample``, ``latent_daps``) takes a
:class:`~dps.diffusion.latent.LatentPrior` and a measurement in data space, y = A(x) + n with x = to_data(D(z)),
samples latents z of the latent model and returns the decoded images x = clip(to_data(D(z_0))), so every
method of the table returns images of the prior's ``event_shape``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..operators.base import Operator

__all__ = ["DecodedOperator", "decoded", "decoding_callback", "is_latent"]


def is_latent(prior) -> bool:
    """Whether ``prior`` is a latent model (:class:`~dps.diffusion.latent.LatentPrior`)."""
    return getattr(prior, "form", None) == "latent"


class DecodedOperator(Operator):
    """A_z(z) = A(to_data(D(z))): the operator ``op`` seen from the latents (B, *latent_shape) of ``prior``.

    Nonlinear whatever A is (the decoder is); its gradient runs through the decoder (one VJP of D per use)."""

    name = "decoded"

    def __init__(self, op: Operator, prior) -> None:
        super().__init__()
        self.__dict__["_op"], self.__dict__["_prior"] = op, prior  # not submodules: they are not the operator's
        self.config = {"in_shape": list(prior.latent_shape), "operator": op.name}

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self._op.out_shape

    def A(self, z: torch.Tensor) -> torch.Tensor:
        return self._op(self._prior.to_data(self._prior.decode(z)))


def decoded(prior, z: torch.Tensor) -> torch.Tensor:
    """Latents (B, *latent_shape) -> data-space images (B, *event_shape), clipped to the prior's data bounds."""
    with torch.no_grad():
        return prior.clip_data(prior.to_data(prior.decode(z)))


def decoding_callback(prior, callback: Optional[Callable[[dict], None]]) -> Optional[Callable[[dict], None]]:
    """A sampler's per-step callback on latents as one on images: the record keeps the latents as ``z`` (the
    iterate) and ``z0`` (its estimate) and gives ``x0`` = D(z0) and ``x`` = D(z) in model space, each decoded only
    when the callback reads it (a progress bar reads neither; progress frames read x0 at a few steps)."""
    if callback is None:
        return None

    def on_step(record: dict) -> None:
        callback(_DecodedRecord(prior, record))

    return on_step


class _DecodedRecord(dict):
    """A step record whose ``x`` and ``x0`` are decoded from ``z`` and ``z0`` on first access."""

    def __init__(self, prior, record: dict) -> None:
        super().__init__({k: v for k, v in record.items() if k not in ("x", "x0")}, z=record["x"], z0=record["x0"])
        self._prior = prior

    def __missing__(self, key: str):
        if key not in ("x", "x0"):
            raise KeyError(key)
        with torch.no_grad():
            self[key] = self._prior.decode(self["z" if key == "x" else "z0"])
        return self[key]
