"""Measurement operators of the paper (images (B, C, H, W) in [0, 1]) and their save/load.

=====================  ==========================================================  =========
task                   operator                                                    linear
=====================  ==========================================================  =========
super-resolution x4    :class:`SuperResolution` (MATLAB bicubic, antialiased)       yes
box inpainting         :meth:`Inpainting.box` (128 px box at 256 px)                yes
random inpainting      :meth:`Inpainting.random` (92 % of pixels missing)           yes
Gaussian deblur        :meth:`Blur.gaussian` (61 x 61, std 3)                       yes
motion deblur          :meth:`Blur.motion` (61 x 61, intensity 0.5)                 yes
phase retrieval        :class:`PhaseRetrieval` (|F pad(x)|)                         no
nonlinear deblur       :class:`NonUniformBlur` (KernelWizard) or                   no
                       :class:`SaturatedMotionBlur` (ours, weight-free)
=====================  ==========================================================  =========
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..utils import atomic_path
from .base import LinearOperator, MatrixOperator, Operator, conjugate_gradient
from .blur import Blur, gaussian_kernel
from .inpainting import Inpainting
from .kernel_wizard import KernelWizard, NonUniformBlur, load_kernel_wizard
from .motion_kernel import motion_kernel
from .nonlinear import PhaseRetrieval, SaturatedMotionBlur, fft2c
from .resize import SuperResolution

__all__ = [
    "Operator", "LinearOperator", "MatrixOperator", "conjugate_gradient", "Blur", "gaussian_kernel", "motion_kernel", "Inpainting",
    "SuperResolution", "PhaseRetrieval", "SaturatedMotionBlur", "NonUniformBlur", "KernelWizard",
    "load_kernel_wizard", "fft2c", "save_operator", "load_operator",
]


def _shape(cfg: dict[str, Any]) -> tuple[int, int, int]:
    return tuple(cfg["in_shape"])  # type: ignore[return-value]


# The one table from saved names to constructors (placeholders are overwritten by the saved state).
_BUILDERS: dict[str, Callable[[dict[str, Any], dict[str, torch.Tensor], Optional[KernelWizard]], Operator]] = {
    "inpainting": lambda c, s, _: Inpainting(s["mask"], c["in_shape"][0], c["kind"]),
    "super_resolution": lambda c, s, _: SuperResolution(_shape(c), c["factor"]),
    "blur": lambda c, s, _: Blur(s["kernel"], _shape(c), c["boundary"], c["kind"]),
    "phase_retrieval": lambda c, s, _: PhaseRetrieval(_shape(c), pad=c["pad"]),
    "saturated_motion_blur": lambda c, s, _: SaturatedMotionBlur(
        _shape(c), c["exposure"], c["alpha"],
        blur=Blur(s["blur.kernel"], _shape(c["blur"]), c["blur"]["boundary"], c["blur"]["kind"])),
    "nonuniform_blur": lambda c, s, kw: NonUniformBlur(_require(kw), _shape(c), c["latent_std"], c["clamp"]),
}


def _require(kw: Optional[KernelWizard]) -> KernelWizard:
    if kw is None:
        raise ValueError("this operator is a KernelWizard blur: pass kernel_wizard=load_kernel_wizard(PATH)")
    return kw


def save_operator(op: Operator, path: str | Path) -> None:
    """Write the operator's name, config and random parameters (mask, kernel, latent) atomically.

    Network weights of a :class:`NonUniformBlur` are not copied (only its latent); the file loads
    with ``torch.load(weights_only=True)``.
    """
    state = {k: v.detach().cpu() for k, v in op.state_dict().items() if not k.startswith("model.")}
    payload = {"name": op.name, "config": op.config, "state": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_operator(path: str | Path, kernel_wizard: Optional[KernelWizard] = None) -> Operator:
    """Rebuild an operator saved by :func:`save_operator`, exactly (same mask, kernel or latent)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    name = payload.get("name")
    if name not in _BUILDERS:
        raise ValueError(f"{path}: unknown operator {name!r}; known: {sorted(_BUILDERS)}")
    op = _BUILDERS[name](payload["config"], payload["state"], kernel_wizard)
    state = dict(payload["state"])
    if name == "nonuniform_blur":
        state.update({f"model.{k}": v for k, v in op.model.state_dict().items()})
    op.load_state_dict(state, strict=True)
    return op
