"""The one method table: every reconstruction method, DPS included, as one :class:`Method` entry.

A method's function has one signature,

    fn(prior, op, y, noise, generators, settings[, callback]) -> x (B, *event_shape)

with y (B, *measurement_shape) in data space, one generator per row of y, ``settings`` an instance of the
method's own frozen settings dataclass (:attr:`Method.settings`: :class:`~dps.solvers.dps.DPSConfig` for
DPS, :class:`~dps.solvers.ddrm.DDRMSettings` for DDRM, ...) and x in data space, clipped to the prior's
data bounds. Methods that report progress (:attr:`Method.progress`) take a ``callback`` that they call
after every step with one record, {i, t, x, x0} (i counts down to 0; x and x0 in model space).
:func:`reconstruct` draws K samples per measurement and returns a :class:`Reconstruction` whose
``residual`` is in one stated norm for every method: ||y - A(x)||_2 of the returned x, in data units.

Each entry declares when it applies to an (operator, noise, prior) triple through :class:`Requirement`
objects that read the operators', noise models' and priors' declared capabilities (:data:`VP_PRIOR`: the
methods derived for the VP process only); :meth:`Method.why_not` says why not.

Budgets have one rule (:meth:`Method.at_budget`): N network evaluations per sample buy N / e levels of the
method's grid, e the evaluations per level (DAPS: its ODE steps; 1 otherwise), written into the settings
field the entry names (:attr:`Method.counter`), with DPS's and MCG's zeta' keeping its meaning at the new
count (:func:`~dps.solvers.dps.at_steps`). The methods with a ``grid`` setting run on any noise-level grid
(:mod:`dps.diffusion.grid`; :meth:`Method.with_grid`).
The commands, the CLI's choices, the documentation's method table and the generic tests read
:data:`METHODS`; adding a method is one module and one entry here.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from ..errors import CapabilityMissing, DPSError, NotApplicable, check_int
from .admm import ADMMTVSettings, PnPADMMSettings, admm_tv, pnp_admm
from .daps import DAPS_PRESETS, DAPSSettings, daps
from .ddrm import DDRMSettings, ddrm
from .diffpir import DiffPIRSettings, diffpir
from .divergence import check_residual
from .latent import is_latent
from .latent_daps import LatentDAPSSettings, latent_daps
from .latent_dps import LatentDPSSettings, latent_dps
from .psld import PSLDSettings, psld
from .resample import ReSampleSettings, resample
from .dps import DPSConfig, at_steps, check_measurement, check_prior_operator, dps_sample, in_prior_dtype
from .phase import ERSettings, HIOSettings, er, hio, oss
from .pigdm import PiGDMSettings, pigdm
from .projection import MCGSettings, ScoreSDESettings, mcg, score_sde
from .tds import TDSSettings, tds

__all__ = ["Method", "METHODS", "Reconstruction", "Requirement", "reconstruct", "get_method", "methods_markdown",
           "count_evaluations", "VP_PRIOR"]


@dataclass(frozen=True)
class Requirement:
    """A condition on (operator, noise, prior): ``check(op, noise, prior)`` returns None when met, else the
    reason (``prior`` None: not known yet, then conditions on the prior are met)."""

    name: str
    check: Callable[[object, object, object], Optional[str]]


def _linear(op, noise, prior=None) -> Optional[str]:
    return None if op.linear else f"it needs a linear operator; {op.name} is nonlinear"


def _spectral(op, noise, prior=None) -> Optional[str]:
    if not op.linear:
        return f"it needs an SVD of the operator; {op.name} is nonlinear"
    try:
        op.spectral()
    except CapabilityMissing as exc:
        return str(exc)
    return None


def _gaussian(op, noise, prior=None) -> Optional[str]:
    return None if noise.kind == "gaussian" else f"it is derived for Gaussian noise, not {noise.kind} noise"


def _fourier(op, noise, prior=None) -> Optional[str]:
    return None if op.fourier_support is not None else \
        f"it needs y = |F pad(x)| of a zero-padded, non-negative object; {op.name} {op.config} is not of that form"


def _images(op, noise, prior=None) -> Optional[str]:
    return None if len(op.in_shape) == 3 else "it works on images (C, H, W), not vectors"


def _vp_prior(op, noise, prior=None) -> Optional[str]:
    form = getattr(prior, "form", "vp")
    others = ", ".join(m.name for m in METHODS.values() if VP_PRIOR not in m.requires and m.counter is not None)
    return None if form == "vp" else \
        f"it is derived for the VP process (its steps use the training schedule's abar_t); this model is " \
        f"{form.upper()}: use a method that takes any model ({others})"


LINEAR = Requirement("linear operator", _linear)
SPECTRAL = Requirement("SVD form", _spectral)
GAUSSIAN = Requirement("Gaussian noise", _gaussian)
FOURIER = Requirement("Fourier magnitude", _fourier)
IMAGES = Requirement("image operator", _images)
VP_PRIOR = Requirement("VP model", _vp_prior)


def _latent_vp(op, noise, prior=None) -> Optional[str]:
    form = getattr(getattr(prior, "latent", None), "form", "vp")
    return None if form == "vp" else \
        f"its steps use the latent model's VP schedule (abar_t); this latent model is {form.upper()}: use latent_dps " \
        "or latent_daps"


def _encoder(op, noise, prior=None) -> Optional[str]:
    return None if prior is None or getattr(prior, "encoder", None) is not None else \
        "it encodes images and this latent model has no encoder: use latent_dps or latent_daps"


LATENT_VP = Requirement("latent VP model", _latent_vp)
ENCODER = Requirement("encoder", _encoder)


def _dps(prior, op, y, noise, generators, settings: DPSConfig, callback=None) -> torch.Tensor:
    return dps_sample(prior, op, y, noise, settings, generator=generators, callback=callback).x[:, 0]


def _steps(settings) -> int:
    return settings.steps


def _dps_from_task(config: DPSConfig) -> DPSConfig:
    return config


def _mcg_from_task(c: DPSConfig) -> MCGSettings:
    return MCGSettings(steps=c.steps, zeta=c.zeta, reference_steps=c.reference_steps, spacing=c.spacing)


def _score_sde_from_task(c: DPSConfig) -> ScoreSDESettings:
    return ScoreSDESettings(steps=c.steps, spacing=c.spacing)


@dataclass(frozen=True)
class Method:
    """One reconstruction method: its function, where it comes from, what it needs and its settings.

    :param fn: ``fn(prior, op, y, noise, generators, settings[, callback][, num_samples]) -> x``.
    :param settings: the frozen dataclass of its settings; its defaults are the method's defaults, and an
        instance of it is what :func:`reconstruct` passes.
    :param note: what the method table's settings column says beside the defaults.
    :param from_task: for methods that follow a task's ``dps`` block (DPS, MCG, Score-SDE): the settings that a
        task's :class:`~dps.solvers.dps.DPSConfig` gives; None: the method keeps its own defaults.
    :param step_size: True when the method takes DPS's step size zeta': ``from_task`` reads the task's (a task without
        one is then an error), a method with its own settings takes ``--step-size`` as its ``zeta`` (latent DPS).
    :param progress: the number of callback calls a run with the given settings makes (one per step, each with
        {i, t, x, x0}, i counting down to 0); None for methods that report no progress (they take no callback).
    :param sampler: True when it draws posterior samples, False for point estimates (K > 1 then repeats the
        estimate, or for the phase-retrieval algorithms its random restarts).
    :param counter: the settings field that counts its levels (steps, levels, iterations), which a budget of
        network evaluations sets (:meth:`at_budget`); None for methods without a network or without such a knob.
    :param vjp: True when each evaluation also backpropagates through the network (about twice the cost).
    :param presets: named settings from the method's paper (``--method-preset NAME``), e.g. DAPS-1K.
    :param particles: True when the K samples of one measurement are one interacting particle system
        (sequential Monte Carlo): :func:`reconstruct` then passes ``num_samples`` = K to the function, and a
        sample depends on the other samples of its measurement (never on other measurements).
    :param latent: True for the methods that sample the latents of a latent model
        (:class:`~dps.diffusion.latent.LatentPrior`); the other network methods take pixel models only.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    title: str
    source: str
    settings: type
    note: str = ""
    requires: tuple[Requirement, ...] = ()
    from_task: Optional[Callable[[DPSConfig], Any]] = None
    step_size: bool = False
    progress: Optional[Callable[[Any], int]] = None
    sampler: bool = True
    counter: Optional[str] = None
    vjp: bool = False
    presets: dict = field(default_factory=dict, hash=False)
    particles: bool = False
    latent: bool = False

    def default_settings(self, task_config: Optional[DPSConfig] = None):
        """The settings of a run on a task whose ``dps`` block is ``task_config`` (methods that follow the task),
        else the method's defaults."""
        if self.from_task is not None and task_config is not None:
            return self.from_task(task_config)
        return self.settings()

    def at_budget(self, nfe: int, settings):
        """``settings`` changed to spend about ``nfe`` network evaluations per sample (the one budget rule, module
        docstring), or a DPSError for methods that use no network or have no budget knob."""
        if self.counter is None:
            raise DPSError(f"method {self.name} runs no network, so it has no --nfe budget; leave out --nfe")
        settings = self.check_settings(settings)
        if hasattr(settings, "steps_for"):  # a method whose levels cost unequal evaluations (ReSample)
            return replace(settings, **{self.counter: settings.steps_for(nfe)})
        per = getattr(settings, "ode_steps", 1)  # evaluations per level (DAPS's ODE steps)
        if nfe < per:
            raise DPSError(f"--nfe {nfe} is less than one {self.counter[:-1]} of {self.name}, which takes {per} "
                           f"network evaluations ({per} ODE steps): give --nfe {per} or more")
        n = nfe // per
        if hasattr(settings, "reference_steps"):
            return at_steps(settings, n)
        return replace(settings, **{self.counter: n})

    @property
    def takes_grid(self) -> bool:
        """Whether the method runs on any noise-level grid (its settings have a ``grid``)."""
        return any(f.name == "grid" for f in fields(self.settings))

    def with_grid(self, settings, kind: Optional[str] = None, **params):
        """``settings`` on the grid ``kind`` with ``params`` (rho, sigma_min, sigma_max; None: kept) replacing the
        method's (:meth:`GridSpec.override`); a DPSError for a method that runs on the VP steps only."""
        settings = self.check_settings(settings)
        given = {k: v for k, v in params.items() if v is not None}
        if kind is None and not given:
            return settings
        if not self.takes_grid:
            if kind == "vp" and not given:
                return settings
            where = "runs on the VP model's own respaced steps only" if self.counter == "steps" else "takes no grid"
            raise DPSError(f"method {self.name} {where}; leave out --grid, --rho, --sigma-min and --sigma-max (the "
                           f"methods that take a grid: {', '.join(m.name for m in METHODS.values() if m.takes_grid)})")
        return replace(settings, grid=settings.grid.override(kind, **given))

    def run_settings(self, settings, nfe: Optional[int] = None, preset: Optional[str] = None):
        """``settings`` at a budget of ``nfe`` evaluations or with the named ``preset`` (not both; neither:
        ``settings`` as given)."""
        settings = self.check_settings(settings)
        if preset is not None:
            if nfe is not None:
                raise DPSError("a method preset sets the method's budget; leave out --nfe")
            return replace(settings, **self.preset(preset))
        return settings if nfe is None else self.at_budget(nfe, settings)

    def preset(self, name: str) -> dict:
        """The settings of the preset called ``name``, or a DPSError naming the method's presets."""
        if name not in self.presets:
            known = f"its presets: {', '.join(self.presets)}" if self.presets else "it has none"
            raise DPSError(f"method {self.name} has no preset {name!r}; {known}")
        return dict(self.presets[name])

    def check_settings(self, settings):
        """``settings`` if it is this method's settings type, else a DPSError that names the type to pass."""
        if not isinstance(settings, self.settings):
            raise DPSError(f"method {self.name} takes {self.settings.__name__}, got {type(settings).__name__}")
        return settings

    def settings_text(self) -> str:
        """The settings column of the method table: the note, and the defaults of methods with their own."""
        own = "" if self.from_task is not None else settings_line(self.settings())
        return "; ".join(p for p in (own, self.note) if p)

    def advice(self, settings) -> str:
        """What to change when a run with ``settings`` diverges (the divergence guards' advice)."""
        grid = getattr(settings, "grid", None)
        low = grid.sigma_min if grid is not None and grid.sigma_min is not None and grid.sigma_min >= 1 else None
        coarse = f"; or the grid stops at sigma {low:g}, whose noise the result keeps: lower --sigma-min" if low else ""
        if self.step_size:
            where = "zeta in the dps block of a task file" if self.from_task is not None else \
                f"{self.settings.__name__}(zeta=...) in Python"
            return (f"{self.title}'s step size zeta'={settings.zeta} is too large for this problem: lower it "
                    f"(dps solve --step-size, or {where}){coarse}")
        return f"{self.title} is unstable with these settings on this problem ({settings_line(settings)}){coarse}"

    def why_not(self, op, noise, prior=None) -> Optional[str]:
        """None when the method applies to (op, noise, prior), else the reason (one sentence); ``prior`` None
        checks the operator and the noise only."""
        if prior is not None and self.counter is not None and is_latent(prior) != self.latent:
            names = ", ".join(m.name for m in METHODS.values() if m.latent == is_latent(prior) and m.counter)
            what = "latents: it needs a latent model (digits-latent, a Stable Diffusion or LDM folder)" if self.latent \
                else "pixels and this model is a latent model"
            return f"{self.name} does not apply: it samples {what}; use {names}"
        for req in self.requires:
            reason = req.check(op, noise, prior)
            if reason is not None:
                return f"{self.name} does not apply: {reason}"
        return None

    def check(self, op, noise, prior=None) -> None:
        """Raise :class:`~dps.errors.NotApplicable` with the reason when the method does not apply."""
        reason = self.why_not(op, noise, prior)
        if reason is not None:
            raise NotApplicable(reason)


