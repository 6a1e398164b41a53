"""Adapter for diffusers ``UNet2DModel`` folders (optional extra: ``pip install 'dps[diffusers]'``).

The folder's scheduler config (``scheduler_config.json``, its ``_class_name``) says which process the UNet was
trained on, and so which prior it becomes (:func:`scheduler_form`):

- VP (DDPM-family schedulers, :data:`VP_SCHEDULERS`): ``beta_schedule`` in {linear, scaled_linear,
  squaredcos_cap_v2} or ``trained_betas``, recomputed here in float64; ``prediction_type`` in {epsilon, sample,
  v_prediction}; ``variance_type`` ``learned_range`` means the UNet's second half of channels are
  guided-diffusion variance values. Images in [-1, 1] in the model (diffusers' convention).
- VE (``ScoreSdeVeScheduler``, score-SDE's NCSN++ models): a UNet with Fourier time embedding, conditioned on
  sigma, whose output (divided by sigma inside diffusers) is the score; ``sigma_min``/``sigma_max`` from the
  config (:class:`~dps.diffusion.forms.VEPrior`). Images in [0, 1] in the model, as score-SDE's VE models
  and diffusers' ScoreSdeVePipeline have them.
- EDM (``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``): the UNet is EDM's F, called on c_in x with
  the timestep c_noise = ln(sigma) / 4; ``sigma_min``/``sigma_max``/``sigma_data`` and ``prediction_type``
  (epsilon or v_prediction) from the config (:class:`~dps.diffusion.forms.EDMPrior`). Images in [-1, 1].

Images are [0, 1] at our API edge in every form.

Accepted layouts: a pipeline folder (``unet/`` and ``scheduler/``), or a UNet folder with its
``scheduler_config.json`` beside ``config.json`` or in ``../scheduler/``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch
from torch import nn

from ..diffusion.denoiser import NetworkPrior
from ..diffusion.forms import EDMPrior, VEPrior
from ..diffusion.schedule import Schedule, cosine_betas, linear_betas

__all__ = ["DiffusersUNet", "load_diffusers", "is_diffusers_folder", "betas_from_scheduler_config", "check_scheduler",
           "scheduler_form", "VP_SCHEDULERS", "SIGMA_SCHEDULERS"]

_PREDICTION = {"epsilon": "epsilon", "sample": "x0", "v_prediction": "v"}

VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range", "fixed_small_log", "fixed_large_log")

#: diffusers schedulers of models trained on the variance-preserving (DDPM) process: their betas define it.
VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
                 "DPMSolverSinglestepScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler",
                 "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                 "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler")
#: schedulers of models conditioned on sigma, by the form they load as.
SIGMA_SCHEDULERS = {"ScoreSdeVeScheduler": "ve", "EDMEulerScheduler": "edm", "EDMDPMSolverMultistepScheduler": "edm"}
#: schedulers this loader recognises but does not read, and why.
REFUSED_SCHEDULERS = {"KarrasVeScheduler": "a variance-exploding (VE) model with the deprecated Karras-VE pipeline's "
                                           "own input and output scaling"}
_EDM_PREDICTION = {"epsilon": "epsilon", "v_prediction": "v"}


def scheduler_form(sched: dict, source: Path) -> str:
    """``"vp"``, ``"ve"`` or ``"edm"``: the process of the model whose scheduler config is ``sched``; a ValueError
    naming the scheduler and what is read for a scheduler this loader does not read."""
    name = sched.get("_class_name")
    if name is None and {"sigma_min", "sigma_max", "sigma_data"} & set(sched):
        raise ValueError(f"{source} has no _class_name but noise levels (sigma_min, sigma_max) of a VE or EDM "
                         f"scheduler; add the scheduler's \"_class_name\" ({', '.join(SIGMA_SCHEDULERS)}) to say which")
    if name in SIGMA_SCHEDULERS:
        return SIGMA_SCHEDULERS[name]
    if name in REFUSED_SCHEDULERS:
        raise ValueError(f"{source} has a {name}: {REFUSED_SCHEDULERS[name]}, which this loader does not read; it "
                         f"reads DDPM-family (VP) schedulers, {', '.join(SIGMA_SCHEDULERS)}")
    if name is not None and name not in VP_SCHEDULERS:
        raise ValueError(f"{source} has a scheduler {name!r} that this loader does not know; it reads the VP "
                         f"schedulers {', '.join(VP_SCHEDULERS)} and {', '.join(SIGMA_SCHEDULERS)}")
    return "vp"


def check_scheduler(sched: dict, source: Path) -> None:
    """A ValueError naming the scheduler and what is supported unless this loader reads ``sched``."""
    form = scheduler_form(sched, source)
    if form == "edm" and sched.get("prediction_type", "epsilon") not in _EDM_PREDICTION:
        raise ValueError(f"{source}: the EDM scheduler's prediction_type {sched.get('prediction_type')!r} is not "
                         f"supported; supported: {', '.join(_EDM_PREDICTION)}")


class DiffusersUNet(nn.Module):
    """``forward(x, timesteps) -> unet(x, timesteps).sample`` (B, C_out, H, W)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    @property
    def use_checkpoint(self) -> bool:
        """diffusers' gradient checkpointing of the UNet's blocks (recomputed in the backward pass)."""
        return bool(getattr(self.unet, "is_gradient_checkpointing", False))

    @use_checkpoint.setter
    def use_checkpoint(self, on: bool) -> None:
        if on != self.use_checkpoint:
            (self.unet.enable_gradient_checkpointing if on else self.unet.disable_gradient_checkpointing)()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.unet(x, timesteps).sample


