"""Loading pretrained priors: guided-diffusion state dicts, our safetensors files, diffusers UNets.

``load_model(path_or_name, config=None)`` returns a :class:`~dps.diffusion.denoiser.NetworkPrior`
(the denoiser contract) whose ``.network`` is the raw ``nn.Module`` (``forward(x, timesteps)`` returns
exactly what the original network returns). Nothing is ever downloaded; a state dict that does not fit
the architecture raises :class:`CheckpointMismatchError` and never yields random weights.

Sources, tried in this order:

* a name: ``"digits"`` / ``"default"`` (the embedded model shipped in the package);
* a directory with a diffusers ``UNet2DModel`` (``config.json`` with ``"_class_name": "UNet2DModel"``,
  or a pipeline folder with ``unet/`` and ``scheduler/``): needs the optional ``diffusers`` extra;
* a ``.safetensors`` file of our UNet, written by ``dps train`` or :func:`save_unet_safetensors` (the UNet
  config and the diffusion are in its metadata: a VP schedule, or ``form`` ``edm`` / ``ve`` with the sigma
  range, for a network a user trained or converted in EDM's preconditioning or as a VE score network);
* a raw guided-diffusion state dict (``ffhq_10m.pt``, ``imagenet256.pt``), loaded with
  ``torch.load(weights_only=True)``; its config comes from ``config`` or is inferred (see
  :func:`infer_unet_config`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ..diffusion.denoiser import NetworkPrior
from ..diffusion.forms import EDMPrior, VEPrior
from ..diffusion.schedule import Schedule, make_schedule
from .unet import UNetConfig, UNetModel

__all__ = [
    "GUIDED_DIFFUSION_PRESETS", "CheckpointMismatchError", "load_model", "load_guided_diffusion",
    "infer_unet_config", "check_state_dict", "model_identity", "save_unet_safetensors", "load_unet_safetensors", "EMBEDDED_MODELS",
    "model_advice",
]

_BASE = dict(class_cond=False, use_checkpoint=False, num_heads_upsample=-1, use_fp16=False,
             use_new_attention_order=False, dropout=0.0, learn_sigma=True, use_scale_shift_norm=True,
             resblock_updown=True, num_heads=4, num_head_channels=64, channel_mult="", image_size=256)

#: ``create_model`` keywords of the checkpoints DPS was published with (the authors' model configs).
GUIDED_DIFFUSION_PRESETS: dict[str, dict[str, Any]] = {
    "ffhq256": {**_BASE, "num_channels": 128, "num_res_blocks": 1, "attention_resolutions": "16"},
    "imagenet256": {**_BASE, "num_channels": 256, "num_res_blocks": 2, "attention_resolutions": "32,16,8"},
}

_ASSETS = Path(__file__).resolve().parent.parent / "assets"
#: Models embedded in the package (name -> file under ``dps/assets``).
EMBEDDED_MODELS = {"digits": "digits_unet.safetensors", "default": "digits_unet.safetensors",
                   "digits-latent": "digits_latent.safetensors"}


def model_advice(name: str, event_shape) -> str:
    """What an error about images that do not fit the model ``name`` (of samples ``event_shape``) tells the
    user: which model it is and, for the embedded one, what to pass for photographs."""
    dims = " x ".join(map(str, event_shape))
    if str(name) in EMBEDDED_MODELS:
        return (f"the default model is the embedded {dims} digits model; for photographs pass a checkpoint with "
                "--model (see the Models page of the documentation)")
    return f"the model {name} takes {dims} images"


class CheckpointMismatchError(ValueError):
    """A state dict does not fit the architecture; the message lists every offending key."""


# ----------------------------------------------------------------------------------------------- checks
def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointMismatchError` unless keys and shapes match ``model`` exactly."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if not (missing or unexpected or misshaped):
        return

    def show(keys: list[str], fmt) -> str:
        head = ", ".join(fmt(k) for k in keys[:12])
        return head + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")

    lines = [f"{source} does not fit the architecture:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): " + show(missing, str))
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): " + show(unexpected, str))
    if misshaped:
        lines.append(f"  mis-shaped keys ({len(misshaped)}): "
                     + show(misshaped, lambda k: f"{k} checkpoint {list(got[k])} vs model {list(expected[k])}"))
    lines.append("  Pass the matching config (create_model keywords or a preset: "
                 + ", ".join(GUIDED_DIFFUSION_PRESETS) + ").")
    raise CheckpointMismatchError("\n".join(lines))


def _n_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def infer_unet_config(state_dict: Mapping[str, torch.Tensor], image_size: Optional[int] = None) -> dict[str, Any]:
    """Infer guided-diffusion ``create_model`` keywords from a state dict, where that is unambiguous.

    Inferred: num_channels, channel_mult, num_res_blocks, learn_sigma, in_channels, class_cond,
    use_scale_shift_norm, resblock_updown, attention downsample rates. Not inferable from weights:
    the number of attention heads and the image size; a state dict whose shapes equal a preset's is given
    that preset, otherwise ``image_size`` must be passed and ``num_head_channels`` / ``num_heads`` are
    required whenever the network has attention (a ``ValueError`` says so).
    """
    sd = state_dict
    if "input_blocks.0.0.weight" not in sd or "out.2.weight" not in sd:
        raise CheckpointMismatchError(
            "not a guided-diffusion UNet state dict (no 'input_blocks.0.0.weight' / 'out.2.weight'); "
            f"first keys: {list(sd)[:5]}")
    for name, preset in GUIDED_DIFFUSION_PRESETS.items():
        with torch.device("meta"):
            model = UNetModel(preset)
        if {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in sd.items()}:
            return dict(preset)
    ch0, in_channels = sd["input_blocks.0.0.weight"].shape[:2]
    out_channels = sd["out.2.weight"].shape[0]
    mc = sd["time_embed.0.weight"].shape[1]
    # Output block j holds [ResBlock, (Attention), (Upsampler)]; the upsampler closes each level, so the
    # first block that has one is block num_res_blocks (0-based) and there are levels - 1 of them.
    n_out = _n_blocks(sd, "output_blocks.")
    up_blocks, updown_flags = [], []
    for j in range(n_out):
        subs = _n_blocks(sd, f"output_blocks.{j}.")
        has_attn = f"output_blocks.{j}.1.qkv.weight" in sd
        if subs == 3 or (subs == 2 and not has_attn):
            up_blocks.append(j)
            updown_flags.append(f"output_blocks.{j}.{subs - 1}.in_layers.2.weight" in sd)
    levels = len(up_blocks) + 1
    num_res_blocks = up_blocks[0] if up_blocks else n_out - 1
    if n_out != levels * (num_res_blocks + 1) or _n_blocks(sd, "input_blocks.") != n_out:
        raise CheckpointMismatchError("block layout is not that of a guided-diffusion UNet "
                                      f"({n_out} output blocks, upsamplers at {up_blocks})")
    mults, attn, i, ds = [], [], 1, 1
    for level in range(levels):
        for r in range(num_res_blocks):
            if r == 0:
                mults.append(sd[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0])
            if f"input_blocks.{i}.1.qkv.weight" in sd and ds not in attn:
                attn.append(ds)
            i += 1
        i += 1  # the level's downsampler
        ds *= 2
    resblock_updown = any(updown_flags)
    emb_out = sd["input_blocks.1.0.emb_layers.1.weight"].shape[0]
    cfg: dict[str, Any] = dict(
        num_channels=mc, num_res_blocks=num_res_blocks,
        channel_mult=",".join(str(m // mc) if m % mc == 0 else str(m / mc) for m in mults),
        learn_sigma=out_channels == 2 * in_channels, class_cond="label_emb.weight" in sd,
        use_scale_shift_norm=emb_out == 2 * sd["input_blocks.1.0.in_layers.2.weight"].shape[0],
        resblock_updown=resblock_updown, in_channels=in_channels, dropout=0.0,
    )
    if ch0 != mults[0]:
        raise CheckpointMismatchError("input conv width does not match the first level; not a guided-diffusion UNet")
    if image_size is None:
        raise ValueError(
            "cannot infer image_size from the weights (the UNet is size-agnostic); pass config={'image_size': ...} "
            "with the heads (num_head_channels or num_heads), or a preset: " + ", ".join(GUIDED_DIFFUSION_PRESETS))
    cfg["image_size"] = image_size
    cfg["attention_resolutions"] = ",".join(str(image_size // d) for d in attn)
    return cfg


# ----------------------------------------------------------------------------------------------- config
ConfigLike = Union[None, str, Path, Mapping[str, Any]]


def resolve_config(config: ConfigLike) -> Optional[dict[str, Any]]:
    """A preset name, a JSON/YAML file of ``create_model`` keywords, or a dict -> dict (None stays None)."""
    if config is None:
        return None
    if isinstance(config, Mapping):
        return dict(config)
    text = str(config)
    if text in GUIDED_DIFFUSION_PRESETS:
        return dict(GUIDED_DIFFUSION_PRESETS[text])
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"config {text!r} is neither a preset ({', '.join(GUIDED_DIFFUSION_PRESETS)}) nor a file")
    from ..io import load_mapping_file

    data = load_mapping_file(path, "model config")
    # the DPS authors' model YAMLs also carry model_path; it is not an architecture keyword
    data.pop("model_path", None)
    return data


def _prior_from_unet(net: UNetModel, schedule: Schedule, data_range=(-1.0, 1.0)) -> NetworkPrior:
    cfg = net.config
    prior = NetworkPrior(net, schedule, prediction="epsilon", learn_sigma=cfg.learn_sigma, data_range=data_range,
                         event_shape=(cfg.in_channels, cfg.image_size, cfg.image_size))
    return prior.eval()


def load_guided_diffusion(path: Union[str, Path], config: ConfigLike = None,
                          map_location: Union[str, torch.device] = "cpu") -> NetworkPrior:
    """Load a raw guided-diffusion state dict (e.g. ``ffhq_10m.pt``) as a prior.

    The diffusion is the one those checkpoints were trained with: linear betas 1e-4..0.02, T = 1000,
    epsilon prediction, images in [-1, 1] (mapped to our [0, 1] by the prior).
    """
    path = Path(path)
    from ..io import load_torch_file

    state_dict = load_torch_file(path, "checkpoint")
    if not isinstance(state_dict, Mapping):
        raise CheckpointMismatchError(f"{path} holds a {type(state_dict).__name__}, not a state dict")
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    user = resolve_config(config) or {}
    if user and "num_channels" in user:
        cfg = {**user}
    else:
        inferred = infer_unet_config(state_dict, image_size=user.get("image_size"))
        preset_hit = any(inferred == p for p in GUIDED_DIFFUSION_PRESETS.values())
        if not preset_hit and not ({"num_heads", "num_head_channels"} & set(user)):
            raise ValueError(
                f"{path}: the number of attention heads cannot be inferred from the weights; pass config with "
                "num_head_channels (e.g. 64) or num_heads, together with image_size")
        cfg = {**inferred, **user}
    net = UNetModel(UNetConfig.from_dict(cfg))
    check_state_dict(net, state_dict, source=str(path))
    net.load_state_dict(state_dict, strict=True)
    return _prior_from_unet(net, make_schedule("linear", 1000))


# ----------------------------------------------------------------------------------------------- safetensors
#: what a ``form`` in a dps UNet file's metadata means, and the metadata keys (with defaults) it reads.
UNET_FORMS = {"vp": "an epsilon network of the VP schedule named by `schedule` and `T`",
              "edm": "EDM's F, called on (c_in x, c_noise); `sigma_min` (0.002), `sigma_max` (80), `sigma_data` (0.5), "
                     "`prediction` (epsilon or v)",
              "ve": "a VE score network s(x, sigma); `sigma_min` (0.01), `sigma_max` (100)"}


def save_unet_safetensors(path: Union[str, Path], net: UNetModel, schedule_name: str = "linear", T: int = 1000,
                          extra: Optional[Mapping[str, str]] = None, form: str = "vp", prediction: str = "epsilon",
                          **sigmas: float) -> None:
    """Write the weights and, in the metadata, the UNet config and the diffusion; atomically.

    :param form: ``"vp"`` (an epsilon network of the schedule ``schedule_name``, ``T`` steps), ``"edm"`` or
        ``"ve"`` (:data:`UNET_FORMS`), with ``sigmas``: sigma_min, sigma_max (and sigma_data for edm).
    :param prediction: an EDM network's output, ``"epsilon"`` (EDM's F) or ``"v"``."""
    from safetensors.torch import save_file

    from ..utils import atomic_path

    if form not in UNET_FORMS:
        raise ValueError(f"unknown form {form!r}; choose one of {', '.join(UNET_FORMS)}")
    diffusion = {"schedule": schedule_name, "T": str(T), "prediction": "epsilon"} if form == "vp" else \
        {"form": form, **({"prediction": prediction} if form == "edm" else {}),
         **{k: repr(float(v)) for k, v in sigmas.items()}}
    meta = {"format": "dps-unet", "unet_config": json.dumps(net.config.to_dict()), **diffusion, "data_range": "-1,1",
            **(extra or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_unet_safetensors(path: Union[str, Path], map_location: str = "cpu") -> NetworkPrior:
    """Load a file written by :func:`save_unet_safetensors` (``dps train``) as a prior."""
    from ..io import open_safetensors

    state_dict, meta = open_safetensors(path, "model file")
    if meta.get("format") != "dps-unet":
        raise CheckpointMismatchError(f"{path} is not a dps UNet file (metadata format={meta.get('format')!r})")
    net = UNetModel(UNetConfig.from_dict(json.loads(meta["unet_config"])))
    check_state_dict(net, state_dict, source=str(path))
    net.load_state_dict(state_dict, strict=True)
    lo, hi = (float(v) for v in meta.get("data_range", "-1,1").split(","))
    form = meta.get("form", "vp")
    if form not in UNET_FORMS:
        raise CheckpointMismatchError(f"{path}: metadata form {form!r} is not one of {', '.join(UNET_FORMS)}")
    if form == "vp":
        prior = _prior_from_unet(net, make_schedule(meta.get("schedule", "linear"), int(meta.get("T", 1000))), (lo, hi))
    else:
        prior = _sigma_prior(path, net, meta, form, (lo, hi))
    prior.metadata = meta
    return prior


def _sigma_prior(path, net: UNetModel, meta: Mapping[str, str], form: str, data_range) -> NetworkPrior:
    """An EDM or VE prior from a dps UNet file's metadata (:data:`UNET_FORMS`)."""
    def number(key: str, default: float) -> float:
        try:
            return float(meta.get(key, default))
        except ValueError:
            raise CheckpointMismatchError(f"{path}: metadata {key}={meta[key]!r} is not a number") from None

    cfg = net.config
    if cfg.learn_sigma:
        raise CheckpointMismatchError(f"{path}: a {form.upper()} network has no learned variance (learn_sigma is a VP "
                                      "network's output); write it with learn_sigma false")
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    if form == "edm":
        prediction = meta.get("prediction", "epsilon")
        if prediction not in ("epsilon", "v"):
            raise CheckpointMismatchError(f"{path}: metadata prediction {prediction!r} is not epsilon or v")
        return EDMPrior(net, number("sigma_min", 0.002), number("sigma_max", 80.0), number("sigma_data", 0.5),
                        prediction, data_range=data_range, event_shape=shape).eval()
    return VEPrior(net, number("sigma_min", 0.01), number("sigma_max", 100.0), data_range=data_range,
                   event_shape=shape).eval()


