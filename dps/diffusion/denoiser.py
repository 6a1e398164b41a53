"""The one denoiser contract that every prior (network or analytic) follows.

Samplers see a prior through one function of the noise level sigma (Karras et al. 2022, "EDM"):

    D(x; sigma) = E[x_0 | x],    x = x_0 + sigma n,  n ~ N(0, I),  in the model's space,

:meth:`Prior.denoise`, which returns a :class:`DenoiserOutput` (x0_hat, the noise eps_hat = (x - x0_hat) / sigma
it implies and, for guided-diffusion models with learned variance, the variance values v). Adapters give it
for each kind of model (``Prior.form``):

- ``"vp"`` (this module): a network of the variance-preserving process conditioned on the integer timestep
  t of its T-step training schedule, ``forward(x_t, t)``. D(x; sigma) evaluates it at x_t = x / sqrt(1 + sigma^2)
  and at the timestep whose sigma_t = sqrt((1 - abar_t) / abar_t) is nearest to sigma in log sigma (the rule for
  a sigma between two timesteps; a sigma on the training grid is its own timestep), and returns
  x0_hat = x - sigma eps_hat (k-diffusion's discrete-epsilon denoiser with quantised timesteps);
- ``"ve"`` and ``"edm"`` (:mod:`dps.diffusion.forms`): networks conditioned on sigma itself.

The VP networks' own contract, ``forward(x_t, t)`` with Tweedie's formula below, stays available to the
samplers derived for it (DDRM, MCG, ...), which require a VP prior.

Tweedie (DPS Algorithm 1, line 4), with s_theta = -eps_hat / sqrt(1 - abar_t):
    x0_hat = (x_t + (1 - abar_t) s_theta) / sqrt(abar_t) = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from ..errors import DPSError
from .schedule import Schedule

__all__ = ["DenoiserOutput", "Prior", "NetworkPrior", "tweedie_x0", "eps_from_x0", "bcast", "PRECISIONS"]

#: ``--precision`` / ``DPSConfig.precision`` -> the autocast dtype of the network's forward and of its VJP
#: (None: float32, no autocast). Everything outside the network (schedule, Tweedie, data fit, step size,
#: iterate) stays in the iterate's dtype.
PRECISIONS: dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DenoiserOutput:
    """What a prior returns for x_t of shape (B, *event_shape).

    :param eps: predicted noise eps_hat, same shape as x_t.
    :param x0: Tweedie estimate x0_hat = E[x_0 | x_t], same shape as x_t, in the model's space.
    :param var_values: guided-diffusion's learned-range output v in [-1, 1] (same shape), or None.
    """

    eps: torch.Tensor
    x0: torch.Tensor
    var_values: Optional[torch.Tensor] = None


def bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample (B,) tensor to (B, 1, ..., 1) in ``like``'s dtype and device."""
    return values.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def tweedie_x0(x: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t); ``abar`` is per sample, shape (B,)."""
    a = bcast(abar, x)
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t): the noise that x0 implies."""
    a = bcast(abar, x)
    return (x - a.sqrt() * x0) / (1 - a).sqrt()


