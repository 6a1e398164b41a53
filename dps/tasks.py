"""Task presets: YAML records of operator, noise and DPS settings (``dps/task_presets/*.yaml``).

A task file holds::

    name: super_resolution
    operator: {name: super_resolution, factor: 4}     # see OPERATOR_BUILDERS for names and keys
    noise: gaussian:0.025                              # or poisson:RATE
    dps: {steps: 1000, zeta: 0.3, step_rule: paper, clip_x0: [-1.0, 1.0]}
    select: best-residual                              # optional (K > 1): keep the lowest-residual sample

Shipped presets carry the paper's settings (operators at 256 px scale with the image size); they are the
one task catalogue: the demo's and the example's tasks are :class:`Variant` overrides of its entries.
Users write their own files with the same keys; unknown keys and values of the wrong type or range are
errors naming the key. This module is the one place where operator names become objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from .errors import DPSError
from .io import load_mapping_file
from .noise import NoiseModel, parse_noise
from .operators import Blur, Inpainting, Operator, PhaseRetrieval, SaturatedMotionBlur, SuperResolution
from .solvers.dps import DPSConfig

__all__ = ["TASK_NAMES", "Task", "Variant", "load_task", "build_operator", "check_operator_matches", "OPERATOR_BUILDERS",
           "STEP_SIZES", "DEFAULT_PRESET", "apply_preset", "with_step_size", "kernel_wizard_operator"]

PRESET_DIR = Path(__file__).resolve().parent / "task_presets"
#: the shipped tasks: every ``dps/task_presets/*.yaml`` but the step-size presets (the catalogue is the folder)
TASK_NAMES = tuple(sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if p.stem != "step_sizes"))
SELECT = (None, "best-residual")

Shape = tuple[int, int, int]


def _nonuniform(shape: Shape, g: torch.Generator, seed: int, weights: str, latent_std: float = 1.2) -> Operator:
    from .operators import NonUniformBlur, load_kernel_wizard

    return NonUniformBlur(load_kernel_wizard(weights), shape, latent_std=latent_std, generator=g)


#: operator name -> builder(shape, generator, seed, **params); the constructors validate the parameters.
#: Random draws use the generator or seed. The one place where names become operators.
OPERATOR_BUILDERS: dict[str, Callable[..., Operator]] = {
    "super_resolution": lambda shape, g, seed, factor=4: SuperResolution(shape, factor),
    "inpainting_box": lambda shape, g, seed, box=None, margin=None, centred=False: Inpainting.box(
        shape, box, margin, centred, generator=g),
    "inpainting_random": lambda shape, g, seed, missing=0.92: Inpainting.random(shape, missing, generator=g),
    "gaussian_blur": lambda shape, g, seed, size=None, std=None, boundary="reflect", truncate=None: Blur.gaussian(
        shape, size, std, boundary, truncate),
    "motion_blur": lambda shape, g, seed, size=None, intensity=0.5, boundary="reflect": Blur.motion(
        shape, size, intensity, seed, boundary),
    "phase_retrieval": lambda shape, g, seed, oversampling=2.0, pad=None, convention="ours": PhaseRetrieval(
        shape, oversampling, pad, convention),
    "saturated_motion_blur": lambda shape, g, seed, exposure=1.5, alpha=3.0, size=None, intensity=0.5: (
        SaturatedMotionBlur(shape, exposure, alpha, seed, blur=Blur.motion(shape, size, intensity, seed))),
    "nonuniform_blur": _nonuniform,
}


def build_operator(spec: dict[str, Any], shape: Shape, seed: int) -> Operator:
    """Build ``spec`` = {name: ..., **params} for images of ``shape``; random parts from ``seed``."""
    if not isinstance(spec, dict):
        raise DPSError(f"operator must be a mapping with a name, got {spec!r}")
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in OPERATOR_BUILDERS:
        raise DPSError(f"unknown operator {name!r}; known: {sorted(OPERATOR_BUILDERS)}")
    try:
        return OPERATOR_BUILDERS[name](shape, torch.Generator().manual_seed(seed), seed, **spec)
    except TypeError as exc:
        raise DPSError(f"bad parameters for operator {name!r}: {exc}") from None
    except ValueError as exc:  # the constructor's check of a parameter (DPSError is a ValueError too)
        raise DPSError(f"operator {name!r}: {exc}") from None


def kernel_wizard_operator(task: Union[str, Path], weights: Union[str, Path]) -> dict:
    """The operator spec of the paper's KernelWizard blur with ``weights`` (GOPRO_wVAE.pth), for the task
    ``task`` (a name or file), which must be the nonlinear deblurring task."""
    name = load_task(task, raw=True).name
    if name != "nonlinear_blur":
        raise DPSError(f"--kernel-wizard applies to the nonlinear_blur task only, not {name}")
    return {"name": "nonuniform_blur", "weights": str(Path(weights).resolve())}


def check_operator_matches(op: Operator, spec: dict[str, Any], shape: Shape, source: str) -> None:
    """A DPSError unless ``op`` (e.g. loaded from ``source``) is the operator that ``spec`` describes: the
    same kind and the same settings (its random draws may differ)."""
    expected = build_operator(spec, shape, 0)
    if op.name != expected.name or op.config != expected.config:
        raise DPSError(f"{source} holds the operator {op.name} {op.config}, but the task's operator is "
                       f"{expected.name} {expected.config}; pass the matching --task or --operator")


@dataclass
class Task:
    """A resolved task: operator spec, noise spec, DPS config and the K > 1 selection rule."""

    name: str
    operator: dict
    noise: str
    dps: dict = field(default_factory=dict)
    select: Optional[str] = None
    source: str = field(default="", compare=False)  # the task file it was read from (messages), or ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DPSError(f"task name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.operator, dict) or "name" not in self.operator:
            raise DPSError(f"task {self.name}: operator must be a mapping with a name, got {self.operator!r}")
        if not isinstance(self.dps, dict):
            raise DPSError(f"task {self.name}: dps must be a mapping of DPS settings, got {self.dps!r}")
        if self.select not in SELECT:
            raise DPSError(f"select must be one of {SELECT}, got {self.select!r}")
        self._config({"zeta": 1.0, **self.dps})  # validate now (zeta' may come later from a preset)
        parse_noise(self.noise)

    def dps_config(self, step_size: bool = True) -> DPSConfig:
        """The task's DPS settings; ``step_size=False`` (a method that does not use zeta') accepts a task without
        zeta' (the config's zeta' then is DPSConfig's default and means nothing)."""
        if step_size and "zeta" not in self.dps:
            kind = parse_noise(self.noise).kind
            presets = presets_with_step_size(self.name, kind)
            fix = ("pass --step-size" if self.name in TASK_NAMES else "add dps.zeta to the task file or pass --step-size") \
                + (f", or --preset {' or '.join(presets)}" if presets else "")
            none = "" if presets else " (no step-size preset has one)"
            raise DPSError(f"task {self.name} with {kind} noise sets no step size zeta'{none}: {fix}")
        return self._config(self.dps)

    def _config(self, d: dict) -> DPSConfig:
        d = dict(d)
        known = {f.name for f in fields(DPSConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DPSError(f"unknown dps settings {unknown}; known: {sorted(known)}")
        try:
            return DPSConfig(**d)
        except DPSError as exc:
            raise DPSError(f"task {self.name}: dps.{exc}") from None

    def noise_model(self) -> NoiseModel:
        return parse_noise(self.noise)

    def with_steps(self, steps: int) -> "Task":
        """This task at ``steps`` reverse steps, its zeta' keeping its meaning: zeta' is given for the task's
        own step count (or an earlier ``reference_steps``), which becomes ``reference_steps``
        (:attr:`DPSConfig.zeta_per_step`). The one place where a step count is overridden."""
        cfg = self._config({"zeta": 1.0, **self.dps}).at_steps(steps)
        dps = {k: v for k, v in self.dps.items() if k != "reference_steps"}
        dps.update({"steps": cfg.steps, **({"reference_steps": cfg.reference_steps} if cfg.reference_steps else {})})
        return replace(self, dps=dps)

    def to_dict(self) -> dict:
        return {"name": self.name, "operator": dict(self.operator), "noise": self.noise, "dps": dict(self.dps),
                "select": self.select}


#: the step-size presets (``dps/task_presets/step_sizes.yaml``): name -> {noise kind or "any": {task: zeta'},
#: "operator": {task: operator overrides}, "noise": {task: noise}}.
STEP_SIZES: dict[str, dict] = load_mapping_file(PRESET_DIR / "step_sizes.yaml", "step-size presets")
#: the preset a task without dps.zeta takes (the paper's FFHQ values; the documentation's Tasks page says why).
DEFAULT_PRESET = "paper-ffhq"


def presets_with_step_size(task_name: str, kind: str) -> list[str]:
    """The step-size presets that hold a zeta' for ``task_name`` with ``kind`` noise."""
    return [name for name, table in STEP_SIZES.items()
            if task_name in {**(table.get("any") or {}), **(table.get(kind) or {})}]


