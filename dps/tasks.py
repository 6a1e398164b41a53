"""Task presets: YAML records of operator, noise and DPS settings (``dps/task_presets/*.yaml``).

A task file holds::

    name: super_resolution
    operator: {name: super_resolution, factor: 4}     # see OPERATOR_BUILDERS for names and keys
    noise: gaussian:0.025                              # or poisson:RATE
    dps: {steps: 1000, zeta: 0.3, step_rule: paper, clip_x0: [-1.0, 1.0]}
    select: best-residual                              # optional (K > 1): keep the lowest-residual sample

Shipped presets carry the paper's settings (operators at 256 px scale with the image size). Users write
their own files with the same keys; unknown keys are errors. This module is the one place where operator
names become objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import yaml

from .noise import NoiseModel, parse_noise
from .operators import Blur, Inpainting, Operator, PhaseRetrieval, SaturatedMotionBlur, SuperResolution
from .solvers.dps import DPSConfig

__all__ = ["TASK_NAMES", "Task", "load_task", "build_operator", "OPERATOR_BUILDERS"]

PRESET_DIR = Path(__file__).resolve().parent / "task_presets"
TASK_NAMES = ("super_resolution", "inpainting_box", "inpainting_random", "gaussian_blur", "motion_blur",
              "phase_retrieval", "nonlinear_blur")
SELECT = (None, "best-residual")

Shape = tuple[int, int, int]


def _nonuniform(shape: Shape, g: torch.Generator, seed: int, weights: str, latent_std: float = 1.2) -> Operator:
    from .operators import NonUniformBlur, load_kernel_wizard

    op = NonUniformBlur(load_kernel_wizard(weights), shape, latent_std=latent_std, generator=g)
    return op


#: operator name -> builder(shape, generator, seed, **params). Random draws use the generator or seed.
OPERATOR_BUILDERS: dict[str, Callable[..., Operator]] = {
    "super_resolution": lambda shape, g, seed, factor=4: SuperResolution(shape, int(factor)),
    "inpainting_box": lambda shape, g, seed, box=None, margin=None, centred=False: Inpainting.box(
        shape, box, margin, bool(centred), generator=g),
    "inpainting_random": lambda shape, g, seed, missing=0.92: Inpainting.random(shape, float(missing), generator=g),
    "gaussian_blur": lambda shape, g, seed, size=None, std=None, boundary="reflect": Blur.gaussian(
        shape, size, std, boundary),
    "motion_blur": lambda shape, g, seed, size=None, intensity=0.5, boundary="reflect": Blur.motion(
        shape, size, float(intensity), seed, boundary),
    "phase_retrieval": lambda shape, g, seed, oversampling=2.0, pad=None: PhaseRetrieval(
        shape, float(oversampling), pad),
    "saturated_motion_blur": lambda shape, g, seed, exposure=1.5, alpha=3.0, size=None, intensity=0.5: (
        SaturatedMotionBlur(shape, float(exposure), float(alpha), seed,
                            blur=Blur.motion(shape, size, float(intensity), seed))),
    "nonuniform_blur": _nonuniform,
}


def build_operator(spec: dict[str, Any], shape: Shape, seed: int) -> Operator:
    """Build ``spec`` = {name: ..., **params} for images of ``shape``; random parts from ``seed``."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in OPERATOR_BUILDERS:
        raise ValueError(f"unknown operator {name!r}; known: {sorted(OPERATOR_BUILDERS)}")
    try:
        return OPERATOR_BUILDERS[name](shape, torch.Generator().manual_seed(seed), seed, **spec)
    except TypeError as exc:
        raise ValueError(f"bad parameters for operator {name!r}: {exc}") from None


@dataclass
class Task:
    """A resolved task: operator spec, noise spec, DPS config and the K > 1 selection rule."""

    name: str
    operator: dict
    noise: str
    dps: dict = field(default_factory=dict)
    select: Optional[str] = None

    def __post_init__(self) -> None:
        if self.select not in SELECT:
            raise ValueError(f"select must be one of {SELECT}, got {self.select!r}")
        self.dps_config()  # validate now
        parse_noise(self.noise)

    def dps_config(self) -> DPSConfig:
        d = dict(self.dps)
        if d.get("clip_x0") is not None:
            d["clip_x0"] = tuple(float(v) for v in d["clip_x0"])
        known = {f.name for f in fields(DPSConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown dps settings {unknown}; known: {sorted(known)}")
        return DPSConfig(**d)

    def noise_model(self) -> NoiseModel:
        return parse_noise(self.noise)

    def to_dict(self) -> dict:
        return {"name": self.name, "operator": dict(self.operator), "noise": self.noise, "dps": dict(self.dps),
                "select": self.select}


def load_task(name_or_path: Union[str, Path]) -> Task:
    """A shipped preset by name, or a YAML/JSON task file (``run.json`` of a solve run works too)."""
    text = str(name_or_path)
    path = PRESET_DIR / f"{text}.yaml" if text in TASK_NAMES else Path(text)
    if not path.is_file():
        raise ValueError(f"unknown task {text!r}: not a preset ({', '.join(TASK_NAMES)}) and not a file")
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("settings"), dict) and "task" in data["settings"]:
        data = data["settings"]["task"]  # the run.json of a solve run
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a task file must be a mapping")
    allowed = {"name", "operator", "noise", "dps", "select"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown task keys {unknown}; allowed: {sorted(allowed)}")
    if "operator" not in data or "noise" not in data:
        raise ValueError(f"{path}: a task needs 'operator' and 'noise'")
    return Task(name=data.get("name", path.stem), operator=data["operator"], noise=data["noise"],
                dps=data.get("dps") or {}, select=data.get("select"))