def _unet_dir(path: Path) -> Path:
    if (path / "unet" / "config.json").is_file():
        return path / "unet"
    return path


def is_diffusers_folder(path: Union[str, Path]) -> bool:
    cfg = _unet_dir(Path(path)) / "config.json"
    if not cfg.is_file():
        return False
    return json.loads(cfg.read_text()).get("_class_name") == "UNet2DModel"


def _scheduler_config(path: Path, unet_dir: Path) -> dict:
    for cand in (path / "scheduler" / "scheduler_config.json", unet_dir / "scheduler_config.json",
                 unet_dir.parent / "scheduler" / "scheduler_config.json"):
        if cand.is_file():
            try:
                sched = json.loads(cand.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{cand} is not valid JSON ({type(exc).__name__}); restore the scheduler config") \
                    from None
            if not isinstance(sched, dict):
                raise ValueError(f"{cand} is not a JSON object; restore the scheduler config")
            check_scheduler(sched, cand)
            return sched
    raise FileNotFoundError(
        f"{path}: no scheduler_config.json (looked in scheduler/, beside config.json and in ../scheduler/); "
        "the scheduler's betas define the diffusion, so it is required")


def betas_from_scheduler_config(cfg: dict) -> torch.Tensor:
    """The scheduler's betas (T,) in float64."""
    T = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("trained_betas") is not None:
        return torch.tensor(cfg["trained_betas"], dtype=torch.float64)
    kind = cfg.get("beta_schedule", "linear")
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    if kind == "linear":
        return linear_betas(T, b0, b1)
    if kind == "scaled_linear":
        return torch.linspace(b0 ** 0.5, b1 ** 0.5, T, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":
        return cosine_betas(T)
    raise ValueError(f"the scheduler's beta_schedule {kind!r} is not supported; supported: linear, scaled_linear, "
                     "squaredcos_cap_v2, or trained_betas")


def _load_unet(unet_dir: Path):
    try:
        from diffusers import UNet2DModel
    except ImportError as exc:
        raise ImportError("loading diffusers models needs the optional extra", name="diffusers") from exc
    unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, low_cpu_mem_usage=False)
    size = unet.config.sample_size
    return unet.eval(), (unet.config.in_channels, *((size, size) if isinstance(size, int) else tuple(size)))


def _levels(path: Path, sched: dict, defaults: dict) -> dict:
    """The scheduler's positive noise levels (``defaults``: key -> default), sigma_min < sigma_max, or a ValueError
    naming the file and the key."""
    where = f"{path}: scheduler_config.json"
    out = {}
    for key, default in defaults.items():
        value = sched.get(key, default)
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where} has {key}={value!r}, not a number") from None
        if not out[key] > 0:
            raise ValueError(f"{where} has {key}={value!r}; it must be positive")
    if out["sigma_min"] >= out["sigma_max"]:
        raise ValueError(f"{where} has sigma_min {out['sigma_min']} >= sigma_max {out['sigma_max']}")
    return out