#: name -> method; the one table (order = the order of the paper's tables).
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dps", _dps, "DPS", "Chung et al., ICLR 2023 (Algorithm 1; Poisson: Eq. 19)", DPSConfig,
           "the task's steps, zeta' and step rule, the model's own grid", (), from_task=_dps_from_task, step_size=True, progress=_steps,
           counter="steps", vjp=True),
    Method("ddrm", ddrm, "DDRM", "Kawar et al., NeurIPS 2022", DDRMSettings, "",
           (LINEAR, SPECTRAL, GAUSSIAN, VP_PRIOR), progress=_steps, counter="steps"),
    Method("mcg", mcg, "MCG", "Chung et al., NeurIPS 2022", MCGSettings,
           "the task's steps and zeta' (rule 'paper'), then the noised-measurement projection", (LINEAR, VP_PRIOR),
           from_task=_mcg_from_task, step_size=True, progress=_steps, counter="steps", vjp=True),
    Method("score_sde", score_sde, "Score-SDE / ILVR", "Song et al., ICLR 2021; Choi et al., ICCV 2021",
           ScoreSDESettings, "the task's steps, projection after each unconditional DDPM step", (LINEAR, VP_PRIOR),
           from_task=_score_sde_from_task, progress=_steps, counter="steps"),
    Method("pigdm", pigdm, "Pi-GDM", "Song et al., ICLR 2023", PiGDMSettings, "DDIM, r_t^2 = 1 - abar_t",
           (LINEAR, GAUSSIAN), progress=_steps, counter="steps", vjp=True),
    Method("tds", tds, "TDS", "Wu et al., NeurIPS 2023 (twisting: Pi-GDM's Gaussian likelihood)", TDSSettings,
           "DDIM eta 1, r_t^2 of the prior's variance, a measurement's K samples resampled at ESS < ess_threshold K",
           (LINEAR, GAUSSIAN), progress=lambda s: s.steps - 1, counter="steps", vjp=True, particles=True),
    Method("diffpir", diffpir, "DiffPIR", "Zhu et al., CVPRW 2023", DiffPIRSettings, "", (LINEAR, GAUSSIAN, VP_PRIOR),
           progress=_steps, counter="steps"),
    Method("daps", daps, "DAPS", "Zhang et al., 2024 (arXiv:2407.01521)", DAPSSettings,
           "the paper's DAPS-1K is 200 levels x 5 ODE steps", (GAUSSIAN,), progress=lambda s: s.levels,
           counter="levels", presets={k: {"levels": v[0], "ode_steps": v[1]} for k, v in DAPS_PRESETS.items()}),
    Method("latent_dps", latent_dps, "Latent DPS", "Chung et al., ICLR 2023, on latents (the baseline of Rout et al. "
           "2023)", LatentDPSSettings, "rule paper, zeta' for 1000 steps; tuned on training digits",
           (), step_size=True, progress=_steps, counter="steps", vjp=True, latent=True),
    Method("psld", psld, "PSLD", "Rout et al., NeurIPS 2023", PSLDSettings,
           "DDIM; omega and gamma for 1000 steps, tuned on training digits (the authors' Stable Diffusion weights: "
           "omega 2 here, gamma 0.1)",
           (LINEAR, GAUSSIAN, LATENT_VP, ENCODER), progress=_steps, counter="steps", vjp=True, latent=True),
    Method("resample", resample, "ReSample", "Song et al., ICLR 2024", ReSampleSettings,
           "the authors' code's settings; AdamW data consistency stops at sigma_y^2; --nfe counts its extra ODE steps",
           (GAUSSIAN, LATENT_VP, ENCODER), progress=_steps, counter="steps", vjp=True, latent=True),
    Method("latent_daps", latent_daps, "Latent DAPS", "Zhang et al., 2024 (arXiv:2407.01521), latent variant",
           LatentDAPSSettings, "the authors' latent grid (50 levels x 2 ODE steps, sigma 10 to 0.1)", (GAUSSIAN,),
           progress=lambda s: s.levels, counter="levels", latent=True),
    Method("pnp_admm", pnp_admm, "PnP-ADMM", "Chan et al., 2016 (denoiser: the prior's Tweedie denoiser)",
           PnPADMMSettings, "", (LINEAR,), sampler=False, counter="iters"),
    Method("admm_tv", admm_tv, "ADMM-TV", "anisotropic TV, ADMM", ADMMTVSettings, "", (LINEAR, IMAGES),
           sampler=False),
    Method("hio", hio, "HIO", "Fienup, 1982", HIOSettings, "HIO then final_er ER steps; the best restart by residual",
           (FOURIER,), sampler=False),
    Method("er", er, "ER", "Fienup, 1982", ERSettings, "the best restart by residual", (FOURIER,), sampler=False),
    Method("oss", oss, "OSS", "Rodriguez et al., 2013", HIOSettings,
           "smoothed HIO, then final_er ER steps; the best restart by residual", (FOURIER,), sampler=False),
)}


