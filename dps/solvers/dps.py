"""Diffusion Posterior Sampling (Chung et al., ICLR 2023), Algorithm 1 and its Poisson variant, on any grid.

On a noise-level grid (:mod:`dps.diffusion.grid`: x_i = s_i (x_0 + sigma_i n)), for i = N-1, ..., 0 (one network
forward and one vector-Jacobian product per step):
    x0_hat = D(x_i / s_i; sigma_i)                                  # line 3-4 (Tweedie)
    x'_{i-1} = ancestral step from (x_i, x0_hat)                   # line 5-6
    x_{i-1}  = x'_{i-1} - zeta_i grad_{x_i} ||y - A(x0_hat)||^2      # line 7 (Gaussian)
               ||.||^2_Lambda for Poisson noise (Eq. 19)
The default grid is the model's own: for a VP model its respaced training steps, where the iterate is the VP
x_t and this is the paper's Algorithm 1 (a test compares it with stored outputs). On a VE or EDM grid the
iterate is x_0 + sigma n (s = 1), the ancestral step is the VE reverse step (SMLD ancestral sampling, Song et
al. 2021, App. F: the bridge of x between sigma_i and sigma_{i-1}) and the gradient step is the same,
taken with respect to that iterate, with the step size that keeps zeta' meaning the same on every grid.
Rules "paper" and "beta" are steps of the VP iterate: on another grid they are made on the VP-equivalent
iterate u = x / (s sqrt(1 + sigma^2)) (the VP x_t of the same noise-to-signal ratio), which multiplies zeta_i
by s_i sqrt(1 + sigma_i^2) s_{i-1} sqrt(1 + sigma_{i-1}^2) for the step of x (1 on a VP grid). Rule "variance"
is already in the grid's units (its weight is the score's in the step). So a DPS run on any grid with the same
noise levels and the same noise draws is the same run (tested).

Step-size rules (``step_rule``), zeta' = ``zeta``:
- ``"paper"``: zeta_i = zeta' / ||y - A(x0_hat)|| (Appendix C.2). For a linear A applied to [0, 1] images,
  this zeta' equals the ``scale`` of the authors' configs exactly: their update is
  scale * grad ||y - A x0||_2 on [-1, 1] images, which is 2 zeta' grad ||.|| on [0, 1] images.
- ``"beta"``: zeta_i = zeta' beta_i / (beta_max ||y - A(x0_hat)||): the paper's normalised step scaled by
  the grid's (VP-equivalent) beta_i / max beta, so the guidance weakens as the noise level falls, like the
  likelihood term of the reverse SDE (whose drift is beta_t times the score).
- ``"variance"``: zeta_i = zeta' w_i / (2 v_i), w_i = s_{i-1} s_i (sigma_i^2 - sigma_{i-1}^2) the weight of
  the score in the ancestral step's mean (on a VP grid w_i = beta_i / sqrt(alpha_i): the DDPM mean adds
  beta_i / sqrt(alpha_i) times a score), here the score of the Gaussian likelihood N(y; A(x0_hat), v_i), with
      v_i = sigma_y^2 + sigma_i^2 s_i kappa_i   (VP grid: (1 - abar_i) / sqrt(abar_i) kappa_i),
      kappa_i = <g0, J^T g0> / (4 ||r||^2),  g0 = grad_{x0_hat} ||r||^2,  J = d x0_hat / d x_i.
  Because Cov[x0 | x_i] = sigma_i^2 s_i J (Tweedie; VP: (1 - abar_i) / sqrt(abar_i) J), sigma_i^2 s_i kappa_i
  is the posterior variance of A(x0) along the residual r = y - A(x0_hat) (A linearised), so v_i is the
  predictive variance of y along r. g0 and J^T g0 both come out of the one backward pass that DPS makes
  anyway (gradients to x0_hat and to x_i together), so the cost per step is unchanged. sigma_y^2 is the
  noise model's :meth:`variance` (Poisson: mean(y) / peak in the units of its weighted norm); v_i is
  floored at the dtype's eps. zeta' = 1 would be the moment-matched Gaussian; on the GMM benchmark one
  zeta' serves 100 and 1000 steps alike (the step scales with beta_i, so the total guidance does not grow
  with N; ``benchmarks/gmm/``). Ours; not in the paper or the authors' code.

Step count (``reference_steps``): under rules "paper" and "beta" the guidance of every step has the same
size whatever N is, so their total grows with N and a zeta' chosen for R steps over-guides at N > R and
under-guides at N < R. With ``reference_steps`` = R set, zeta' is the step size of an R-step run and N
steps use zeta' * sqrt(R / N) per step (:attr:`DPSConfig.zeta_per_step`): the total guidance grows as
sqrt(N) instead of N. Every step-count override goes through :meth:`DPSConfig.at_steps`
(``dps solve --steps``, ``dps bench images --steps/--nfe``, ``dps demo --steps``, the GMM benchmark), which
takes the task's own step count as R (1000 for the paper's presets, 100 for the demo's zeta'). On training
digits sqrt(R / N) beats both no scaling and the factor R / N (keeping the total guidance), which loses
motion blur and phase retrieval badly and diverges at a handful of steps (``benchmarks/step_scaling/``).
Not in the paper, whose Algorithm 1 applies zeta' per step at N = 1000 (``reference_steps=None``, the
default of a bare DPSConfig, does that). Rule "variance" needs no factor: its zeta_i carries beta_i, which
respacing to N steps already scales by about 1000 / N.

Each sample's step uses its own residual norm, so samples never interact; gradients flow through the
network to x_i only (the network's parameters get none) and the graph is freed every step.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Optional, Union

import torch
from torch import nn

from ..diffusion.denoiser import Prior
from ..diffusion.grid import Grid, GridSpec, denoise_on
from ..diffusion.steps import Generators, ancestral_step, ddim_grid_step, randn
from ..diffusion.schedule import check_spacing
from ..errors import DPSError, check_float, check_int
from ..noise import GaussianNoise, NoiseModel
from .divergence import DivergenceGuard

__all__ = ["DPSConfig", "DPSResult", "dps_sample", "StepRule", "PaperRule", "BetaRule", "VarianceRule", "STEP_RULES",
           "step_size", "guidance", "frozen_parameters", "check_measurement", "check_prior_operator", "in_prior_dtype", "DivergenceGuard",
           "at_steps", "step_factor"]

class StepRule:
    """A step-size rule: zeta_i (B,) that multiplies grad_{x_i} ||y - A(x0_hat)||^2 at step i.

    Subclass it and pass an instance as ``DPSConfig(step_rule=...)`` to try a new rule; the built-in names
    are :data:`STEP_RULES`. ``needs_jacobian = True`` asks the sampler for kappa (B,) and noise_var (B,)
    (see the module docstring), which cost nothing extra: they come from the same backward pass.
    """

    name: str = "custom"
    needs_jacobian: bool = False
    #: True when zeta_i already shrinks as the step count grows (through beta_i); False makes
    #: :class:`DPSConfig` scale zeta' by sqrt(reference_steps / steps).
    scales_with_steps: bool = False
    #: True when zeta_i is a step of the VP iterate (rules "paper", "beta"): on another grid it is applied to the
    #: VP-equivalent iterate (module docstring), so zeta' means the same on every grid. False for a rule whose
    #: zeta_i is already in the grid's own units ("variance").
    vp_iterate: bool = True

    def __call__(self, zeta: float, residual_norm: torch.Tensor, grid: Grid, i: int, *,
                 kappa: Optional[torch.Tensor] = None, noise_var: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


def _safe(norm: torch.Tensor) -> torch.Tensor:
    return norm.clamp_min(torch.finfo(norm.dtype).tiny)


class PaperRule(StepRule):
    """zeta_i = zeta' / ||y - A(x0_hat)|| (Appendix C.2)."""

    name = "paper"

    def __call__(self, zeta, residual_norm, grid, i, **_):
        return zeta / _safe(residual_norm)


