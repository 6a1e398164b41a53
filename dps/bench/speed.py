"""``dps bench speed``: what one DPS step costs, against its floor, for a model, size, batch, K and precision.

Per configuration (one row), measured in one process, interleaved (each repeat times every quantity once,
so drifts of the machine hit all of them alike), medians over the repeats after one warm-up:

- ``forward``: one network forward of the B*K samples, no graph (the unconditional sampler's cost);
- ``floor``: forward with a graph to x_t plus one vector-Jacobian product back to x_t: the least a DPS
  step can cost (Algorithm 1, lines 3-4 and the gradient of line 7); for a latent model the decoder's forward
  and VJP are part of it (the gradient of a latent method passes through D), and ``dps_step`` is latent DPS's;
- ``dps_step``: one step of :func:`~dps.solvers.dps.dps_sample` (super-resolution x4, Gaussian noise),
  timed over ``steps`` steps of a whole run and divided by them;
- ``uncond_step``: one step of the unconditional DDPM sampler, the same way;
- peak memory of the floor and of the DPS step, in tensors allocated above what was in use before: CUDA's
  allocator statistics (``max_memory_allocated``) on a GPU, the allocation events of ``torch.profiler`` on
  the CPU (measured after all timings, since profiling slows a run).

Ratios: ``dps_step / floor`` (1.0 means no overhead beyond the network), ``dps_mem / floor_mem``, and,
between rows that differ only in K, the time per sample relative to K = 1.
"""
from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from ..diffusion.denoiser import NetworkPrior
from ..errors import DPSError
from ..noise import GaussianNoise
from ..execution import Execution, device_name
from ..solvers.dps import DPSConfig, dps_sample, frozen_parameters
from ..solvers.unconditional import sample_prior
from ..tasks import build_operator

__all__ = ["SpeedSettings", "run_speed", "speed_markdown", "random_prior", "random_latent_prior", "QUANTITIES",
           "run_speed_command", "ARCHS", "LATENT_ARCHS"]


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

    def grid(self) -> list[dict]:
        return [{"samples": k, "precision": p, "checkpointing": c, "compile": cc}
                for k, p, c, cc in itertools.product(self.samples, self.precision, self.checkpointing, self.compile)]


#: latent architectures of ``--arch``: diffusers configs of Stable Diffusion 1.5's UNet and autoencoder (its
#: text encoder is replaced by fixed random text states of its shape, 77 x 768: a prompt's cost is paid once).
LATENT_ARCHS = {"sd15": {
    "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
                 attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4),
    "text_states": (77, 768), "scaling_factor": 0.18215}}
ARCHS = ("ffhq256", "imagenet256", *LATENT_ARCHS)