class Prior(nn.Module):
    """Base class of every prior: ``forward(x_t, t) -> DenoiserOutput``.

    The contract every solver reads (and nothing else about a prior):

    - ``schedule``: the T-step training schedule that defines abar_t for the integer timesteps t;
    - ``event_shape``: the shape of one sample, e.g. (3, 256, 256) or (d,);
    - the affine map between the model's space and the data space in which measurements are taken,
      data = ``data_scale`` * x + ``data_offset`` (:meth:`to_data`, :meth:`from_data`; images in
      [-1, 1] have scale 1/2 and offset 1/2);
    - ``data_bounds``: the range of valid data values ((0, 1) for images), or None when unbounded;
      :meth:`clip_data` and :meth:`clip_x0` clamp to it;
    - ``data_variance``: the mean per-coordinate variance of x_0 in model space, s^2, for the samplers that
      approximate the prior by a Gaussian of that variance (TDS's twisting, :meth:`x0_variance`); 1.0 unless
      the prior knows better (the analytic priors compute theirs; a network prior takes 1, the unit-variance
      assumption of Pi-GDM);
    - ``form``: ``"vp"``, ``"ve"`` or ``"edm"``, the process the network was trained on; :meth:`denoise`, the
      sigma contract (module docstring), and :meth:`sigma_range`, the noise levels it knows.

    VP subclasses set ``schedule`` and ``event_shape`` and implement :meth:`forward`; the other forms
    (:class:`~dps.diffusion.forms.SigmaPrior`) have no ``schedule`` and implement the sigma contract directly.
    """

    schedule: Optional[Schedule]
    form: str = "vp"
    event_shape: tuple[int, ...]
    data_scale: float = 1.0
    data_offset: float = 0.0
    data_bounds: Optional[tuple[float, float]] = None
    data_variance: float = 1.0

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """abar_t for integer model timesteps t (B,), float64."""
        return self.schedule.alphas_cumprod.to(t.device)[t]

    def training_sigmas(self) -> torch.Tensor:
        """sigma_t = sqrt((1 - abar_t) / abar_t) of every training timestep of a VP prior, float64 (T,)."""
        abar = self.schedule.alphas_cumprod
        return ((1.0 - abar) / abar).sqrt()

    def sigma_range(self) -> tuple[float, float]:
        """(lowest, highest) noise level the model knows: a VP model's sigma_0 and sigma_{T-1}."""
        sig = self.training_sigmas()
        return float(sig[0]), float(sig[-1])

    def timestep_for(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep (B,) long whose sigma_t is nearest to each sigma (B,) in log sigma."""
        source = self.schedule.alphas_cumprod
        cache = self.__dict__.setdefault("_log_sigma_cache", {})
        hit = cache.get(sigma.device)
        if hit is None or hit[0] is not source:  # one copy per device and schedule, not one per step
            hit = cache[sigma.device] = (source, self.training_sigmas().log().to(sigma.device))
        return (sigma.double().log()[:, None] - hit[1][None, :]).abs().argmin(dim=1)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> DenoiserOutput:
        """D(x; sigma) for x (B, *event_shape) = x_0 + sigma n and sigma (B,) float64 (module docstring): the VP
        network at x / sqrt(1 + sigma^2) and the nearest timestep; x0_hat = x - sigma eps_hat."""
        t = self.timestep_for(sigma)
        out = self(x * bcast((1.0 + sigma.double() ** 2).rsqrt(), x), t)
        x0 = x - bcast(sigma, x) * out.eps
        return DenoiserOutput(eps=out.eps, x0=x0, var_values=out.var_values)

    def x0_variance(self, abar: float) -> float:
        """Var[x_0 | x_t] per coordinate (model space) if x_0 were Gaussian with variance ``data_variance`` s^2:
        s^2 (1 - abar_t) / (abar_t s^2 + 1 - abar_t); 1 - abar_t for s^2 = 1 (Pi-GDM's r_t^2)."""
        s2 = self.data_variance
        return s2 * (1.0 - abar) / (abar * s2 + 1.0 - abar)

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> data space: data_scale * x + data_offset."""
        return x if (self.data_scale, self.data_offset) == (1.0, 0.0) else self.data_offset + self.data_scale * x

    def from_data(self, x: torch.Tensor) -> torch.Tensor:
        """Data space -> model space: (x - data_offset) / data_scale."""
        return x if (self.data_scale, self.data_offset) == (1.0, 0.0) else (x - self.data_offset) / self.data_scale

    def clip_data(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp data-space x to ``data_bounds`` (unchanged when the prior has none)."""
        return x if self.data_bounds is None else x.clamp(*self.data_bounds)

    def clip_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """Clamp a model-space x0_hat to the model-space image of ``data_bounds`` (the authors' clip_denoised)."""
        if self.data_bounds is None:
            return x0
        lo, hi = (float(self.from_data(torch.tensor(b))) for b in self.data_bounds)
        return x0.clamp(min(lo, hi), max(lo, hi))

    def model_radius(self) -> float:
        """An upper bound of the per-element RMS of x_0 in model space (1 for [-1, 1] images): divergence
        checks compare iterates with it. Unbounded priors override it; without bounds or an override it is
        infinite (then only non-finite iterates count as divergence)."""
        if self.data_bounds is None:
            return math.inf
        return max(abs(float(self.from_data(torch.tensor(b)))) for b in self.data_bounds)

    @contextmanager
    def running(self, precision: str = "fp32", checkpointing: bool = False, compile: bool = False) -> Iterator[None]:
        """How the network runs inside the block (see :class:`NetworkPrior`). A prior without a network
        computes exactly: it accepts the defaults only."""
        if (precision, bool(checkpointing), bool(compile)) != ("fp32", False, False):
            raise DPSError(f"{type(self).__name__} has no network: precision, checkpointing and compile apply to "
                           "network priors only; leave them at fp32 / off")
        yield

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> DenoiserOutput:  # pragma: no cover - abstract
        raise NotImplementedError


class NetworkPrior(Prior):
    """Adapter from a noise-prediction network ``network(x, t)`` to the denoiser contract.

    :param network: module whose ``forward(x, timesteps)`` returns (B, C, ...) or, with
        ``learn_sigma``, (B, 2C, ...) whose second half is guided-diffusion's variance values v.
    :param schedule: the T-step training schedule of the network.
    :param prediction: ``"epsilon"`` (the network predicts eps), ``"x0"`` (it predicts x_0) or ``"v"``
        (v = sqrt(abar) eps - sqrt(1 - abar) x_0).
    :param learn_sigma: whether the output carries the extra variance channels.
    :param data_range: the range of the model's images; ``to_data`` maps it affinely to [0, 1], and
        samples are clipped to [0, 1]. ``None`` means the model works directly in data space.
    :param event_shape: the shape of one sample, e.g. (3, 256, 256).
    """

    def __init__(
        self,
        network: nn.Module,
        schedule: Optional[Schedule],
        prediction: str = "epsilon",
        learn_sigma: bool = False,
        data_range: Optional[tuple[float, float]] = (-1.0, 1.0),
        event_shape: Optional[tuple[int, ...]] = None,
    ) -> None:
        super().__init__()
        if prediction not in ("epsilon", "x0", "v"):
            raise ValueError(f"prediction must be 'epsilon', 'x0' or 'v', got {prediction!r}")
        self.network = network
        self.schedule = schedule
        self.prediction = prediction
        self.learn_sigma = learn_sigma
        self.data_range = data_range
        if data_range is not None:
            lo, hi = data_range
            self.data_scale, self.data_offset = 1.0 / (hi - lo), -lo / (hi - lo)
            self.data_bounds = (0.0, 1.0)
        self.event_shape = event_shape
        self.precision = "fp32"
        self.compile = False
        self._compiled: list[nn.Module] = []  # torch.compile(network), made once; a list keeps it out of state_dict
        self._abar_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """abar_t (B,) float64, from a copy of the table kept on t's device (no host transfer per step)."""
        source = self.schedule.alphas_cumprod
        cached = self._abar_cache.get(t.device)
        if cached is None or cached[0] is not source:  # a new schedule replaces the copy
            cached = self._abar_cache[t.device] = (source, source.to(t.device))
        return cached[1][t]

    @contextmanager
    def running(self, precision: str = "fp32", checkpointing: bool = False, compile: bool = False) -> Iterator[None]:
        """Run the network, inside the block, with

        :param precision: a :data:`PRECISIONS` name: the network's forward (and so its VJP, which autograd
            runs in the dtypes of the forward) under ``torch.autocast`` in that dtype; its output is cast
            back to the input's dtype, so Tweedie, the data fit and the update stay in float32 (float64).
        :param checkpointing: recompute the network's blocks in the backward pass instead of keeping their
            activations (less memory for the VJP, one more forward's time); the network must have a
            settable ``use_checkpoint`` (our UNet and diffusers UNets do).
        :param compile: run ``torch.compile(network)`` (compiled on first use, kept for later blocks), with
            our UNet's lean VJP off: the compiler's own partition of forward and backward keeps only what the
            input's gradient needs, and traces plain layers.
        """
        if precision not in PRECISIONS:
            raise DPSError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if checkpointing and not hasattr(self.network, "use_checkpoint"):
            raise DPSError(f"{type(self.network).__name__} cannot checkpoint its blocks (no use_checkpoint); "
                           "run without checkpointing")
        saved = (self.precision, self.compile, getattr(self.network, "use_checkpoint", False),
                 getattr(self.network, "lean", None))
        self.precision, self.compile = precision, bool(compile)
        if hasattr(self.network, "use_checkpoint"):
            self.network.use_checkpoint = bool(checkpointing)
        if compile and hasattr(self.network, "lean"):
            self.network.lean = False
        try:
            yield
        finally:
            self.precision, self.compile = saved[0], saved[1]
            if hasattr(self.network, "use_checkpoint"):
                self.network.use_checkpoint = saved[2]
            if hasattr(self.network, "lean"):
                self.network.lean = saved[3]

    def _compiled_call(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network through ``torch.compile`` (made once). Compilation happens on the first call of each
        new shape or grad mode; on the CPU it needs a C++ compiler, whose absence is a one-line error."""
        if not self._compiled:
            self._compiled.append(torch.compile(self.network))
        try:
            return self._compiled[0](x, t)
        except RuntimeError as exc:
            if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DPSError(f"torch.compile failed ({first}); on a CPU it needs a working C++ compiler "
                               "(e.g. apt install g++): install one or run without --compile") from None
            raise

    def _net(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """network(x, cond) in the block's precision (and compiled), cast back to x's dtype."""
        dtype = PRECISIONS[self.precision]
        with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = self._compiled_call(x, cond) if self.compile else self.network(x, cond)
        return out.to(x.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> DenoiserOutput:
        out = self._net(x, t)
        var_values = None
        if self.learn_sigma:
            if out.shape[1] != 2 * x.shape[1]:
                raise ValueError(
                    f"learn_sigma=True expects {2 * x.shape[1]} output channels, the network gave {out.shape[1]}"
                )
            out, var_values = out.chunk(2, dim=1)
        abar = self.abar(t)
        if self.prediction == "epsilon":
            eps, x0 = out, tweedie_x0(x, out, abar)
        elif self.prediction == "x0":
            eps, x0 = eps_from_x0(x, out, abar), out
        else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022)
            a = bcast(abar, x)
            x0 = a.sqrt() * x - (1 - a).sqrt() * out
            eps = (1 - a).sqrt() * x + a.sqrt() * out
        return DenoiserOutput(eps=eps, x0=x0, var_values=var_values)