class BetaRule(StepRule):
    """zeta_i = zeta' beta_i / (beta_max ||y - A(x0_hat)||)."""

    name = "beta"

    def __call__(self, zeta, residual_norm, grid, i, **_):
        return zeta / _safe(residual_norm) * float(grid.betas[i] / grid.betas.max())


class VarianceRule(StepRule):
    """zeta_i = zeta' w_i / (2 v_i), w_i = s_{i-1} s_i (sigma_i^2 - sigma_{i-1}^2),
    v_i = noise_var + sigma_i^2 s_i kappa_i (module docstring)."""

    name = "variance"
    needs_jacobian = True
    scales_with_steps = True
    vp_iterate = False

    def __call__(self, zeta, residual_norm, grid, i, *, kappa=None, noise_var=None):
        if kappa is None or noise_var is None:
            raise ValueError("step rule 'variance' needs kappa and noise_var")
        sig, sig_p, s, s_p = grid.sigma(i), grid.sigma(i - 1), grid.scale(i), grid.scale(i - 1)
        v = (noise_var + sig ** 2 * s * kappa).clamp_min(torch.finfo(kappa.dtype).eps)
        return zeta * (s_p * s * (sig ** 2 - sig_p ** 2)) / (2.0 * v)


#: the built-in step rules by name (the names the CLI and task files accept).
STEP_RULES: dict[str, StepRule] = {r.name: r for r in (PaperRule(), BetaRule(), VarianceRule())}


