"""The guided-diffusion ("ADM") UNet of Dhariwal & Nichol (2021), written for this project.

It reproduces the module tree, the state-dict keys and the numerics of openai/guided-diffusion's
``UNetModel`` (the network the DPS checkpoints ``ffhq_10m.pt`` and ``imagenet256.pt`` were trained
with), so that those raw state dicts load with ``strict=True`` and ``forward(x, timesteps)`` returns what
the original returns. Facts this must match (checked against the original's outputs in ``tests/reference``):

* timestep embedding: sinusoidal on the integer step index, ``[cos(t f), sin(t f)]`` with
  ``f_k = 10000^(-k / (d/2))``, then Linear -> SiLU -> Linear to ``4 * model_channels``;
* GroupNorm with 32 groups, computed in float32;
* ResBlock: norm -> SiLU -> [up/down] -> conv3x3; the embedding adds a shift, or with
  ``use_scale_shift_norm`` modulates the second norm as ``norm(h) * (1 + scale) + shift``;
* attention: "legacy" QKV order (heads split before q/k/v) unless ``use_new_attention_order``,
  with q and k both scaled by ``ch^(-1/4)``;
* attention is used at downsample rates ``ds`` in ``attention_resolutions`` (already converted from
  resolutions by :func:`UNetConfig.attention_ds`).

Input: x of shape (B, in_channels, H, W) (images in [-1, 1] for the published models) and integer
timesteps (B,). Output: (B, out_channels, H, W); with ``learn_sigma`` the channels are
``[eps_hat, v]`` with v the learned-range variance values.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["UNetConfig", "UNetModel", "timestep_embedding"]

NUM_CLASSES = 1000  # guided-diffusion's class-conditional ImageNet models


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): ``[cos(t f_k), sin(t f_k)]``, ``f_k = max_period^(-k/half)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C) evaluated in at least float32 (as the original does under fp16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).type(x.dtype)
        return super().forward(x)


def normalization(channels: int) -> nn.Module:
    return GroupNorm32(32, channels)


# ------------------------------------------------------------------------------------- lean VJP
# DPS differentiates the network with respect to its input only, its weights frozen. Autograd's own
# layers keep what a weight gradient would need as well: a convolution keeps its input, a GroupNorm its
# input and a SiLU the normalised tensor, i.e. three activations per norm -> SiLU -> conv. The two
# functions below keep none of them beyond the norm's input, and give the same input gradient.


#: input pixels (H x W) from which ``UNetModel.lean = None`` (the default) turns the lean VJP on
LEAN_MIN_PIXELS = 128 * 128


class _ConvInputGrad(torch.autograd.Function):
    """A convolution with frozen weights that keeps no activation for the backward pass: the gradient
    to its input, dL/dx = conv_transpose(dL/dout, W), needs only W and the input's shape."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, conv: nn.Module) -> torch.Tensor:  # type: ignore[override]
        out = conv(x)  # under autocast this casts as usual; the backward uses the same dtype
        ctx.conv, ctx.in_shape, ctx.dtype = conv, x.shape, out.dtype
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        conv = ctx.conv
        grad_input = torch.nn.grad.conv2d_input if conv.weight.ndim == 4 else torch.nn.grad.conv1d_input
        w = conv.weight.to(ctx.dtype)
        return grad_input(ctx.in_shape, w, grad.to(ctx.dtype), conv.stride, conv.padding, conv.dilation,
                          conv.groups), None


def _norm_silu(norm: nn.Module, x: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor]):
    h = norm(x)
    if scale is not None:
        h = h * (1 + scale) + shift
    return F.silu(h)


class _NormSiLU(torch.autograd.Function):
    """SiLU(norm(x) [* (1 + scale) + shift]) keeping only x (and the small scale and shift); the backward
    recomputes the norm (cheap, elementwise and per-group statistics) under the forward's autocast state.
    Gradients flow to x only (scale and shift come from the timestep embedding, which has none)."""

    @staticmethod
    def forward(ctx, x, scale, shift, norm):  # type: ignore[override]
        device = x.device.type
        ctx.norm = norm
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(x, scale, shift)
        return _norm_silu(norm, x, scale, shift)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, scale, shift = ctx.saved_tensors
        device, enabled, dtype = ctx.autocast
        if x.dtype == torch.float32 and not enabled and type(ctx.norm) in (nn.GroupNorm, GroupNorm32):
            return _norm_silu_grad(ctx.norm, x, scale, shift, grad), None, None, None
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            x = x.detach().requires_grad_(True)
            (grad_x,) = torch.autograd.grad(_norm_silu(ctx.norm, x, scale, shift), x, grad)
        return grad_x, None, None, None


