"""``dps bench speed``: what one DPS step costs, against its floor, for a model, size, batch, K and precision.

Per configuration (one row), measured in one process, interleaved (each repeat times every quantity once,
so drifts of the machine hit all of them alike), medians over the repeats after one warm-up:

- ``forward``: one network forward of the B*K samples, no graph (the unconditional sampler's cost);
- ``floor``: forward with a graph to x_t plus one vector-Jacobian product back to x_t: the least a DPS
  step can cost (Algorithm 1, lines 3-4 and the gradient of line 7);
- ``dps_step``: one step of :func:`~dps.solvers.dps.dps_sample` (super-resolution x4, Gaussian noise),
  timed over ``steps`` steps of a whole run and divided by them;
- ``uncond_step``: one step of the unconditional DDPM sampler, the same way;
- peak memory of the floor and of the DPS step above what was in use before: CUDA's allocator statistics
  (``max_memory_allocated``) on a GPU; on the CPU the process's resident set, sampled every millisecond by a
  thread after returning freed memory to the system (``malloc_trim``), so it is a close lower bound.

Ratios: ``dps_step / floor`` (1.0 means no overhead beyond the network), ``dps_mem / floor_mem``, and,
between rows that differ only in K, the time per sample relative to K = 1.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

from ..diffusion.denoiser import NetworkPrior
from ..errors import DPSError
from ..noise import GaussianNoise
from ..solvers.dps import DPSConfig, dps_sample, frozen_parameters
from ..solvers.unconditional import sample_prior
from ..tasks import build_operator

__all__ = ["SpeedSettings", "run_speed", "speed_markdown", "random_prior", "device_name", "QUANTITIES"]


@dataclass
class SpeedSettings:
    """The grid of configurations: every combination of ``samples``, ``precision``, ``checkpointing`` and
    ``compile`` is one row, all at batch ``batch`` (B measurements, B*K samples per network call)."""

    batch: int = 1
    samples: tuple[int, ...] = (1,)
    precision: tuple[str, ...] = ("fp32",)
    checkpointing: tuple[bool, ...] = (False,)
    compile: tuple[bool, ...] = (False,)
    repeats: int = 5
    steps: int = 3
    zeta: float = 1.0
    measure: tuple[str, ...] = ("forward", "floor", "dps_step", "uncond_step")
    extra: dict = field(default_factory=dict)

    def grid(self) -> list[dict]:
        return [{"samples": k, "precision": p, "checkpointing": c, "compile": cc}
                for k, p, c, cc in itertools.product(self.samples, self.precision, self.checkpointing, self.compile)]


def random_prior(preset: str, image_size: Optional[int] = None, seed: int = 0) -> NetworkPrior:
    """A guided-diffusion architecture preset (``ffhq256``, ``imagenet256``) with random weights: the speed
    and memory of the published checkpoints without their files. The zero-initialised output layer gets small
    random weights, so the network's output (and its precision) is not trivially zero."""
    from ..diffusion.schedule import make_schedule
    from ..models.loading import GUIDED_DIFFUSION_PRESETS, _prior_from_unet
    from ..models.unet import UNetConfig, UNetModel

    if preset not in GUIDED_DIFFUSION_PRESETS:
        raise DPSError(f"unknown architecture {preset!r}; choose one of {', '.join(GUIDED_DIFFUSION_PRESETS)}")
    cfg = dict(GUIDED_DIFFUSION_PRESETS[preset])
    if image_size is not None:  # the same network (its 256-px channel multipliers) at another image size
        mults = UNetConfig.from_dict(cfg).mults()
        cfg.update(image_size=image_size, channel_mult=",".join(str(m) for m in mults))
    torch.manual_seed(seed)
    net = UNetModel(cfg)
    with torch.no_grad():
        for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
            if not conv.weight.any():
                conv.weight.normal_(0.0, 1e-3)
    return _prior_from_unet(net, make_schedule("linear", 1000))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    model = platform.processor() or "CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


# ---------------------------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory in use inside the block above what was in use when it began (bytes, ``.peak``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            _trim()
            self._base = self._max = _rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, _rss_bytes()) - self._base


# ---------------------------------------------------------------------------------------------- timing
def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _quantities(prior: NetworkPrior, row: dict, settings: SpeedSettings, device: torch.device) -> dict[str, Callable]:
    """The four timed callables of a row (each returns nothing of interest)."""
    n = settings.batch * row["samples"]
    shape = tuple(prior.event_shape)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((n, *shape), generator=gen, device=device)
    t = torch.full((n,), 500, dtype=torch.long, device=device)
    v = torch.randn_like(x)
    op = build_operator({"name": "super_resolution", "factor": 4}, shape, 0).to(device)
    noise = GaussianNoise(0.025)
    y = noise(op(torch.rand((settings.batch, *shape), generator=gen, device=device)), gen)
    config = DPSConfig(steps=settings.steps, zeta=settings.zeta, clip_x0=(-1.0, 1.0), precision=row["precision"],
                       checkpointing=row["checkpointing"], compile=row["compile"])

    def forward():
        with torch.no_grad(), config.running(prior):
            prior(x, t)

    def floor():
        with frozen_parameters(prior), config.running(prior), torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            torch.autograd.grad(prior(xg, t).x0, xg, v)

    def dps():
        dps_sample(prior, op, y, noise, config, num_samples=row["samples"], generator=gen)

    def uncond():
        with config.running(prior):
            sample_prior(prior, n, steps=settings.steps, generator=gen, device=device)

    return {"forward": forward, "floor": floor, "dps_step": dps, "uncond_step": uncond}


