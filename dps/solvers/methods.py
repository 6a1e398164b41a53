"""The one method table: every reconstruction method, DPS included, as one :class:`Method` entry.

A method's function has one signature,

    fn(prior, op, y, noise, generators, config, callback=None, **settings) -> x (B, *event_shape)

with y (B, *measurement_shape) in data space, one generator per row of y, ``config`` the task's
:class:`~dps.solvers.dps.DPSConfig` (methods that follow the task's steps and step size read it) and x in
data space, clipped to the prior's data bounds. :func:`reconstruct` draws K samples per measurement and
returns a :class:`Reconstruction` whose ``residual`` is in one stated norm for every method:
||y - A(x)||_2 of the returned x, in data units.

Each entry declares when it applies to an (operator, noise) pair through :class:`Requirement` objects
that read the operators' and noise models' declared capabilities; :meth:`Method.why_not` says why not.
``dps solve --method``, ``dps bench images --methods``, ``dps bench gmm --methods``, ``dps demo``, the
CLI's choices and the README's method table read :data:`METHODS`; adding a method is one module and one
entry here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Optional, Sequence

import torch

from ..errors import CapabilityMissing, DPSError, NotApplicable
from .admm import admm_tv, pnp_admm
from .daps import DAPS_PRESETS, daps, daps_budget
from .ddrm import ddrm
from .diffpir import diffpir
from .dps import DPSConfig, check_measurement, dps_sample
from .phase import er, hio, oss
from .pigdm import pigdm
from .projection import mcg, score_sde
from .tds import tds

__all__ = ["Method", "METHODS", "Reconstruction", "Requirement", "reconstruct", "get_method", "methods_markdown",
           "count_evaluations"]


@dataclass(frozen=True)
class Requirement:
    """A condition on (operator, noise): ``check(op, noise)`` returns None when met, else the reason."""

    name: str
    check: Callable[[object, object], Optional[str]]


def _linear(op, noise) -> Optional[str]:
    return None if op.linear else f"it needs a linear operator; {op.name} is nonlinear"


def _spectral(op, noise) -> Optional[str]:
    if not op.linear:
        return f"it needs an SVD of the operator; {op.name} is nonlinear"
    try:
        op.spectral()
    except CapabilityMissing as exc:
        return str(exc)
    return None


def _gaussian(op, noise) -> Optional[str]:
    return None if noise.kind == "gaussian" else f"it is derived for Gaussian noise, not {noise.kind} noise"


def _fourier(op, noise) -> Optional[str]:
    return None if op.fourier_support is not None else \
        f"it needs y = |F pad(x)| of a zero-padded, non-negative object; {op.name} {op.config} is not of that form"


def _images(op, noise) -> Optional[str]:
    return None if len(op.in_shape) == 3 else "it works on images (C, H, W), not vectors"


LINEAR = Requirement("linear operator", _linear)
SPECTRAL = Requirement("SVD form", _spectral)
GAUSSIAN = Requirement("Gaussian noise", _gaussian)
FOURIER = Requirement("Fourier magnitude", _fourier)
IMAGES = Requirement("image operator", _images)


def _dps(prior, op, y, noise, generators, config: DPSConfig, callback=None) -> torch.Tensor:
    return dps_sample(prior, op, y, noise, config, generator=generators, callback=callback).x[:, 0]


# Budgets: how a method spends N network evaluations per sample -> (config, settings). ``dps bench images
# --nfe N`` and the quality-per-compute benchmark use them; the NFE column is counted, not computed.
Budget = Callable[[int, DPSConfig], tuple[DPSConfig, dict]]


def _task_steps(nfe: int, config: DPSConfig) -> tuple[DPSConfig, dict]:
    """Methods that follow the task's step count: N steps of one evaluation each. The task's zeta' keeps its
    meaning (its total guidance) at the new step count: it is taken as given for the task's own steps unless
    the config names another ``reference_steps``."""
    return config.at_steps(nfe), {}


def _own_steps(nfe: int, config: DPSConfig) -> tuple[DPSConfig, dict]:
    """Methods with their own ``steps`` setting (one evaluation per step)."""
    return config, {"steps": nfe}


def _daps(nfe: int, config: DPSConfig) -> tuple[DPSConfig, dict]:
    return config, daps_budget(nfe)


def _iterations(nfe: int, config: DPSConfig) -> tuple[DPSConfig, dict]:
    return config, {"iters": nfe}


@dataclass(frozen=True)
class Method:
    """One reconstruction method: its function, where it comes from, what it needs and its settings.

    :param sampler: True when it draws posterior samples, False for point estimates (K > 1 then repeats the
        estimate, or for the phase-retrieval algorithms its random restarts).
    :param budget: how it spends a given number of network evaluations (``at_budget``); None for methods
        without a network or without such a knob.
    :param vjp: True when each evaluation also backpropagates through the network (about twice the cost).
    :param step_size: True when the method uses the task's DPS step size zeta' (a task without one is then an
        error; the other methods run without it).
    :param presets: named settings from the method's paper (``dps solve --method-preset NAME``), e.g. DAPS-1K.
    :param particles: True when the K samples of one measurement are one interacting particle system
        (sequential Monte Carlo): :func:`reconstruct` then passes ``num_samples`` = K to the function, and a
        sample depends on the other samples of its measurement (never on other measurements).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    title: str
    source: str
    settings: str
    requires: tuple[Requirement, ...] = ()
    sampler: bool = True
    budget: Optional["Budget"] = None
    vjp: bool = False
    step_size: bool = False
    presets: dict = field(default_factory=dict, hash=False)
    particles: bool = False

    def at_budget(self, nfe: int, config: DPSConfig) -> tuple[DPSConfig, dict]:
        """(config, settings) that spend about ``nfe`` network evaluations per sample, or a DPSError for
        methods that use no network or have no budget knob."""
        if self.budget is None:
            raise DPSError(f"{self.name} has no network-evaluation budget to set")
        return self.budget(nfe, config)

    def run_settings(self, config: DPSConfig, nfe: Optional[int] = None, preset: Optional[str] = None
                     ) -> tuple[DPSConfig, dict]:
        """(config, settings) of a run at a budget of ``nfe`` evaluations or with the named ``preset`` (not both;
        neither: the config as given and the method's defaults)."""
        if preset is not None:
            if nfe is not None:
                raise DPSError("a method preset sets the method's budget; leave out --nfe")
            return config, self.preset(preset)
        return (config, {}) if nfe is None else self.at_budget(nfe, config)

    def preset(self, name: str) -> dict:
        """The settings of the preset called ``name``, or a DPSError naming the method's presets."""
        if name not in self.presets:
            known = f"its presets: {', '.join(self.presets)}" if self.presets else "it has none"
            raise DPSError(f"method {self.name} has no preset {name!r}; {known}")
        return dict(self.presets[name])

    def why_not(self, op, noise) -> Optional[str]:
        """None when the method applies to (op, noise), else the reason (one sentence)."""
        for req in self.requires:
            reason = req.check(op, noise)
            if reason is not None:
                return f"{self.name} does not apply: {reason}"
        return None

    def check(self, op, noise) -> None:
        """Raise :class:`~dps.errors.NotApplicable` with the reason when the method does not apply."""
        reason = self.why_not(op, noise)
        if reason is not None:
            raise NotApplicable(reason)