def apply_preset(task: Task, preset: str) -> Task:
    """``task`` with the zeta' (and, for ``authors``, the operator and noise) of a step-size preset.

    The value is looked up by the task's name and its noise kind; a task the preset has no value for is
    a DPSError that says so (the paper gives none for, e.g., phase retrieval on ImageNet).
    """
    if preset not in STEP_SIZES:
        raise DPSError(f"unknown preset {preset!r}; choose one of {', '.join(STEP_SIZES)}")
    table = STEP_SIZES[preset]
    noise = (table.get("noise") or {}).get(task.name, task.noise)
    kind = parse_noise(noise).kind
    values = {**(table.get("any") or {}), **(table.get(kind) or {})}
    if task.name not in values:
        others = [p for p in presets_with_step_size(task.name, kind) if p != preset]
        has = f"it has values for {', '.join(sorted(values))}" if values else f"it has none for {kind} noise"
        raise DPSError(f"preset {preset} has no step size for task {task.name} with {kind} noise ({has}); pass "
                       "--step-size" + (f" or --preset {' or '.join(others)}" if others else ""))
    operator = {**task.operator, **(table.get("operator") or {}).get(task.name, {})}
    return replace(task, operator=operator, noise=noise, dps={**task.dps, "zeta": float(values[task.name])})


