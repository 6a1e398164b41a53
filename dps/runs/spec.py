"""The run specification: everything that defines a run's results, resolved once from its sources.

A :class:`RunSpec` is frozen: the task (operator, noise, the ``dps`` block), the method with its preset or
budget, the model, the seed, the number of samples K, and how it executes (:class:`~dps.execution.Execution`:
device, precision, checkpointing, compile, threads). :func:`resolve` builds it from four sources, each
overriding the one before:

1. the defaults (:class:`RunSpec`'s, the method's own settings);
2. the task: a shipped preset or a task file, with its step size from a step-size preset;
3. a previous run: when the task is a ``run.json``, its task, model, model config, samples, seed, method
   (with its preset or budget) and network settings (precision, checkpointing, compile);
4. the command line (:class:`Overrides`).

The method's settings (:meth:`RunSpec.method_settings`) follow from the spec: the task's ``dps`` block for
methods that follow it (DPS, MCG, Score-SDE), the method's defaults otherwise, then its preset or its
budget of network evaluations.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..diffusion.grid import GridSpec
from ..errors import DPSError, check_float
from ..execution import Execution
from ..io import load_mapping_file
from ..solvers.methods import Method, get_method
from ..tasks import Task, load_task, with_step_size

__all__ = ["RunSpec", "Overrides", "resolve", "settings_record", "settings_from_record"]


def settings_record(settings: Any) -> dict:
    """A method's settings dataclass as plain JSON values (a step rule by its name, tuples as lists, a grid as a
    dict, left out when it is the method's default, so records made before grids existed still match)."""
    record = settings.to_dict() if hasattr(settings, "to_dict") else \
        {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}
    if "grid" in record and settings.grid == type(settings)().grid:
        del record["grid"]
    return record


def settings_from_record(method: Method, record: dict):
    """The inverse of :func:`settings_record`: the method's settings from their recorded values."""
    values = dict(record)
    if isinstance(values.get("grid"), dict):
        values["grid"] = GridSpec(**values["grid"])
    if "sigma_min" in values and "grid" not in values and "grid" in {f.name for f in dataclasses.fields(method.settings)}:
        # a DAPS record of before grids: its annealing range on EDM's grid
        values["grid"] = GridSpec("edm", sigma_min=values.pop("sigma_min"), sigma_max=values.pop("sigma_max", None))
    return method.settings(**values)


@dataclass(frozen=True)
class RunSpec:
    """A resolved run: what is computed (task, method, model, seed, K) and where and how (execution).

    :param task: the resolved :class:`~dps.tasks.Task` (its step size applied).
    :param method: a name of the method table; :param method_preset: one of its presets, or None;
    :param nfe: run the method at this many network evaluations per sample (its budget rule), or None.
    :param model: the prior (an embedded name, a checkpoint file or a diffusers folder);
        :param model_config: a guided-diffusion config for a ``.pt`` checkpoint (preset name or file).
    :param seed: the run's seed (:mod:`dps.seeds`); :param samples: posterior samples K per measurement.
    :param execution: device, precision, checkpointing, compile, threads.
    :param grid: the noise-level grid asked for (``--grid`` and its parameters) over the method's own; the
        default GridSpec() changes nothing. Runs record the grid as it ran (:meth:`GridSpec.resolved`) in the
        method's settings, which a rerun from the ``run.json`` takes up.
    :param prompt: the prompt of a text-conditioned latent model ("" for none); :param guidance_scale: its
        classifier-free guidance scale (1: the prompt's branch alone). Both are recorded when not the defaults.
    :param steps_from: where the method's step count comes from (an option, a task-file key), for messages.
    """

    task: Task
    method: str = "dps"
    method_preset: Optional[str] = None
    nfe: Optional[int] = None
    model: str = "default"
    model_config: Optional[str] = None
    seed: int = 0
    samples: int = 1
    execution: Execution = field(default_factory=Execution)
    grid: GridSpec = GridSpec()
    prompt: str = ""
    guidance_scale: float = 1.0
    own_step_size: Optional[float] = None
    steps_from: str = field(default="", compare=False)

    @property
    def method_entry(self) -> Method:
        return get_method(self.method)

    def method_settings(self):
        """The method's settings for this run (module docstring)."""
        m = self.method_entry
        base = m.default_settings(self.task.dps_config(m.step_size) if m.from_task is not None else None)
        if self.own_step_size is not None:  # --step-size of a method with its own zeta' (latent DPS)
            base = dataclasses.replace(base, zeta=self.own_step_size)
        g = self.grid
        return m.with_grid(m.run_settings(base, self.nfe, self.method_preset), g.kind, rho=g.rho,
                           sigma_min=g.sigma_min, sigma_max=g.sigma_max)

    def key(self) -> dict:
        """The plain values a rerun must match to reuse the run's results (execution settings that change
        results by more than rounding are in it; the device and threads are recorded, not compared)."""
        optional = {"method_preset": self.method_preset, "nfe": self.nfe, "model_config": self.model_config,
                    "prompt": self.prompt or None, "guidance_scale": None if self.guidance_scale == 1.0 else
                    self.guidance_scale}
        return {"task": self.task.to_dict(), "method": self.method,
                "method_settings": settings_record(self.method_settings()), "model": self.model,
                "seed": self.seed, "samples": self.samples,
                **{k: v for k, v in optional.items() if v is not None}, **self.execution.network_settings()}