def _sigma_prior(path: Path, unet_dir: Path, sched: dict, form: str) -> NetworkPrior:
    """A VE or EDM folder as a :class:`VEPrior` / :class:`EDMPrior` (module docstring)."""
    if form == "ve":
        levels = _levels(path, sched, {"sigma_min": 0.01, "sigma_max": 1348.0})
        unet, shape = _load_unet(unet_dir)
        if unet.config.time_embedding_type != "fourier":
            raise ValueError(f"{path}: a ScoreSdeVeScheduler folder whose UNet has time_embedding_type "
                             f"{unet.config.time_embedding_type!r}; a VE score network has 'fourier' (its output is "
                             "divided by sigma), so this UNet's output is not a score")
        return VEPrior(DiffusersUNet(unet), levels["sigma_min"], levels["sigma_max"], data_range=(0.0, 1.0),
                       event_shape=shape).eval()
    levels = _levels(path, sched, {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5})
    unet, shape = _load_unet(unet_dir)
    if unet.config.time_embedding_type == "fourier":
        raise ValueError(f"{path}: an EDM scheduler folder whose UNet has Fourier time embedding, which takes the log "
                         "of its timestep and divides its output by it; EDM's F takes c_noise = ln(sigma) / 4 (negative "
                         "below sigma 1), so this UNet cannot be EDM's F")
    return EDMPrior(DiffusersUNet(unet), levels["sigma_min"], levels["sigma_max"], levels["sigma_data"],
                    _EDM_PREDICTION[sched.get("prediction_type", "epsilon")], data_range=(-1.0, 1.0),
                    event_shape=shape).eval()


def load_diffusers(path: Union[str, Path]) -> NetworkPrior:
    """Load a local diffusers ``UNet2DModel`` folder as a prior of its scheduler's form (nothing is downloaded)."""
    path = Path(path)
    unet_dir = _unet_dir(path)
    if not is_diffusers_folder(path):
        raise ValueError(f"{path} is not a diffusers UNet2DModel folder (config.json with _class_name UNet2DModel)")
    sched = _scheduler_config(path, unet_dir)
    form = scheduler_form(sched, path)
    if form != "vp":
        return _sigma_prior(path, unet_dir, sched, form)
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in _PREDICTION:
        raise ValueError(f"{path}: the scheduler's prediction_type {prediction!r} is not supported; supported: "
                         f"{', '.join(_PREDICTION)}")
    variance = sched.get("variance_type", "fixed_small")
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"{path}: the scheduler's variance_type {variance!r} is not supported; supported: "
                         f"{', '.join(VARIANCE_TYPES)}")
    unet, shape = _load_unet(unet_dir)
    betas = betas_from_scheduler_config(sched)
    schedule = Schedule(betas=betas, timesteps=torch.arange(len(betas), dtype=torch.int64))
    learn_sigma = variance == "learned_range"
    if learn_sigma and unet.config.out_channels != 2 * unet.config.in_channels:
        raise ValueError("variance_type learned_range needs out_channels = 2 * in_channels")
    prior = NetworkPrior(DiffusersUNet(unet), schedule, prediction=_PREDICTION[prediction], learn_sigma=learn_sigma,
                         data_range=(-1.0, 1.0), event_shape=shape)
    return prior.eval()