def random_latent_prior(preset: str, image_size: Optional[int] = None, seed: int = 0, guidance_scale: float = 7.5):
    """A latent architecture (:data:`LATENT_ARCHS`) with random weights at ``image_size`` (default 512; a multiple
    of 64), with classifier-free guidance at ``guidance_scale`` (two UNet rows per evaluation, as a prompted run)."""
    from ..diffusion.latent import GuidedNetwork, LatentPrior
    from ..diffusion.schedule import Schedule
    from ..models.diffusers_adapter import betas_from_scheduler_config
    from ..models.latent_diffusers import _ConditionedUNet, _KLDecode, _KLEncode

    try:
        import diffusers
    except ImportError as exc:
        raise DPSError("--arch sd15 needs diffusers: pip install 'dps[diffusers]'") from exc
    arch = LATENT_ARCHS[preset]
    size = 512 if image_size is None else int(image_size)
    if size % 64 or size < 64:
        raise DPSError(f"--image-size for --arch {preset}: a multiple of 64 (the latents are 1/8 of it, and the UNet "
                       f"halves them three times), got {size}")
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**{**arch["unet"], "sample_size": size // 8}).eval()
    vae = diffusers.AutoencoderKL(**{**arch["vae"], "sample_size": size}).eval()
    states = torch.randn(1, *arch["text_states"])
    betas = betas_from_scheduler_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})
    network = GuidedNetwork(_ConditionedUNet(unet), states, torch.randn(1, *arch["text_states"]), guidance_scale)
    latent = NetworkPrior(network, Schedule(betas=betas, timesteps=torch.arange(len(betas))), data_range=None,
                          event_shape=(4, size // 8, size // 8))
    return LatentPrior(latent, _KLDecode(vae), _KLEncode(vae), (3, size, size), arch["scaling_factor"]).eval()


def random_prior(preset: str, image_size: Optional[int] = None, seed: int = 0) -> NetworkPrior:
    """A guided-diffusion architecture preset (``ffhq256``, ``imagenet256``) with random weights: the speed
    and memory of the published checkpoints without their files. The zero-initialised output layer gets small
    random weights, so the network's output (and its precision) is not trivially zero. A latent architecture
    (``sd15``) is :func:`random_latent_prior`'s."""
    from ..diffusion.schedule import make_schedule
    from ..models.loading import GUIDED_DIFFUSION_PRESETS, _prior_from_unet
    from ..models.unet import UNetConfig, UNetModel

    if preset in LATENT_ARCHS:
        return random_latent_prior(preset, image_size, seed)
    if preset not in GUIDED_DIFFUSION_PRESETS:
        raise DPSError(f"unknown architecture {preset!r}; choose one of {', '.join(ARCHS)}")
    cfg = dict(GUIDED_DIFFUSION_PRESETS[preset])
    if image_size is not None:  # the same network (its 256-px channel multipliers) at another image size
        mults = UNetConfig.from_dict(cfg).mults()
        cfg.update(image_size=image_size, channel_mult=",".join(str(m) for m in mults))
        UNetConfig.from_dict(cfg).check_image_size(image_size, f"--image-size for --arch {preset}:")
    torch.manual_seed(seed)
    net = UNetModel(cfg)
    with torch.no_grad():
        for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
            if not conv.weight.any():
                conv.weight.normal_(0.0, 1e-3)
    return _prior_from_unet(net, make_schedule("linear", 1000))


# ---------------------------------------------------------------------------------------------- memory
@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C-level writes included) inside the block."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class PeakMemory:
    """Peak memory of the tensors allocated inside the block, above what was in use when it began (bytes,
    ``.peak``): CUDA's allocator statistics on a GPU; on the CPU the same quantity from the allocation
    events of ``torch.profiler`` (profile_memory), summed in time order. Both count tensor memory only,
    not the allocator's caching or the process's resident set."""

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
            from torch.profiler import ProfilerActivity, profile

            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            with _quiet_stderr():  # the profiler's C++ side logs its start and stop there
                self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        with _quiet_stderr():
            self._prof.__exit__(*exc)
        events = [e for e in self._prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
        live = peak = 0
        for e in sorted(events, key=lambda e: e.start_ns()):
            live += e.nbytes()
            peak = max(peak, live)
        self.peak = peak


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
    if getattr(prior, "form", None) == "latent":
        return _latent_quantities(prior, row, settings, device)
    n = settings.batch * row["samples"]
    shape = tuple(prior.event_shape)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((n, *shape), generator=gen, device=device)
    t = torch.full((n,), 500, dtype=torch.long, device=device)
    v = torch.randn_like(x)
    op = build_operator({"name": "super_resolution", "factor": 4}, shape, 0).to(device)
    noise = GaussianNoise(0.025)
    y = noise(op(torch.rand((settings.batch, *shape), generator=gen, device=device)), gen)
    config = DPSConfig(steps=settings.steps, zeta=settings.zeta, clip_x0=(-1.0, 1.0))
    execution = Execution(device=str(device), precision=row["precision"], checkpointing=row["checkpointing"],
                          compile=row["compile"])

    def forward():
        with torch.no_grad(), execution.running(prior):
            prior(x, t)

    def floor():
        with frozen_parameters(prior), execution.running(prior), torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            torch.autograd.grad(prior(xg, t).x0, xg, v)

    def dps():
        with execution.running(prior):
            dps_sample(prior, op, y, noise, config, num_samples=row["samples"], generator=gen)

    def uncond():
        with execution.running(prior):
            sample_prior(prior, n, steps=settings.steps, generator=gen, device=device)

    return {"forward": forward, "floor": floor, "dps_step": dps, "uncond_step": uncond}


def _latent_quantities(prior, row: dict, settings: SpeedSettings, device: torch.device) -> dict[str, Callable]:
    """The timed callables of a latent model: the latent denoiser's forward; the floor, its forward with a graph
    plus the VJP of D(z0_hat(z)) back to z (the decoder's forward and VJP included: a latent method's gradient
    passes through it); a latent DPS step; an unconditional latent step (the final decoding spread over the
    steps)."""
    from ..solvers.latent_dps import latent_dps

    n = settings.batch * row["samples"]
    shape, latent = tuple(prior.event_shape), prior.latent
    gen = torch.Generator(device=device).manual_seed(0)
    z = torch.randn((n, *prior.latent_shape), generator=gen, device=device)
    t = torch.full((n,), 500, dtype=torch.long, device=device)
    v = torch.randn((n, *shape), generator=gen, device=device)
    op = build_operator({"name": "super_resolution", "factor": 4}, shape, 0).to(device)
    noise = GaussianNoise(0.025)
    y = noise(op(torch.rand((settings.batch, *shape), generator=gen, device=device)), gen)
    config = DPSConfig(steps=settings.steps, zeta=settings.zeta)
    execution = Execution(device=str(device), precision=row["precision"], checkpointing=row["checkpointing"],
                          compile=row["compile"])

    def forward():
        with torch.no_grad(), execution.running(prior):
            latent(z, t)

    def floor():
        with frozen_parameters(prior), execution.running(prior), torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            torch.autograd.grad(prior.decode(latent(zg, t).x0), zg, v)

    def dps():
        with execution.running(prior):
            latent_dps(prior, op, y.repeat_interleave(row["samples"], dim=0), noise, gen, config)

    def uncond():
        with execution.running(prior):
            sample_prior(prior, n, steps=settings.steps, generator=gen, device=device)

    return {"forward": forward, "floor": floor, "dps_step": dps, "uncond_step": uncond}


QUANTITIES = ("forward", "floor", "dps_step", "uncond_step")


def time_row(fns: dict[str, Callable], row: dict, settings: SpeedSettings, device: torch.device) -> dict:
    """Times (s per step, medians of interleaved repeats after a warm-up) of one configuration; quantities
    left out of ``settings.measure`` (and the ratios that need them) are None."""
    per_call = {"forward": 1, "floor": 1, "dps_step": settings.steps, "uncond_step": settings.steps}
    for fn in fns.values():  # warm-up (and compilation)
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(settings.repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn, device) / per_call[name])
    out = {**row, "batch": settings.batch,
           **{f"{k}_s": statistics.median(times[k]) if k in times else None for k in QUANTITIES},
           "floor_mem_bytes": None, "dps_mem_bytes": None}
    out["dps_over_floor"] = _ratio(out["dps_step_s"], out["floor_s"])
    out["uncond_over_forward"] = _ratio(out["uncond_step_s"], out["forward_s"])
    out["dps_step_per_sample_s"] = _ratio(out["dps_step_s"], settings.batch * row["samples"])
    out["dps_mem_over_floor"] = None
    return out


def memory_row(fns: dict[str, Callable], out: dict, device: torch.device) -> None:
    """Peak memory (bytes) of the floor and the DPS step of a timed row, written into it."""
    for name, key in (("floor", "floor_mem_bytes"), ("dps_step", "dps_mem_bytes")):
        if name in fns:
            with PeakMemory(device) as pm:
                fns[name]()
            out[key] = pm.peak
    out["dps_mem_over_floor"] = _ratio(out["dps_mem_bytes"], out["floor_mem_bytes"])


def _ratio(a, b):
    return None if a is None or b is None or b <= 0 else a / b


def run_speed(prior: NetworkPrior, settings: SpeedSettings, device: torch.device, model_name: str,
              progress: Optional[Callable[[dict], None]] = None) -> dict:
    """Every row of the grid; the report (rows, device, model, threads, torch version) as a dict.

    All rows are timed first, then their memory is measured (on a CPU the memory phase profiles the run,
    which would slow timings). ``progress(report)`` gets the report so far after every
    row of either phase, so an interrupted run leaves what it measured."""
    if not isinstance(getattr(prior, "latent", prior), NetworkPrior):
        raise DPSError("dps bench speed measures network priors; this prior has no network")
    prior = prior.to(device).eval()
    rows: list[dict] = []
    calls = []
    for row in settings.grid():
        fns = {k: f for k, f in _quantities(prior, row, settings, device).items() if k in settings.measure}
        calls.append(fns)
        rows.append(time_row(fns, row, settings, device))
        if progress is not None:
            progress(_report(prior, settings, device, model_name, rows))
    for fns, out in zip(calls, rows):
        memory_row(fns, out, device)
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
            **({"latent_shape": list(prior.latent_shape)} if getattr(prior, "form", None) == "latent" else {}),
            "parameters": params, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "lean_vjp": _lean_vjp(prior), "settings": asdict(settings), "rows": list(rows)}