@dataclass(frozen=True)
class DPSConfig:
    """Settings of a DPS run.

    :param steps: number N of reverse steps (the grid's length; a VP model's training schedule respaced to N).
    :param zeta: zeta', the step-size constant of ``step_rule`` (for ``reference_steps`` steps when set).
    :param reference_steps: the step count zeta' is given for; rules "paper" and "beta" then use
        zeta' * sqrt(reference_steps / steps) per step (module docstring), "variance" ignores it. None:
        zeta' per step as given.
    :param step_rule: ``"paper"``, ``"beta"`` or ``"variance"`` (see module docstring), or a
        :class:`StepRule` instance.
    :param sampler: ``"ddpm"`` (Algorithm 1) or ``"ddim"`` (with ``eta``).
    :param eta: DDIM's eta (only with ``sampler="ddim"``).
    :param variance: ``"fixed_small"``, ``"fixed_large"`` or ``"learned_range"``; ``None`` picks
        learned_range for priors that output variance values and fixed_small otherwise.
    :param spacing: how a VP grid respaces the training steps: ``"even"`` (guided-diffusion) or ``"ddim"``.
    :param grid: the noise-level grid (:class:`~dps.diffusion.grid.GridSpec`; default: the model's own).
    :param clip_x0: clamp x0_hat to this range (model space) before it is used, as the authors' code does
        with (-1, 1) (clip_denoised); ``None`` (the paper's Algorithm 1) leaves it unclipped.

    How the network runs (precision, checkpointing, compile) is not DPS's setting but the run's
    :class:`~dps.execution.Execution`: wrap the call in ``prior.running(...)`` or pass ``execution=`` to
    :func:`~dps.solvers.methods.reconstruct`.
    """

    steps: int = 1000
    zeta: float = 1.0
    step_rule: Union[str, StepRule] = "paper"
    sampler: str = "ddpm"
    eta: float = 0.0
    variance: Optional[str] = None
    spacing: str = "even"
    clip_x0: Optional[tuple[float, float]] = None
    reference_steps: Optional[int] = None
    grid: GridSpec = GridSpec()

    def __post_init__(self) -> None:
        if not isinstance(self.grid, GridSpec):
            raise DPSError(f"grid must be a GridSpec, got {type(self.grid).__name__}")
        if not isinstance(self.step_rule, StepRule) and self.step_rule not in STEP_RULES:
            raise DPSError(f"unknown step_rule {self.step_rule!r}; choose one of {sorted(STEP_RULES)}")
        if self.sampler not in ("ddpm", "ddim"):
            raise DPSError(f"unknown sampler {self.sampler!r}; use 'ddpm' or 'ddim'")
        check_spacing(self.spacing)
        if self.variance not in (None, "fixed_small", "fixed_large", "learned_range"):
            raise DPSError(f"unknown variance {self.variance!r}; use fixed_small, fixed_large or learned_range")
        object.__setattr__(self, "steps", check_int(self.steps, "steps", 1, 100_000))
        object.__setattr__(self, "zeta", check_float(self.zeta, "zeta (the step size)", 0.0))
        if self.reference_steps is not None:
            object.__setattr__(self, "reference_steps", check_int(self.reference_steps, "reference_steps", 1, 100_000))
        object.__setattr__(self, "eta", check_float(self.eta, "eta", 0.0, 1.0))
        if self.clip_x0 is not None:
            if not isinstance(self.clip_x0, (tuple, list)) or len(self.clip_x0) != 2:
                raise DPSError(f"clip_x0 must be a pair [low, high], got {self.clip_x0!r}")
            lo, hi = (check_float(v, "clip_x0") for v in self.clip_x0)
            if lo >= hi:
                raise DPSError(f"clip_x0 must have low < high, got {self.clip_x0!r}")
            object.__setattr__(self, "clip_x0", (lo, hi))

    @property
    def rule(self) -> StepRule:
        """The step rule as an object."""
        return self.step_rule if isinstance(self.step_rule, StepRule) else STEP_RULES[self.step_rule]

    @property
    def zeta_per_step(self) -> float:
        """The zeta' that the rule applies at each of the ``steps`` steps: zeta' * sqrt(reference_steps / steps)
        for rules whose step does not scale with the step count (module docstring: measured against the
        linear factor; a settings subclass with ``tuned_steps`` caps it there, :func:`step_factor`), zeta'
        otherwise (or without reference_steps)."""
        if self.rule.scales_with_steps:
            return self.zeta
        return self.zeta * step_factor(self.reference_steps, self.steps, getattr(self, "tuned_steps", None))

    def at_steps(self, steps: int) -> "DPSConfig":
        """This config at ``steps`` steps with zeta' keeping its meaning (:func:`at_steps`)."""
        return at_steps(self, steps)

    def to_dict(self) -> dict:
        """Plain values (the rule by name) for run records."""
        return {**self.__dict__, "step_rule": self.rule.name, "grid": dict(self.grid.__dict__),
                "clip_x0": None if self.clip_x0 is None else list(self.clip_x0)}