def settings_line(settings) -> str:
    """A settings dataclass as ``name value, ...`` (messages)."""
    return ", ".join(f"{f.name} {getattr(settings, f.name)}" for f in fields(settings))


def methods_markdown() -> str:
    """The method table as Markdown (``dps methods``; the documentation's table is this text, checked by a
    test)."""
    rows = ["| name | method | source | settings | applies to | samples | progress |",
            "|---|---|---|---|---|---|---|"]
    for m in METHODS.values():
        needs = ", ".join(["latent model"] * m.latent + [r.name for r in m.requires]) or "any operator and noise"
        kind = ("posterior samples (the K of a measurement interact)" if m.particles else "posterior samples") \
            if m.sampler else "point estimate"
        presets = "; presets: " + ", ".join(f"`{k}` ({', '.join(f'{n} {v}' for n, v in p.items())})"
                                            for k, p in m.presets.items()) if m.presets else ""
        steps = "every step" if m.progress is not None else "none"
        rows.append(f"| `{m.name}` | {m.title} | {m.source} | {m.settings_text()}{presets} | {needs} | {kind} | "
                    f"{steps} |")
    return "\n".join(rows) + "\n"


def get_method(name: str) -> Method:
    """The method called ``name``, or a DPSError listing the names."""
    if name not in METHODS:
        raise DPSError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