def _lean_vjp(prior: NetworkPrior) -> Optional[bool]:
    """Whether our UNet's lean VJP ran (without --compile) at this image size; None for other networks."""
    lean_for = getattr(getattr(prior, "network", None), "lean_for", None)
    return None if lean_for is None else lean_for(*prior.event_shape[-2:])


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
            f"{report['settings']['repeats']} repeats (medians); {report['device']}; torch {report['torch']}"
            + {True: "; lean VJP on (off in compiled rows)", False: "; lean VJP off", None: ""}[report.get("lean_vjp")]
            + ".\n\n")
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


def run_speed_command(settings: SpeedSettings, device: torch.device, model: str = "default",
                      model_config: Optional[str] = None, arch: Optional[str] = None, image_size: Optional[int] = None,
                      json_out: Optional[Path] = None, log: Optional[Callable[[str], None]] = None) -> str:
    """``dps bench speed``: measure ``model`` (or the architecture ``arch`` with random weights at ``image_size``)
    on ``device``; the JSON report is rewritten after every row (an interrupted run keeps what it measured).
    Returns the Markdown table."""
    from ..models.loading import load_model
    from ..utils import atomic_write

    if image_size is not None and arch is None:
        raise DPSError("--image-size applies to --arch only (a model has its own size)")
    if not settings.measure or set(settings.measure) - set(QUANTITIES):
        raise DPSError(f"--measure: choose from {', '.join(QUANTITIES)}")
    prior = random_prior(arch, image_size) if arch else load_model(model, model_config, device=device)
    name = f"{arch} (random weights)" if arch else model

    def progress(report: dict) -> None:
        rows = report["rows"]
        mem = sum(r["floor_mem_bytes"] is not None or r["dps_mem_bytes"] is not None for r in rows)
        if log is not None:
            log(f"timed {len(rows)} of {len(settings.grid())} row(s), memory of {mem}")
        if json_out is not None:
            atomic_write(json_out, lambda p: p.write_text(json.dumps(report, indent=1)))

    return speed_markdown(run_speed(prior, settings, device, name, progress=progress))