def step_factor(reference_steps: Optional[int], steps: int, tuned_steps: Optional[int] = None) -> float:
    """The factor of a per-step weight given for R = ``reference_steps`` steps at N = ``steps`` steps:
    sqrt(R / N) (module docstring; 1 without R). With ``tuned_steps`` T (a weight tuned at T steps close to where
    a step diverges, a limit that does not move with N) it is at most the factor at T: sqrt(R / max(N, min(T, R))).
    The one home of the step-count scaling (DPS's zeta', latent DPS's, PSLD's omega and gamma)."""
    if reference_steps is None:
        return 1.0
    floor = steps if tuned_steps is None else max(steps, min(tuned_steps, reference_steps))
    return math.sqrt(reference_steps / floor)


def at_steps(settings, steps: int):
    """``settings`` (any frozen dataclass with ``steps`` and ``reference_steps``: DPS's, MCG's) at ``steps``
    steps with zeta' keeping its meaning: the current step count (or an earlier ``reference_steps``) becomes
    ``reference_steps``. The one rule for overriding a step count."""
    reference = settings.reference_steps or settings.steps
    return replace(settings, steps=steps, reference_steps=None if reference == steps else reference)


@dataclass
class DPSResult:
    """x: (B, K, *event_shape) final x0_hat in data space (clipped to the prior's data bounds);
    residual: (B, K) final ||y - A(x0_hat)|| (the noise model's norm)."""

    x: torch.Tensor
    residual: torch.Tensor
    grid: Grid = field(repr=False)