#: name -> method; the one table (order = the order of the paper's tables).
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dps", _dps, "DPS", "Chung et al., ICLR 2023 (Algorithm 1; Poisson: Eq. 19)",
           "the task's steps, zeta' and step rule", (), budget=_task_steps, vjp=True, step_size=True),
    Method("ddrm", ddrm, "DDRM", "Kawar et al., NeurIPS 2022",
           "20 steps, eta 0.85, eta_b 1", (LINEAR, SPECTRAL, GAUSSIAN), budget=_own_steps),
    Method("mcg", mcg, "MCG", "Chung et al., NeurIPS 2022",
           "the task's steps and zeta' (rule 'paper'), then the noised-measurement projection", (LINEAR,),
           budget=_task_steps, vjp=True, step_size=True),
    Method("score_sde", score_sde, "Score-SDE / ILVR", "Song et al., ICLR 2021; Choi et al., ICCV 2021",
           "the task's steps, projection after each unconditional DDPM step", (LINEAR,), budget=_task_steps),
    Method("pigdm", pigdm, "Pi-GDM", "Song et al., ICLR 2023",
           "100 DDIM steps, eta 1, r_t^2 = 1 - abar_t", (LINEAR, GAUSSIAN), budget=_own_steps, vjp=True),
    Method("tds", tds, "TDS", "Wu et al., NeurIPS 2023 (twisting: Pi-GDM's Gaussian likelihood)",
           "100 DDIM steps, eta 1, r_t^2 of the prior's variance, the K samples resampled at ESS < K / 2",
           (LINEAR, GAUSSIAN), budget=_own_steps, vjp=True, particles=True),
    Method("diffpir", diffpir, "DiffPIR", "Zhu et al., CVPRW 2023",
           "100 steps, lambda 1, zeta 1", (LINEAR, GAUSSIAN), budget=_own_steps),
    Method("daps", daps, "DAPS", "Zhang et al., 2024 (arXiv:2407.01521)",
           "1000 levels x 1 ODE step (the paper's DAPS-1K is 200 x 5), 100 Langevin steps, lr 0.5, tau 0.01", (GAUSSIAN,),
           budget=_daps, presets={k: {"levels": v[0], "ode_steps": v[1]} for k, v in DAPS_PRESETS.items()}),
    Method("pnp_admm", pnp_admm, "PnP-ADMM", "Chan et al., 2016 (denoiser: the prior's Tweedie denoiser)",
           "40 iterations, rho 1, denoiser sigma 0.1", (LINEAR,), sampler=False, budget=_iterations),
    Method("admm_tv", admm_tv, "ADMM-TV", "anisotropic TV, ADMM",
           "100 iterations, lambda 0.01, rho 0.1", (LINEAR, IMAGES), sampler=False),
    Method("hio", hio, "HIO", "Fienup, 1982", "beta 0.9, 1000 + 50 ER iterations, best of 4 restarts",
           (FOURIER,), sampler=False),
    Method("er", er, "ER", "Fienup, 1982", "1000 iterations, best of 4 restarts", (FOURIER,),
           sampler=False),
    Method("oss", oss, "OSS", "Rodriguez et al., 2013", "beta 0.9, 1000 + 50 ER iterations, best of 4 restarts",
           (FOURIER,), sampler=False),
)}