def with_step_size(task: Task, preset: Optional[str] = None) -> Task:
    """Apply ``preset`` if given; else give a task without dps.zeta the default preset's value where it has
    one (the shipped tasks carry none, so the preset file is their one home)."""
    if preset is not None:
        return apply_preset(task, preset)
    if "zeta" not in task.dps:
        try:
            return apply_preset(task, DEFAULT_PRESET)
        except DPSError:
            return task  # no value: dps_config() says how to set one
    return task


def load_task(name_or_path: Union[str, Path], preset: Optional[str] = None, raw: bool = False) -> Task:
    """A shipped task by name, or a YAML/JSON task file (``run.json`` of a solve run works too), with its
    step size from :func:`with_step_size` (``raw=True``: as written, for callers that change the noise or
    operator first and then call :func:`with_step_size`)."""
    text = str(name_or_path)
    path = PRESET_DIR / f"{text}.yaml" if text in TASK_NAMES else Path(text)
    if not path.is_file():
        raise DPSError(f"unknown task {text!r}: not a preset ({', '.join(TASK_NAMES)}) and not a file")
    data = load_mapping_file(path, "task file")
    if isinstance(data.get("settings"), dict) and "task" in data["settings"]:
        data = data["settings"]["task"]  # the run.json of a solve run
    allowed = {"name", "operator", "noise", "dps", "select"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise DPSError(f"{path}: unknown task keys {unknown}; allowed: {sorted(allowed)}")
    if "operator" not in data or "noise" not in data:
        raise DPSError(f"{path}: a task needs 'operator' and 'noise'")
    try:
        task = Task(name=data.get("name", path.stem), operator=data["operator"], noise=data["noise"],
                    dps=data.get("dps") or {}, select=data.get("select"), source=str(path))
    except DPSError as exc:
        raise DPSError(f"{path}: {exc}") from None
    return task if raw else with_step_size(task, preset)


@dataclass(frozen=True)
class Variant:
    """A catalogue task with overrides (the demo's and the example's tasks are such variants).

    :param name: the variant's name; :param task: the catalogue entry it starts from;
    :param operator: operator parameters that replace the entry's; :param noise: the noise (None: the
    entry's); :param zeta: zeta' (rule "paper"); :param title: a label for figures;
    :param zeta_steps: the step count zeta' was chosen at (None: the entry's steps).
    """

    name: str
    task: str
    title: str
    operator: dict = field(default_factory=dict)
    noise: Optional[str] = None
    zeta: Optional[float] = None
    zeta_steps: Optional[int] = None

    def resolve(self, steps: Optional[int] = None, **dps: Any) -> Task:
        """The variant as a task at ``steps`` steps (default: zeta_steps, else the entry's)."""
        base = load_task(self.task)
        own = {**({"zeta": self.zeta} if self.zeta is not None else {}),
               **({"steps": self.zeta_steps} if self.zeta_steps is not None else {})}
        task = Task(self.name, {**base.operator, **self.operator}, self.noise or base.noise,
                    {**base.dps, **own, **dps}, base.select)
        return task if steps is None else task.with_steps(steps)