@dataclass(frozen=True)
class Overrides:
    """Choices from the command line (None: not given). The first group changes the task, the second the
    method, the third the run, the last how it executes."""

    noise: Optional[str] = None
    operator: Optional[dict] = None
    select: Optional[str] = None
    step_rule: Optional[str] = None
    preset: Optional[str] = None
    step_size: Optional[float] = None
    steps: Optional[int] = None

    method: Optional[str] = None
    method_preset: Optional[str] = None
    nfe: Optional[int] = None
    grid: Optional[str] = None
    rho: Optional[float] = None
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None

    model: Optional[str] = None
    model_config: Optional[str] = None
    prompt: Optional[str] = None
    guidance_scale: Optional[float] = None
    seed: Optional[int] = None
    samples: Optional[int] = None

    device: Optional[str] = None
    precision: Optional[str] = None
    checkpointing: Optional[bool] = None
    compile: Optional[bool] = None
    threads: Optional[int] = None


def previous_settings(source: Union[str, Path, Task]) -> dict:
    """The recorded settings when ``source`` is a run's ``run.json``, else {}."""
    if isinstance(source, Task):
        return {}
    path = Path(source)
    if path.suffix != ".json" or not path.is_file():
        return {}
    data = load_mapping_file(path, "task file")
    settings = data.get("settings")
    return settings if isinstance(settings, dict) else {}


def _first(*values):
    """The first value that is not None (the sources in order of precedence)."""
    return next((v for v in values if v is not None), None)


def _task(source: Union[str, Path, Task], o: Overrides) -> Task:
    """The task from its source with the command line's changes, its step size from the step-size presets."""
    task = source if isinstance(source, Task) else load_task(source, raw=True)
    dps = dict(task.dps)
    if o.step_rule is not None:
        dps["step_rule"] = o.step_rule
    select = task.select if o.select is None else (None if o.select == "first" else o.select)
    task = with_step_size(dataclasses.replace(task, operator=o.operator or task.operator, noise=o.noise or task.noise,
                                              dps=dps, select=select, source="" if o.operator else task.source),
                          o.preset)
    if o.step_size is not None:
        check_float(o.step_size, "--step-size (zeta')", 0.0)
        task = dataclasses.replace(task, dps={**task.dps, "zeta": o.step_size})
    return task.with_steps(o.steps) if o.steps is not None else task


def _steps_from(source, o: Overrides, method: str, method_preset: Optional[str], nfe: Optional[int]) -> str:
    """Where the method's step count comes from, as the user wrote it (for messages)."""
    if o.nfe is not None:
        return f"--nfe {o.nfe}"
    if o.steps is not None:
        return f"--steps {o.steps}"
    if method_preset is not None:
        return f"--method-preset {method_preset}"
    if nfe is not None:
        return f"the nfe {nfe} recorded in {source}"
    if get_method(method).from_task is None:
        return f"the method {method}'s default; set it with --nfe"
    if isinstance(source, Task):
        return f"the task {source.name}'s dps.steps"
    path = Path(source)
    if path.is_file():
        return f"steps in the dps block of {path}; or set it with --steps"
    return f"the task {source}'s steps; set it with --steps"


def _guidance(value) -> float:
    """A guidance scale, checked: a number >= 0."""
    return check_float(value, "--guidance-scale", 0.0)