def step_size(rule: Union[str, StepRule], zeta: float, residual_norm: torch.Tensor, grid: Grid, i: int, *,
              kappa: Optional[torch.Tensor] = None, noise_var: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample zeta_i (B,) of ``rule`` (a name or a :class:`StepRule`) at step i of ``grid``."""
    rule = rule if isinstance(rule, StepRule) else STEP_RULES[rule]
    return rule(zeta, residual_norm, grid, i, kappa=kappa, noise_var=noise_var)


def guidance(config: DPSConfig, sq_norm: torch.Tensor, residual: torch.Tensor, x0: torch.Tensor, x: torch.Tensor,
             grid: Grid, i: int, noise_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """zeta_i grad_{x_i} ||y - A(x0_hat)||^2 (shape of x) and zeta_i (B,), from one backward pass.

    sq_norm (B,) is the data fit of x0 (the x0_hat used in it, model space), which depends on x = x_i;
    residual (B,) is its detached square root. Rule ``"variance"`` takes the gradient to x0_hat too, g0, for
    kappa = <g0, J^T g0> / (4 ||r||^2), and uses noise_var (B,), the noise model's variance.
    """
    rule, zeta = config.rule, config.zeta_per_step
    if rule.vp_iterate and grid.kind != "vp":  # the VP-equivalent iterate's step (module docstring)
        zeta = zeta * grid.level_std(i) * grid.level_std(i - 1)
    if not rule.needs_jacobian:
        zeta_i = rule(zeta, residual, grid, i)
        (grad,) = torch.autograd.grad((zeta_i * sq_norm).sum(), x)
        return grad, zeta_i
    g0, grad = torch.autograd.grad(sq_norm.sum(), [x0, x])  # g0 and J^T g0
    kappa = (g0 * grad).flatten(1).sum(1).clamp_min(0) / (4 * sq_norm.detach().clamp_min(
        torch.finfo(sq_norm.dtype).tiny))
    zeta_i = rule(zeta, residual, grid, i, kappa=kappa, noise_var=noise_var)
    return zeta_i.view(-1, *([1] * (grad.ndim - 1))) * grad, zeta_i


@contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients to a module's parameters (DPS needs gradients to x_i only)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def check_measurement(y: torch.Tensor, op=None, what: str = "measurement") -> None:
    """The one check of a batch of measurements y (B, *out_shape), for the Python API and the command line: a
    DPSError unless y is a floating-point tensor with a batch dimension, of the shape ``op.out_shape`` (when
    the operator declares one), and every value is finite (a NaN measurement is a bad input, not a step-size
    problem)."""
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise DPSError(f"the {what} must be a floating-point tensor, got "
                       f"{y.dtype if isinstance(y, torch.Tensor) else type(y).__name__}")
    shape = getattr(op, "out_shape", None)
    if shape is not None and tuple(y.shape[1:]) != tuple(shape):
        hint = " (add the batch dimension: y[None])" if tuple(y.shape) == tuple(shape) else ""
        raise DPSError(f"the {what} has shape {tuple(y.shape)}, but {getattr(op, 'name', 'the operator')} produces "
                       f"(B, {', '.join(map(str, shape))}){hint}; use the operator that made it")
    bad = ~torch.isfinite(y)
    if bool(bad.any()):
        raise DPSError(f"the {what} holds {int(bad.sum())} NaN or infinite value(s) out of {y.numel()}; "
                       "check the file or the operator that produced it")


def in_prior_dtype(prior, y: torch.Tensor) -> torch.Tensor:
    """y in the dtype of the prior's network (a float64 measurement for a float32 network, say); a prior
    without parameters (analytic) keeps y as it is."""
    params = prior.parameters() if isinstance(prior, nn.Module) else iter(())
    p = next(params, None)
    return y.to(p.dtype) if p is not None and p.is_floating_point() and y.dtype != p.dtype else y


def check_prior_operator(prior: Prior, op) -> None:
    """A DPSError unless the operator takes the prior's images (when it declares its input shape)."""
    shape = getattr(op, "in_shape", None)
    if shape is not None and tuple(shape) != tuple(prior.event_shape):
        raise DPSError(f"the operator takes inputs of shape {tuple(shape)}, the prior makes {tuple(prior.event_shape)}; "
                       "build the operator for the prior's image shape")


def dps_sample(
    prior: Prior,
    operator: Callable[[torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    noise: NoiseModel = GaussianNoise(0.05),
    config: DPSConfig = DPSConfig(),
    *,
    num_samples: int = 1,
    generator: Generators = None,
    x_T: Optional[torch.Tensor] = None,
    callback: Optional[Callable[[dict], None]] = None,
    post_step: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None,
    advice: Optional[str] = None,
    grid: Optional[Grid] = None,
) -> DPSResult:
    """Draw ``num_samples`` = K posterior samples for each of the B measurements ``y``.

    :param prior: any :class:`~dps.diffusion.denoiser.Prior` (network adapter or analytic).
    :param operator: differentiable forward model A on data-space tensors (B, *event_shape).
    :param y: measurements, (B, *measurement_shape).
    :param noise: the noise model that made y; it chooses the data-fit norm (Gaussian or Poisson).
    :param config: a :class:`DPSConfig`.
    :param generator: one generator, or B*K generators (sample b*K + k draws from the (b*K + k)-th), which
        makes every sample independent of the rest of its batch.
    :param x_T: optional start noise (B*K, *event_shape); drawn from ``generator`` otherwise.
    :param callback: called after every step with a dict: i, t, x (x_{i-1}), x0 (x0_hat of step i, model
        space), residual (B*K,), zeta (B*K,). Read-only: it gets copies, so it cannot change the run.
    :param post_step: ``post_step(x_prev, i) -> x_prev``, applied to x_{i-1} after the DPS update; the
        one way for a method built on DPS (MCG's projection) to modify the iterate.
    :param advice: what the divergence guard tells the user to change (default: DPS's zeta'); a method built
        on DPS names its own setting.
    :param grid: a :class:`~dps.diffusion.grid.Grid` to run on instead of the one ``config.grid`` builds (its
        length then sets the number of steps).
    :returns: :class:`DPSResult` with x of shape (B, K, *event_shape).
    """
    check_int(num_samples, "num_samples", 1)
    check_measurement(y, operator)
    check_prior_operator(prior, operator)
    y = in_prior_dtype(prior, y)
    grid = grid if grid is not None else config.grid.build(prior, config.steps, config.spacing)
    B, K = y.shape[0], num_samples
    y_rep = y.repeat_interleave(K, dim=0)
    event_shape = tuple(prior.event_shape)
    dtype = y.dtype if y.is_floating_point() else torch.get_default_dtype()
    x = x_T if x_T is not None else randn((B * K, *event_shape), generator, y.device, dtype) * grid.start_std()
    if x.shape != (B * K, *event_shape):
        raise ValueError(f"x_T must have shape {(B * K, *event_shape)}, got {tuple(x.shape)}")
    variance = config.variance
    residual = torch.full((B * K,), float("nan"), dtype=dtype, device=y.device)
    noise_var = noise.variance(y_rep).to(dtype)  # fixed for the run; used by rule "variance"
    guard = DivergenceGuard(prior)
    advice = advice or (f"DPS's step size zeta'={config.zeta} (rule {config.rule.name!r}) is too large for this problem: "
              "lower it (dps solve --step-size, or zeta in the dps block of a task file)")

    with frozen_parameters(prior), torch.enable_grad():
        for i in reversed(range(len(grid))):
            x = x.detach().requires_grad_(True)
            out = denoise_on(prior, x, grid, i)  # line 3-4: one network forward, with graph to x_i
            x0 = out.x0 if config.clip_x0 is None else out.x0.clamp(*config.clip_x0)
            # Data fit ||y - A(x0_hat)||^2 per sample and its gradient w.r.t. x_i (one VJP, line 7).
            sq_norm = noise.sq_norm(y_rep, operator(prior.to_data(x0)))
            residual = sq_norm.detach().sqrt()
            grad, zeta_i = guidance(config, sq_norm, residual, x0, x, grid, i, noise_var)
            with torch.no_grad():
                z = randn(x.shape, generator, x.device, x.dtype) if i > 0 else torch.zeros_like(x)
                x0d = x0.detach()
                if config.sampler == "ddpm":
                    var = variance or ("learned_range" if out.var_values is not None else "fixed_small")
                    vv = None if out.var_values is None else out.var_values.detach()
                    x_prev = ancestral_step(x.detach(), x0d, grid, i, z, var, vv)  # line 5-6
                else:
                    x_prev = ddim_grid_step(x.detach(), x0d, grid, i, z, config.eta)
                x_prev = x_prev - grad  # line 7: zeta_i already inside the gradient
                if post_step is not None:
                    x_prev = post_step(x_prev, i)
            guard.check(x_prev, i, grid.where(i), advice, grid.level_std(i - 1))
            if callback is not None:
                callback({"i": i, "t": grid.timestep(i), "sigma": grid.sigma(i), "x": x_prev.clone(),
                          "x0": x0d.clone(), "residual": residual.clone(), "zeta": zeta_i.detach().clone()})
            x = x_prev
    x_data = prior.clip_data(prior.to_data(x.detach()))
    return DPSResult(x=x_data.reshape(B, K, *event_shape), residual=residual.reshape(B, K), grid=grid)