def methods_markdown() -> str:
    """The method table as Markdown (``dps methods``; the README's table is this text, checked by a test)."""
    rows = ["| name | method | source | settings | applies to | samples |", "|---|---|---|---|---|---|"]
    for m in METHODS.values():
        needs = ", ".join(r.name for r in m.requires) or "any operator and noise"
        kind = ("posterior samples (the K of a measurement interact)" if m.particles else "posterior samples") \
            if m.sampler else "point estimate"
        presets = "; presets: " + ", ".join(f"`{k}` ({', '.join(f'{n} {v}' for n, v in p.items())})"
                                            for k, p in m.presets.items()) if m.presets else ""
        rows.append(f"| `{m.name}` | {m.title} | {m.source} | {m.settings}{presets} | {needs} | {kind} |")
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


def reconstruct(method: str | Method, prior, op, y: torch.Tensor, noise, config: DPSConfig,
                generators: Sequence[torch.Generator] | torch.Generator, num_samples: int = 1,
                callback: Optional[Callable[[dict], None]] = None, **settings) -> Reconstruction:
    """K = ``num_samples`` reconstructions of each of the B measurements y with ``method``.

    :param generators: B * K generators; sample k of measurement b draws from generators[b * K + k], so
        no sample depends on the rest of its batch (for a ``particles`` method such as TDS: on the other
        samples of its measurement only). One generator is accepted too (one stream for the whole batch, as
        the GMM benchmark uses; then samples depend on the batch).
    """
    m = method if isinstance(method, Method) else get_method(method)
    m.check(op, noise)
    B, K = y.shape[0], num_samples
    if tuple(y.shape[1:]) != tuple(op.out_shape):
        raise DPSError(f"the measurement has shape {tuple(y.shape[1:])}, but {op.name} produces "
                       f"{tuple(op.out_shape)}; use the operator that made it")
    check_measurement(y)
    if not isinstance(generators, torch.Generator):
        generators = list(generators)
        if len(generators) != B * K:
            raise ValueError(f"expected {B * K} generators (B * K), got {len(generators)}")
    y_rep = y.repeat_interleave(K, dim=0)
    with count_evaluations(prior) as rows, (config.running(prior) if prior is not None else nullcontext()):
        x = m.fn(prior, op, y_rep, noise, generators, config, callback,
                 **({"num_samples": K} if m.particles else {}), **settings)
    with torch.no_grad():
        residual = (y_rep - op(x)).flatten(1).norm(dim=1)
    return Reconstruction(x=x.reshape(B, K, *x.shape[1:]), residual=residual.reshape(B, K),
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
