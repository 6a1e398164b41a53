"""DDPM training (Ho et al. 2020, Algorithm 1) of our guided-diffusion UNet, resumable and seeded.

Loss: L_simple = E_{x0, t ~ U{0..T-1}, eps} || eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2,
with images mapped from [0, 1] to the model's [-1, 1]. AdamW, gradient-norm clipping, and an EMA of the
weights (decay ``min(ema_decay, (1 + n) / (10 + n))`` after n updates); the EMA weights are what
``model.safetensors`` holds and what sampling uses.

A run folder holds:

* ``train.json``: the :class:`TrainConfig` (``settings``: every field but those in UNCOMPARED, which sit
  beside it: ``steps``, the target, and how often it checkpoints and logs),
  written before any work; a rerun with other settings is refused, a rerun with more ``steps`` continues
  the run, one with fewer than the weights have had is refused. The folder is locked while a run trains in
  it (a second process is refused), and temporary files of an interrupted run are removed. Every setting
  is checked (the data read, the network built) before the folder is made, so a failed start leaves
  nothing behind;
* ``state.safetensors``: weights, EMA weights, AdamW moments, the data generator's state and the step,
  written atomically every ``checkpoint_every`` steps; an interrupted run restarted with the same command
  continues from it and produces the same weights as an uninterrupted run;
* ``model.safetensors``: the EMA network, loadable with ``dps.load_model``;
* ``loss.csv`` (step, loss, EMA-smoothed loss) and ``loss.png``.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

from .diffusion.schedule import make_schedule
from .models.unet import UNetConfig, UNetModel
from .utils import atomic_path, atomic_write

__all__ = ["TrainConfig", "train", "ddpm_loss", "DIGITS_UNET", "unet_config"]

#: The embedded model's architecture (about 1.0M parameters; sized for 2 CPU cores).
DIGITS_UNET = dict(image_size=32, in_channels=1, num_channels=32, channel_mult="1,2,2", num_res_blocks=1,
                   attention_resolutions="8", num_head_channels=32, use_scale_shift_norm=True,
                   resblock_updown=True, learn_sigma=False, dropout=0.0)


def unet_config(unet: Optional[str] = None, image_size: Optional[int] = None, channels: Optional[int] = None) -> dict:
    """The UNet's ``create_model`` keywords: the digits architecture, or ``unet`` (JSON text, or a JSON/YAML
    file), with ``image_size`` and ``channels`` (in_channels) overriding them."""
    from .errors import DPSError
    from .models.loading import resolve_config

    config = dict(DIGITS_UNET)
    if unet:
        if unet.lstrip().startswith("{"):
            try:
                config = json.loads(unet)
            except json.JSONDecodeError as exc:
                raise DPSError(f"--unet is not valid JSON ({exc.msg} at column {exc.colno}); give create_model "
                               "keywords as a JSON object or a JSON/YAML file") from None
        else:
            config = resolve_config(unet)
    if image_size is not None:
        config["image_size"] = image_size
    if channels is not None:
        config["in_channels"] = int(channels)
    UNetConfig.from_dict(config).check_image_size(int(config.get("image_size", 256)),
                                                 "--image-size" if image_size is not None else "the UNet's image_size")
    return config


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved to ``train.json``).

    :param data: ``"digits"`` (the embedded data set's training split) or an image folder.
    :param unet: guided-diffusion ``create_model`` keywords (``image_size`` and ``in_channels`` included).
    """

    data: str = "digits"
    unet: dict = field(default_factory=lambda: dict(DIGITS_UNET))
    schedule: str = "linear"
    T: int = 1000
    steps: int = 6000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 10
    hflip: bool = False


#: TrainConfig fields a rerun may change: the target step count (more continues the run) and how often it
#: checkpoints and logs (neither changes the weights).
UNCOMPARED = ("steps", "checkpoint_every", "log_every")


def load_training_images(cfg: TrainConfig) -> torch.Tensor:
    """(N, C, H, W) in [0, 1]: the digits training split or every image of a folder."""
    size, channels = int(cfg.unet["image_size"]), int(cfg.unet.get("in_channels", 3))
    if cfg.data == "digits":
        from .data.digits import digits_split

        images, _ = digits_split("train", size)
        if channels != 1:
            raise ValueError("the digits data set is grey: set unet.in_channels = 1")
        return images
    from .data.folder import load_image_folder

    return load_image_folder(cfg.data, size, channels)