def resolve(source: Union[str, Path, Task], overrides: Overrides = Overrides(),
            previous: Optional[dict] = None, execution: Optional[Execution] = None) -> RunSpec:
    """The run specification of a task source (a preset name, a task file, a ``run.json`` or a Task) with the
    command line's ``overrides`` (module docstring: defaults < task < previous run < command line).

    :param previous: the settings of a previous run (default: read from ``source`` when it is a run.json).
    :param execution: the run's Execution when the entry point has made it already (its device chosen
        once); otherwise it is made here from the overrides (:meth:`Execution.on`).
    """
    o = overrides
    if o.nfe is not None and o.steps is not None:
        raise DPSError("--nfe sets the method's steps; leave out --steps")
    prev = previous_settings(source) if previous is None else previous
    method = _first(o.method, prev.get("method"), "dps")
    entry = get_method(method)  # an unknown name is an error before anything else
    own_zeta = entry.from_task is None and entry.step_size  # its own zeta', set by --step-size (latent DPS)
    if entry.from_task is None and (o.steps is not None or o.step_rule is not None or
                                    (o.step_size is not None and not own_zeta)):
        if own_zeta:
            raise DPSError(f"method {method} keeps its own settings (`dps methods`), not the task's steps and step "
                           "rule: leave out --steps and --step-rule; --nfe sets its budget and --step-size its own zeta'")
        raise DPSError(f"method {method} keeps its own settings (`dps methods`), not the task's steps, step size and "
                       "step rule: leave out --steps, --step-size and --step-rule; --nfe sets its budget")
    if entry.from_task is not None and not entry.step_size and o.step_size is not None:
        raise DPSError(f"method {method} takes no step size zeta': leave out --step-size")
    same_method = method == prev.get("method", "dps")
    # a previous run's preset or budget is kept only where the command line changes neither nor the method
    method_preset = o.method_preset
    if method_preset is None and o.nfe is None and o.steps is None and same_method:
        method_preset = prev.get("method_preset")
    nfe = o.nfe
    if nfe is None and o.steps is None and method_preset is None:
        nfe = prev.get("nfe")
    if execution is None:
        network = {k: _first(getattr(o, k), prev.get(k)) for k in Execution.NETWORK_DEFAULTS}
        execution = Execution.on(o.device, threads=o.threads, **{k: v for k, v in network.items() if v is not None})
    recorded = (prev.get("method_settings") or {}).get("grid") if isinstance(prev.get("method_settings"), dict) else None
    grid = GridSpec(**recorded) if isinstance(recorded, dict) else GridSpec()  # a run.json's grid, as it ran
    if isinstance(recorded, dict) and grid.kind is None:  # recorded over a method's other default: the VP steps
        grid = GridSpec("vp")
    if (o.grid, o.rho, o.sigma_min, o.sigma_max) != (None, None, None, None):
        grid = grid.override(o.grid, o.rho, o.sigma_min, o.sigma_max) if same_method else \
            GridSpec().override(o.grid, o.rho, o.sigma_min, o.sigma_max)
    elif not same_method:
        grid = GridSpec()
    own_step_size = None
    if own_zeta:  # its zeta' is its own (not the task's): the command line's, else a previous run's of this method
        recorded = (prev.get("method_settings") or {}).get("zeta") if same_method and \
            isinstance(prev.get("method_settings"), dict) else None
        own_step_size = _first(o.step_size, recorded)
        own_step_size = None if own_step_size is None else check_float(own_step_size, "--step-size (zeta')", 0.0)
        o = dataclasses.replace(o, step_size=None)
    return RunSpec(task=_task(source, o), method=method, own_step_size=own_step_size, method_preset=method_preset, nfe=nfe, grid=grid,
                   steps_from=_steps_from(source, o, method, method_preset, nfe),
                   model=str(_first(o.model, prev.get("model"), "default")),
                   model_config=_first(o.model_config, prev.get("model_config")),
                   prompt=str(_first(o.prompt, prev.get("prompt"), "")),
                   guidance_scale=_guidance(_first(o.guidance_scale, prev.get("guidance_scale"), 1.0)),
                   seed=int(_first(o.seed, prev.get("seed"), 0)), samples=int(_first(o.samples, prev.get("samples"), 1)),
                   execution=execution)
