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
from typing import Optional

from ..utils import save_torch
from .base import LinearOperator, MatrixOperator, Operator, conjugate_gradient
from .blur import Blur, gaussian_kernel
from .inpainting import Inpainting
from .kernel_wizard import KernelWizard, NonUniformBlur, load_kernel_wizard
from .motion_kernel import motion_kernel
from .nonlinear import PhaseRetrieval, SaturatedMotionBlur, fft2c, ifft2c
from .resize import SuperResolution

__all__ = [
    "Operator", "LinearOperator", "MatrixOperator", "conjugate_gradient", "Blur", "gaussian_kernel", "motion_kernel", "Inpainting",
    "SuperResolution", "PhaseRetrieval", "SaturatedMotionBlur", "NonUniformBlur", "KernelWizard",
    "load_kernel_wizard", "fft2c", "ifft2c", "save_operator", "load_operator", "OPERATOR_CLASSES",
]


#: saved name -> operator class; each class rebuilds itself with ``from_saved`` (the one table).
OPERATOR_CLASSES: dict[str, type[Operator]] = {cls.name: cls for cls in (
    Inpainting, SuperResolution, Blur, PhaseRetrieval, SaturatedMotionBlur, NonUniformBlur, MatrixOperator)}


def save_operator(op: Operator, path: str | Path) -> None:
    """Write the operator's name, config and random parameters (mask, kernel, latent) atomically.

    Network weights of a :class:`NonUniformBlur` are not copied (only its latent); the file loads
    with ``torch.load(weights_only=True)``.
    """
    state = {k: v.detach().cpu() for k, v in op.state_dict().items() if not k.startswith("model.")}
    payload = {"name": op.name, "config": op.config, "state": state}
    save_torch(payload, path)


def load_operator(path: str | Path, kernel_wizard: Optional[KernelWizard] = None) -> Operator:
    """Rebuild an operator saved by :func:`save_operator`, exactly (same mask, kernel or latent).

    A file that is not an operator file is a :class:`~dps.errors.DPSError` naming it.
    """
    from ..errors import DPSError
    from ..io import load_torch_file

    payload = load_torch_file(path, "operator file")
    if not isinstance(payload, dict) or not {"name", "config", "state"} <= set(payload):
        raise DPSError(f"{path} is not an operator file (expected the operator.pt that dps solve writes)")
    name = payload["name"]
    if name not in OPERATOR_CLASSES:
        raise DPSError(f"{path}: unknown operator {name!r}; known: {sorted(OPERATOR_CLASSES)}")
    try:
        op = OPERATOR_CLASSES[name].from_saved(payload["config"], payload["state"], kernel_wizard=kernel_wizard)
        state = dict(payload["state"])
        state.update({k: v for k, v in op.state_dict().items() if k.startswith("model.")})
        op.load_state_dict(state, strict=True)
    except DPSError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise DPSError(f"{path}: the {name} operator file is damaged ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}); rerun the run that made it") from None
    return op