def _norm_silu_grad(norm: nn.GroupNorm, x: torch.Tensor, scale: Optional[torch.Tensor],
                    shift: Optional[torch.Tensor], grad: torch.Tensor) -> torch.Tensor:
    """dL/dx of SiLU(u), u = GroupNorm(x) [* (1 + scale) + shift], from dL/d(output) = ``grad``, in float32
    with two temporaries of x's size (autograd's recomputation keeps four): u is recomputed, then
    overwritten in place by dL/du = grad * sigma(u) (1 + u (1 - sigma(u))), and the norm's backward runs."""
    N, C = x.shape[:2]
    hw = x[0, 0].numel()
    u, mean, rstd = torch.ops.aten.native_group_norm(x, norm.weight, norm.bias, N, C, hw, norm.num_groups, norm.eps)
    if scale is not None:
        u.mul_(1 + scale).add_(shift)
    sig = torch.sigmoid(u)
    u.addcmul_(u, sig, value=-1.0).add_(1.0).mul_(sig).mul_(grad)  # u(1 - s) + 1, times s, times grad
    del sig
    if scale is not None:
        u.mul_(1 + scale)
    return torch.ops.aten.native_group_norm_backward(u, x, mean, rstd, norm.weight, N, C, hw, norm.num_groups,
                                                     [True, False, False])[0]