@dataclass
class Reconstruction:
    """What every method returns through :func:`reconstruct`.

    :param x: (B, K, *event_shape) samples in data space.
    :param residual: (B, K) ||y - A(x)||_2 of each returned sample, in data units (one norm for all methods).
    :param extras: per-method values; ``nfe``: network evaluations per sample, counted.
    """

    x: torch.Tensor
    residual: torch.Tensor
    extras: dict = field(default_factory=dict)


def reconstruct(method: str | Method, prior, op, y: torch.Tensor, noise, settings=None,
                generators: Sequence[torch.Generator] | torch.Generator | None = None, num_samples: int = 1,
                callback: Optional[Callable[[dict], None]] = None, execution=None) -> Reconstruction:
    """K = ``num_samples`` reconstructions of each of the B measurements y with ``method``.

    :param settings: an instance of the method's settings dataclass (None: its defaults).
    :param generators: B * K generators; sample k of measurement b draws from generators[b * K + k], so
        no sample depends on the rest of its batch (for a ``particles`` method such as TDS: on the other
        samples of its measurement only). One generator is accepted too (one stream for the whole batch, as
        the GMM benchmark uses; then samples depend on the batch).
    :param callback: called after every step (methods with :attr:`Method.progress`; the others refuse one).
    :param execution: an :class:`~dps.execution.Execution` whose precision, checkpointing and compile the
        network runs with (its device is where y, op and prior must already be).
    """
    m = method if isinstance(method, Method) else get_method(method)
    m.check(op, noise, prior)
    settings = m.settings() if settings is None else m.check_settings(settings)
    if callback is not None and m.progress is None:
        raise DPSError(f"method {m.name} reports no progress (it is not a stepwise sampler); record progress "
                       "with one that does (`dps methods`)")
    check_int(num_samples, "num_samples", 1)
    check_measurement(y, op)
    if prior is not None:
        check_prior_operator(prior, op)
        y = in_prior_dtype(prior, y)
    B, K = y.shape[0], num_samples
    if generators is not None and not isinstance(generators, torch.Generator):
        generators = list(generators)
        if len(generators) != B * K:
            raise ValueError(f"expected {B * K} generators (B * K), got {len(generators)}")
    y_rep = y.repeat_interleave(K, dim=0)
    running = execution.running(prior) if execution is not None and prior is not None else nullcontext()
    extra = {**({"callback": callback} if m.progress is not None else {}),
             **({"num_samples": K} if m.particles else {})}
    with count_evaluations(prior) as rows, running:
        x = m.fn(prior, op, y_rep, noise, generators, settings, **extra)
    with torch.no_grad():
        residual = (y_rep - op(x)).flatten(1).norm(dim=1).reshape(B, K)
    check_residual(residual, y, noise, m.advice(settings))
    return Reconstruction(x=x.reshape(B, K, *x.shape[1:]), residual=residual,
                          extras={"nfe": rows[0] / (B * K)})


@contextmanager
def count_evaluations(prior) -> Iterator[list]:
    """Count the rows that pass through ``prior``'s forward (a forward hook; no cost): yields a one-element
    list whose value, divided by the batch, is the number of network evaluations per sample."""
    rows = [0]

    def hook(module, args, output):
        rows[0] += int(args[0].shape[0])

    handle = prior.register_forward_hook(hook) if prior is not None else None
    try:
        yield rows
    finally:
        if handle is not None:
            handle.remove()