def ddpm_loss(net: nn.Module, x0: torch.Tensor, abar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """L_simple for a batch x0 (B, C, H, W) in [-1, 1] on the network's device; ``abar`` float64 (T,). t and eps
    are drawn from a CPU ``generator`` and moved to x0's device, so a run draws the same numbers on every
    device (and resumes on another one). Returns a scalar."""
    b = x0.shape[0]
    t = torch.randint(0, len(abar), (b,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    a = abar[t].to(x0.device, x0.dtype).view(b, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    out = net(x_t, t.to(x0.device))
    eps_hat = out[:, : x0.shape[1]]
    return ((eps_hat - eps) ** 2).mean()


def _save_state(path: Path, step: int, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                gen: torch.Generator, ema_loss: float, wall_s: float) -> None:
    from safetensors.torch import save_file

    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    for i, (name, p) in enumerate(net.named_parameters()):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                tensors[f"opt.{name}.{key}"] = st[key].detach().cpu().contiguous()
    tensors["rng"] = gen.get_state()
    meta = {"step": str(step), "ema_loss": repr(ema_loss), "wall_s": f"{wall_s:.1f}"}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _load_state(path: Path, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                gen: torch.Generator) -> tuple[int, float, float]:
    from .errors import DPSError
    from .io import open_safetensors

    restart = f"delete {path} to restart the training from step 0 (the other files of the run are rewritten)"
    try:
        tensors, meta = open_safetensors(path, "training state")
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, strict=True)
        step = int(meta["step"])
        gen.set_state(tensors["rng"])
    except DPSError as exc:
        raise DPSError(f"{exc}; {restart}") from None
    except (KeyError, RuntimeError, ValueError) as exc:
        raise DPSError(f"training state {path} does not fit this run ({type(exc).__name__}); {restart}") from None
    for name, p in net.named_parameters():
        if f"opt.{name}.exp_avg" in tensors:
            opt.state[p] = {"step": torch.tensor(float(step)), "exp_avg": tensors[f"opt.{name}.exp_avg"].to(p.device),
                            "exp_avg_sq": tensors[f"opt.{name}.exp_avg_sq"].to(p.device)}
    return step, float(meta["ema_loss"]), float(meta.get("wall_s", 0.0))


def _update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters()):
            pe.lerp_(p, 1 - decay)


def _plot_loss(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open()))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, [float(r["loss"]) for r in rows], lw=0.5, alpha=0.4, label="batch loss")
    ax.plot(steps, [float(r["ema_loss"]) for r in rows], lw=1.5, label="smoothed (EMA 0.98)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("L_simple (eps MSE)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(png_path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def _continue_steps(out: Path, state_step: int, cfg: TrainConfig) -> None:
    """Refuse ``cfg.steps`` below what the weights have had."""
    from .errors import DPSError

    if cfg.steps < state_step:
        raise DPSError(f"{out} holds a run trained to {state_step} steps; --steps {cfg.steps} is fewer: pass --steps "
                       f"{state_step} or more to continue it, or another --out to train anew")


def _legacy_record(out: Path) -> None:
    """A train.json of an earlier version (the bare config) in the form of today's (settings + steps)."""
    path = out / "train.json"
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # RunFolder names the damaged file
    if isinstance(data, dict) and "settings" not in data and "unet" in data:
        record = {"settings": {k: v for k, v in data.items() if k not in UNCOMPARED},
                  **{k: data[k] for k in UNCOMPARED if k in data}}
        atomic_write(path, lambda p: p.write_text(json.dumps(record, indent=2)))


def _check_finite(value: float, step: int, cfg: TrainConfig, out: Path) -> None:
    from .errors import DPSError

    if not math.isfinite(value):
        raise DPSError(f"the training loss is {value} at step {step}: the learning rate --lr {cfg.lr:g} is too large "
                       f"for this network (the default is 2e-4); lower it and train in another --out (or delete {out})")


def train(cfg: TrainConfig, out: Union[str, Path], progress: bool = True,
          on_checkpoint: Optional[Callable[[int, UNetModel], None]] = None, device="cpu") -> UNetModel:
    """Train (or resume) to ``cfg.steps`` optimiser steps in ``out`` on ``device``; returns the EMA network.

    ``steps`` may be raised on a rerun to train further; everything else must match the saved run. Initial
    weights and every random draw come from CPU generators, so the device changes results only by rounding.
    """
    from .runs.folder import RunFolder

    out = Path(out)
    device = torch.device(device)
    # everything that can fail on the user's input, before the folder exists
    images = load_training_images(cfg) * 2 - 1  # [0, 1] -> [-1, 1]
    abar = make_schedule(cfg.schedule, cfg.T).alphas_cumprod
    torch.manual_seed(cfg.seed)  # initial weights
    net = UNetModel(UNetConfig.from_dict(cfg.unet)).to(device)
    if int(cfg.unet.get("in_channels", 3)) != images.shape[1]:
        raise ValueError(f"the data have {images.shape[1]} channel(s), the UNet takes {cfg.unet.get('in_channels', 3)}: "
                         "set --channels")
    ema = UNetModel(UNetConfig.from_dict(cfg.unet)).to(device)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    settings = {k: v for k, v in asdict(cfg).items() if k not in UNCOMPARED}
    _legacy_record(out)
    with RunFolder(out, "train.json", settings) as run:
        run.record.update({k: getattr(cfg, k) for k in UNCOMPARED})  # saved once the steps are checked
        return _train_in(run, cfg, out, device, images, abar, net, ema, opt, gen, progress, on_checkpoint)


def _train_in(run, cfg: TrainConfig, out: Path, device: torch.device, images, abar, net, ema, opt, gen, progress,
              on_checkpoint) -> UNetModel:
    """The training loop of :func:`train` in its held run folder."""
    state_path, log_path = out / "state.safetensors", out / "loss.csv"
    step, ema_loss, wall0 = 0, float("nan"), 0.0
    if state_path.exists():
        step, ema_loss, wall0 = _load_state(state_path, net, ema, opt, gen)
    _continue_steps(out, step, cfg)
    run.save()
    _truncate_log(log_path, step)

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="train", unit="step")
    log = log_path.open("a", newline="")
    writer = csv.writer(log)
    if log_path.stat().st_size == 0:
        writer.writerow(["step", "loss", "ema_loss", "wall_s"])
    t0 = time.time() - wall0  # wall time is cumulative over resumed runs
    net.train()
    try:
        while step < cfg.steps:
            idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
            x0 = images[idx]
            if cfg.hflip:
                flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
                x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
            x0 = x0.to(device)
            loss = ddpm_loss(net, x0, abar, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            _update_ema(ema, net, min(cfg.ema_decay, (1 + step) / (10 + step)))
            value = float(loss.detach())
            _check_finite(value, step, cfg, out)
            ema_loss = value if math.isnan(ema_loss) else 0.98 * ema_loss + 0.02 * value
            if step % cfg.log_every == 0:
                writer.writerow([step, f"{value:.6f}", f"{ema_loss:.6f}", f"{time.time() - t0:.1f}"])
            bar.update(1)
            bar.set_postfix(loss=f"{ema_loss:.4f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                log.flush()
                _checkpoint(out, step, net, ema, opt, gen, ema_loss, cfg, time.time() - t0, device)
                if on_checkpoint is not None:
                    on_checkpoint(step, ema)
    finally:
        log.close()
        bar.close()
    if not (out / "model.safetensors").exists():  # steps already reached on a rerun
        _checkpoint(out, step, net, ema, opt, gen, ema_loss, cfg, time.time() - t0, device)
    return ema


def _checkpoint(out: Path, step: int, net, ema, opt, gen, ema_loss: float, cfg: TrainConfig, wall_s: float,
                device: torch.device) -> None:
    from .models.loading import save_unet_safetensors

    _save_state(out / "state.safetensors", step, net, ema, opt, gen, ema_loss, wall_s)
    save_unet_safetensors(out / "model.safetensors", ema, cfg.schedule, cfg.T,
                          extra={"train_steps": str(step), "train_data": cfg.data, "train_wall_s": f"{wall_s:.0f}",
                                 "train_ema_loss": f"{ema_loss:.5f}", "train_device": str(device)})
    _plot_loss(out / "loss.csv", out / "loss.png")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows after the checkpointed step (they are recomputed identically on resume)."""
    if not path.exists():
        return
    rows = list(csv.reader(path.open()))
    keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= step] if rows else []
    atomic_write(path, lambda p: p.write_text("".join(",".join(r) + "\n" for r in keep)))