# ----------------------------------------------------------------------------------------------- entry point
_IDENTITIES: dict = {}


def model_identity(path_or_name: Union[str, Path]) -> str:
    """A digest of a model's bytes: the file, or every file of a folder (by relative path), or the embedded
    file a name stands for. Results record it, so a model retrained or replaced in place makes a rerun
    recompute them. Memoised per process on (path, size, mtime)."""
    key = str(path_or_name)
    path = _ASSETS / EMBEDDED_MODELS[key] if key in EMBEDDED_MODELS and not Path(key).exists() else Path(key)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                         p.relative_to(path).parts)) \
        if path.is_dir() else [path]
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists())
    if stamp not in _IDENTITIES:
        import hashlib

        h = hashlib.sha256()
        for f in files:
            if not f.exists():
                continue
            if path.is_dir():
                h.update(str(f.relative_to(path)).encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
        _IDENTITIES[stamp] = h.hexdigest()[:16]
    return _IDENTITIES[stamp]


def _load_safetensors(path: Path):
    """Our UNet file, or our latent model file (format ``dps-latent``)."""
    from .latent_files import is_latent_file, load_latent_safetensors

    return load_latent_safetensors(path) if is_latent_file(path) else load_unet_safetensors(path)


def load_model(path_or_name: Union[str, Path], config: ConfigLike = None,
               device: Union[str, torch.device, None] = None) -> NetworkPrior:
    """Load a prior from a name, a diffusers folder, a ``.safetensors`` file or a guided-diffusion ``.pt``.

    :param path_or_name: ``"digits"``/``"default"`` (embedded), a diffusers ``UNet2DModel`` folder,
        a ``dps train`` ``.safetensors`` file, or a raw guided-diffusion state dict (``.pt``/``.pth``).
    :param config: for guided-diffusion files: ``create_model`` keywords (dict, JSON or YAML path) or a
        preset name (``ffhq256``, ``imagenet256``); inferred from the state dict where unambiguous.
    :param device: where to put the network (default CPU).
    :returns: a :class:`NetworkPrior` in eval mode; ``.network`` is the raw module.
    """
    key = str(path_or_name)
    guided = Path(key).suffix not in (".safetensors", "") and Path(key).is_file()
    if config is not None and not guided:
        raise ValueError(f"a model config (--config) applies to guided-diffusion .pt checkpoints only; {key} carries "
                         "its own configuration: drop --config")
    if key in EMBEDDED_MODELS and not Path(key).exists():
        path = _ASSETS / EMBEDDED_MODELS[key]
        if not path.is_file():
            raise FileNotFoundError(f"embedded model file {path} is missing from this installation")
        prior = _load_safetensors(path)
    else:
        path = Path(key)
        if not path.exists():
            raise FileNotFoundError(
                f"no model at {path}; give a file or folder, or one of the embedded names: {', '.join(EMBEDDED_MODELS)}")
        if path.is_dir():
            from .diffusers_adapter import is_diffusers_folder, load_diffusers
            from .latent_diffusers import is_latent_pipeline, load_latent_pipeline

            if is_latent_pipeline(path):
                prior = load_latent_pipeline(path)
            elif not is_diffusers_folder(path):
                raise ValueError(f"{path} is a folder but not a diffusers UNet2DModel folder "
                                 "(expected config.json with _class_name UNet2DModel, or unet/ and scheduler/) nor a "
                                 "latent pipeline (unet/ with vae/ or vqvae/)")
            else:
                prior = load_diffusers(path)
        elif path.suffix == ".safetensors":
            prior = _load_safetensors(path)
        else:
            prior = load_guided_diffusion(path, config)
    return prior.to(device) if device is not None else prior