def _frozen(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether the lean path applies: a graph to x is being recorded and the module's weights are frozen."""
    return torch.is_grad_enabled() and x.requires_grad and not module.weight.requires_grad


def conv_lean(conv: nn.Module, x: torch.Tensor, lean: bool = True) -> torch.Tensor:
    """``conv(x)``; with ``lean`` and frozen weights, without keeping x for the backward pass."""
    return _ConvInputGrad.apply(x, conv) if lean and _frozen(conv, x) else conv(x)


def norm_silu(norm: nn.Module, x: torch.Tensor, scale: Optional[torch.Tensor] = None,
              shift: Optional[torch.Tensor] = None, lean: bool = True) -> torch.Tensor:
    """``SiLU(norm(x) [* (1 + scale) + shift])``; with ``lean`` and a frozen norm, keeping only x."""
    use = lean and _frozen(norm, x) and not any(t is not None and t.requires_grad for t in (scale, shift))
    return _NormSiLU.apply(x, scale, shift, norm) if use else _norm_silu(norm, x, scale, shift)


class EmbedBlock(nn.Module):
    """A block that also takes the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class EmbedSequential(nn.Sequential):
    """``nn.Sequential`` that hands the embedding to the blocks that use it (keys ``input_blocks.i.j``)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, EmbedBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour x2, then an optional 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """A stride-2 3x3 conv (key ``op``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None) -> None:
        super().__init__()
        self.op = (
            nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(EmbedBlock):
    """Residual block with timestep conditioning, optionally resampling (``up``/``down``)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: Optional[int] = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        #: the lean VJP (``norm_silu`` / ``conv_lean``): set by ``UNetModel.lean``
        self.lean = False

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h, x = self._first_half(x)
        return self._second_half(h, x, emb)

    def _first_half(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """norm -> SiLU -> [up/down] -> conv; returns h and the (resampled) input for the skip path."""
        norm, _, conv = self.in_layers
        h = norm_silu(norm, x, lean=self.lean)
        if self.updown:
            h, x = self.h_upd(h), self.x_upd(x)
        return conv_lean(conv, h, self.lean), x

    def _second_half(self, h: torch.Tensor, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The embedding (shift, or scale and shift of the norm), norm -> SiLU -> dropout -> conv, + skip."""
        norm, _, dropout, conv = self.out_layers
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm_silu(norm, h, scale, shift, lean=self.lean)
        else:
            h = norm_silu(norm, h + emb_out, lean=self.lean)
        h = conv_lean(conv, dropout(h), self.lean)
        skip = self.skip_connection
        return (conv_lean(skip, x, self.lean) if isinstance(skip, nn.Conv2d) else skip(x)) + h


def _qkv_attention(qkv: torch.Tensor, n_heads: int, legacy: bool) -> torch.Tensor:
    """Multi-head self-attention on (B, 3*H*C, L) -> (B, H*C, L).

    ``legacy``: the tensor is split into heads first, then each head into (q, k, v) (guided-diffusion's
    ``QKVAttentionLegacy``); otherwise into (q, k, v) first, then heads (``QKVAttention``).
    """
    bs, width, length = qkv.shape
    ch = width // (3 * n_heads)
    if legacy:
        q, k, v = qkv.reshape(bs * n_heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (z.reshape(bs * n_heads, ch, length) for z in qkv.chunk(3, dim=1))
    scale = 1.0 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection (keys ``norm``, ``qkv``, ``proj_out``)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, legacy_order: bool = True) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} is not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.legacy_order = legacy_order
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = _qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.legacy_order)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


def _default_channel_mult(image_size: int) -> tuple[float, ...]:
    table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
    if image_size not in table:
        raise ValueError(f"no default channel_mult for image_size {image_size}; give channel_mult, e.g. '1,2,2'")
    return table[image_size]


@dataclass
class UNetConfig:
    """guided-diffusion ``create_model`` keywords (the same names and defaults), plus channel counts.

    ``channel_mult`` and ``attention_resolutions`` accept guided-diffusion's strings ("1,2,2", "16,8";
    "" = the default for ``image_size``) or sequences. ``in_channels`` is 3 in the original; 1 is allowed
    for grayscale models. ``out_channels`` is derived: ``in_channels * (2 if learn_sigma else 1)``.
    """

    image_size: int = 256
    num_channels: int = 128
    num_res_blocks: int = 2
    channel_mult: Any = ""
    learn_sigma: bool = False
    class_cond: bool = False
    use_checkpoint: bool = False
    attention_resolutions: Any = "16"
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    dropout: float = 0.0
    resblock_updown: bool = False
    use_fp16: bool = False
    use_new_attention_order: bool = False
    in_channels: int = 3
    extra: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        """Build from ``create_model`` keywords; unknown keys raise a ``ValueError`` naming them."""
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown UNet config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        for key in ("channel_mult", "attention_resolutions"):
            if not isinstance(d[key], str):
                d[key] = ",".join(str(v) for v in d[key])
        return d

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    def mults(self) -> tuple[float, ...]:
        cm = self.channel_mult
        if isinstance(cm, str):
            return _default_channel_mult(self.image_size) if cm == "" else tuple(float(v) if "." in v else int(v) for v in cm.split(","))
        return tuple(cm)

    def size_multiple(self) -> int:
        """Image sides must be multiples of this, 2^(levels - 1): each level but the last halves the image,
        and the upsampling path must meet every skip connection at its size."""
        return 2 ** (len(self.mults()) - 1)

    def check_image_size(self, size: int, what: str = "image_size") -> None:
        """A DPSError naming the sizes that work when the network cannot take ``size`` x ``size`` images."""
        from ..errors import DPSError

        m = self.size_multiple()
        if size < m or size % m:
            fits = sorted({max(m, size // m * m), max(m, -(-size // m) * m)})
            raise DPSError(f"{what} {size} does not fit this UNet: its {len(self.mults())} levels (channel_mult "
                           f"{self.to_dict()['channel_mult'] or 'default'}) need a multiple of {m}; "
                           f"use e.g. {' or '.join(map(str, fits))}")

    def attention_ds(self) -> tuple[int, ...]:
        """Downsample rates with attention: ``image_size // r`` for each resolution r."""
        ar = self.attention_resolutions
        res: Sequence[int] = [int(v) for v in ar.split(",") if v.strip()] if isinstance(ar, str) else list(ar)
        return tuple(self.image_size // int(r) for r in res)


class UNetModel(nn.Module):
    """guided-diffusion's UNet; ``forward(x, timesteps, y=None)`` -> (B, out_channels, H, W).

    :param config: a :class:`UNetConfig` (or a dict of ``create_model`` keywords).

    ``use_checkpoint`` (from the config, settable at any time): when gradients are being recorded, every
    input, middle and output block keeps only its inputs and is recomputed in the backward pass
    (``torch.utils.checkpoint``, non-reentrant), for about one more forward pass of time; outputs and
    gradients are unchanged. ``lean`` (below) lowers what each block keeps and what its recomputation
    allocates (the peak memory of each combination: ``benchmarks/speed_cpu/``). What remains is every block's
    input (the skip connections need them anyway), their gradients and one block's recomputation.
    """

    def __init__(self, config: UNetConfig | dict) -> None:
        super().__init__()
        cfg = config if isinstance(config, UNetConfig) else UNetConfig.from_dict(config)
        cfg.check_image_size(cfg.image_size)
        self.config = cfg
        mc = cfg.num_channels
        ted = 4 * mc
        attention_ds = cfg.attention_ds()
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample
        legacy = not cfg.use_new_attention_order

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, cfg.num_head_channels, legacy)

        def res(ch: int, out: int, **kw: bool) -> ResBlock:
            return ResBlock(ch, ted, cfg.dropout, out, cfg.use_scale_shift_norm, **kw)

        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        if cfg.class_cond:
            self.label_emb = nn.Embedding(NUM_CLASSES, ted)

        mults = cfg.mults()
        ch = int(mults[0] * mc)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(mults):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in attention_ds:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                chans.append(ch)
            if level != len(mults) - 1:
                down = res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, True, ch)
                self.input_blocks.append(EmbedSequential(down))
                chans.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(res(ch, ch), attn(ch, cfg.num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(mults))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + chans.pop(), int(mc * mult))]
                ch = int(mc * mult)
                if ds in attention_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch, True, ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(int(mults[0] * mc), cfg.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.use_checkpoint = bool(cfg.use_checkpoint)
        self._resblocks = [m for m in self.modules() if isinstance(m, ResBlock)]
        self.lean = None

    @property
    def lean(self) -> Optional[bool]:
        """The lean VJP: when the weights are frozen and a graph to x is recorded (a DPS step), convolutions
        keep no input and each norm -> SiLU keeps only the norm's input (recomputing the rest in the backward
        pass), and a skip connection's gradient does not hold the concatenated one; the gradient is the same
        (tested to 1e-6 relative), in about half the memory. ``None`` (default): on for inputs of at least
        :data:`LEAN_MIN_PIXELS` pixels (128 x 128), where its per-layer Python overhead no longer shows
        (``benchmarks/lean_vjp/``); True / False: always / never."""
        return self._lean

    @lean.setter
    def lean(self, on: Optional[bool]) -> None:
        self._lean = None if on is None else bool(on)

    def lean_for(self, height: int, width: int) -> bool:
        """Whether the lean VJP runs for inputs of this size: the ``lean`` setting, or the default rule."""
        return self._lean if self._lean is not None else height * width >= LEAN_MIN_PIXELS

    def _set_lean(self, x: torch.Tensor) -> bool:
        """The blocks' setting for this input (read again by a checkpoint's recomputation); returns it."""
        on = self.lean_for(x.shape[-2], x.shape[-1])
        if self._resblocks and self._resblocks[0].lean != on:
            for block in self._resblocks:
                block.lean = on
        return on

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (y is not None) != self.config.class_cond:
            raise ValueError("pass class labels y exactly when the model is class-conditional (class_cond=True)")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        t_emb = timestep_embedding(timesteps, self.config.num_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(t_emb)
        if y is not None:
            emb = emb + self.label_emb(y)
        lean = self._set_lean(x)
        run = _checkpointed if self.use_checkpoint and torch.is_grad_enabled() else _call
        hs = []
        h = x
        for block in self.input_blocks:
            h = run(block, h, emb)
            hs.append(h)
        h = run(self.middle_block, h, emb)
        for block in self.output_blocks:
            # the concatenation happens inside the block's segment: a checkpoint then keeps h (the skip
            # tensor is kept anyway) instead of the twice-as-large concatenation
            h = run(partial(_with_skip, block), h, hs.pop(), emb)
        norm, _, conv = self.out
        return conv_lean(conv, norm_silu(norm, h.type(x.dtype), lean=lean), lean)


def _with_skip(block: nn.Module, h: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    lean = getattr(block[0], "lean", False) and torch.is_grad_enabled()
    return block(_ConcatOwnGrads.apply(h, skip) if lean else torch.cat([h, skip], dim=1), emb)


class _ConcatOwnGrads(torch.autograd.Function):
    """``torch.cat([h, skip], 1)`` whose backward gives each input a gradient of its own: autograd's cat
    hands out views of the concatenated gradient, so the skip connection's gradient, which waits until
    the backward pass reaches its input block, would keep both halves alive."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.split = h.shape[1]
        return torch.cat([h, skip], dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad[:, : ctx.split], grad[:, ctx.split :].clone()  # h's gradient is used at once


def _call(fn, *args: torch.Tensor) -> torch.Tensor:
    return fn(*args)


def _checkpointed(fn, *args: torch.Tensor) -> torch.Tensor:
    return checkpoint(fn, *args, use_reentrant=False)