QUANTITIES = ("forward", "floor", "dps_step", "uncond_step")


def measure_row(prior: NetworkPrior, row: dict, settings: SpeedSettings, device: torch.device) -> dict:
    """Times (s, medians) and peak memories (bytes) of one configuration, with its ratios; quantities left
    out of ``settings.measure`` (and the ratios that need them) are None."""
    fns = {k: f for k, f in _quantities(prior, row, settings, device).items() if k in settings.measure}
    per_call = {"forward": 1, "floor": 1, "dps_step": settings.steps, "uncond_step": settings.steps}
    for fn in fns.values():  # warm-up (and compilation)
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(settings.repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn, device) / per_call[name])
    memory: dict[str, Optional[int]] = {"floor": None, "dps_step": None}
    for name in memory:
        if name in fns:
            with PeakMemory(device) as pm:
                fns[name]()
            memory[name] = pm.peak
    out = {**row, "batch": settings.batch,
           **{f"{k}_s": statistics.median(times[k]) if k in times else None for k in QUANTITIES},
           "floor_mem_bytes": memory["floor"], "dps_mem_bytes": memory["dps_step"]}

    def ratio(a, b):
        return None if a is None or b is None or b <= 0 else a / b

    out["dps_over_floor"] = ratio(out["dps_step_s"], out["floor_s"])
    out["uncond_over_forward"] = ratio(out["uncond_step_s"], out["forward_s"])
    out["dps_mem_over_floor"] = ratio(memory["dps_step"], memory["floor"])
    out["dps_step_per_sample_s"] = ratio(out["dps_step_s"], settings.batch * row["samples"])
    return out


def run_speed(prior: NetworkPrior, settings: SpeedSettings, device: torch.device, model_name: str,
              progress: Optional[Callable[[dict], None]] = None) -> dict:
    """Every row of the grid; the report (rows, device, model, threads, torch version) as a dict.
    ``progress(report)`` gets the report of the rows measured so far after every row (so an interrupted
    run can leave what it measured)."""
    if not isinstance(prior, NetworkPrior):
        raise DPSError("dps bench speed measures network priors; this prior has no network")
    prior = prior.to(device).eval()
    rows: list[dict] = []
    for row in settings.grid():
        rows.append(measure_row(prior, row, settings, device))
        if progress is not None:
            progress(_report(prior, settings, device, model_name, rows))
    return _report(prior, settings, device, model_name, rows)


def _report(prior: NetworkPrior, settings: SpeedSettings, device: torch.device, model_name: str,
            rows: list[dict]) -> dict:
    for r in rows:  # time per sample relative to K = 1 in the same configuration
        base = next((b for b in rows if b["samples"] == 1 and all(b[k] == r[k] for k in
                                                                  ("precision", "checkpointing", "compile"))), None)
        r["per_sample_vs_k1"] = None if base is None or r["dps_step_per_sample_s"] is None else \
            r["dps_step_per_sample_s"] / base["dps_step_per_sample_s"]
    params = sum(p.numel() for p in prior.parameters())
    return {"device": device_name(device), "model": model_name, "event_shape": list(prior.event_shape),
            "parameters": params, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "settings": {k: v for k, v in asdict(settings).items() if k != "extra"}, "rows": list(rows)}


def _mib(b: Optional[float]) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def _ms(s: Optional[float]) -> str:
    return "-" if s is None else f"{1e3 * s:.1f}"


def _x(v: Optional[float], digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def speed_markdown(report: dict) -> str:
    """The report as a Markdown table (times in ms per step, memory in MiB)."""
    head = (f"{report['model']} {tuple(report['event_shape'])}, {report['parameters'] / 1e6:.1f}M parameters, "
            f"batch {report['settings']['batch']}, {report['settings']['steps']} DPS steps x "
            f"{report['settings']['repeats']} repeats (medians); {report['device']}; torch {report['torch']}.\n\n")
    cols = ["K", "precision", "ckpt", "compile", "forward ms", "floor ms", "DPS step ms", "uncond step ms",
            "DPS / floor", "floor MiB", "DPS MiB", "DPS mem / floor", "per sample vs K=1"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report["rows"]:
        lines.append("| " + " | ".join([
            str(r["samples"]), r["precision"], "on" if r["checkpointing"] else "off", "on" if r["compile"] else "off",
            _ms(r["forward_s"]), _ms(r["floor_s"]), _ms(r["dps_step_s"]), _ms(r["uncond_step_s"]),
            _x(r["dps_over_floor"], 3), _mib(r["floor_mem_bytes"]), _mib(r["dps_mem_bytes"]),
            _x(r["dps_mem_over_floor"]), _x(r["per_sample_vs_k1"])]) + " |")
    return head + "\n".join(lines) + "\n"
