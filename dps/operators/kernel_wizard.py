"""The learned non-uniform blur that DPS uses for nonlinear deblurring: ``KernelWizard`` of
Tran et al., "Explore Image Deblurring via Encoded Blur Kernel Space" (CVPR 2021), our implementation.

Module names and layer order follow the original so that its state dict (``GOPRO_wVAE.pth``) loads
as is. Only ``adapt_kernel`` (the blur G(x, k)) is needed for DPS; the kernel extractor F is built so
that the full state dict matches.

Shapes: x (B, 3, H, W) in [0, 1]; features at H/4; the adapter U-Net goes 5 levels deeper, so the
kernel latent k has shape (B, kernel_dim, H/128, W/128) -- (B, 512, 2, 2) at 256 px.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .base import Operator

__all__ = ["KernelWizard", "NonUniformBlur", "load_kernel_wizard", "DEFAULT_OPTIONS"]

DEFAULT_OPTIONS: dict[str, Any] = {  # GOPRO_wVAE.pth
    "input_nc": 3, "nf": 64, "front_RBs": 10, "back_RBs": 20, "N_frames": 1, "kernel_dim": 512, "use_vae": True,
    "KernelExtractor": {"norm": "none", "use_sharp": True, "n_blocks": 4, "padding_type": "reflect",
                        "use_dropout": False},
    "Adapter": {"norm": "none", "use_dropout": False},
}


class ResidualBlockNoBN(nn.Module):
    """x + conv2(relu(conv1(x)))."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class ResnetBlock(nn.Module):
    """x + [pad, conv, norm, relu, pad, conv, norm](x), without bias when norm is 'none'."""

    def __init__(self, dim: int, padding_type: str) -> None:
        super().__init__()
        pads = {"reflect": nn.ReflectionPad2d, "replicate": nn.ReplicationPad2d}
        if padding_type not in pads:
            raise ValueError(f"unsupported padding_type {padding_type!r}")
        self.conv_block = nn.Sequential(
            pads[padding_type](1), nn.Conv2d(dim, dim, 3, bias=False), nn.Identity(), nn.ReLU(True),
            pads[padding_type](1), nn.Conv2d(dim, dim, 3, bias=False), nn.Identity(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class KernelExtractor(nn.Module):
    """F(sharp, blur) -> kernel latent (mean, log-variance with the VAE); present for state-dict parity."""

    def __init__(self, opt: dict[str, Any]) -> None:
        super().__init__()
        nf, kdim = opt["nf"], opt["kernel_dim"]
        ke = opt["KernelExtractor"]
        self.kernel_dim, self.use_vae = kdim, opt["use_vae"]
        in_nc = nf * 2 if ke["use_sharp"] else nf
        out_nc = kdim * 2 if self.use_vae else kdim
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_nc, nf, 7, bias=False), nn.Identity(), nn.ReLU(True)]
        for i in range(5):
            inc, ouc = min(nf * 2**i, out_nc), min(nf * 2 ** (i + 1), out_nc)
            layers += [nn.Conv2d(inc, ouc, 3, stride=2, padding=1, bias=False), nn.Identity(), nn.ReLU(True)]
        layers += [ResnetBlock(out_nc, ke["padding_type"]) for _ in range(ke["n_blocks"])]
        self.model = nn.Sequential(*layers)

    def forward(self, sharp: torch.Tensor, blur: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(torch.cat((sharp, blur), dim=1))
        if self.use_vae:
            return out[:, : self.kernel_dim], out[:, self.kernel_dim:]
        return out, torch.zeros_like(out)


class UnetSkipBlock(nn.Module):
    """One level of the adapter U-Net; the innermost level concatenates the kernel latent k."""

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: Optional[int] = None,
                 submodule: Optional["UnetSkipBlock"] = None, outermost: bool = False, innermost: bool = False) -> None:
        super().__init__()
        self.outermost, self.innermost = outermost, innermost
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=False)
        if outermost:
            self.down = nn.Sequential(downconv)
            self.up = nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1), nn.Tanh())
        elif innermost:
            self.down = nn.Sequential(nn.LeakyReLU(0.2, True), downconv)
            self.up = nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1, bias=False),
                                    nn.Identity())
        else:
            self.down = nn.Sequential(nn.LeakyReLU(0.2, True), downconv, nn.Identity())
            self.up = nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1, bias=False),
                                    nn.Identity())
        self.submodule = submodule

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.up(self.submodule(self.down(x), k))
        if self.innermost:
            return torch.cat((self.up(torch.cat((self.down(x), k), dim=1)), x), dim=1)
        return torch.cat((self.up(self.submodule(self.down(x), k)), x), dim=1)


class KernelAdapter(nn.Module):
    """G's U-Net: features (B, nf, H/4, W/4) and k -> features of the same shape."""

    def __init__(self, opt: dict[str, Any]) -> None:
        super().__init__()
        nf = opt["nf"]
        block = UnetSkipBlock(nf * 8, nf * 8, innermost=True)
        block = UnetSkipBlock(nf * 4, nf * 8, submodule=block)
        block = UnetSkipBlock(nf * 2, nf * 4, submodule=block)
        block = UnetSkipBlock(nf, nf * 2, submodule=block)
        self.model = UnetSkipBlock(nf, nf, input_nc=nf, submodule=block, outermost=True)

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self.model(x, k)


class KernelWizard(nn.Module):
    """Tran et al.'s blur model. ``adapt_kernel(x, k)`` blurs x in [0, 1] with the encoded kernel k."""

    def __init__(self, opt: dict[str, Any] = DEFAULT_OPTIONS) -> None:
        super().__init__()
        if opt["Adapter"]["norm"] != "none" or opt["KernelExtractor"]["norm"] != "none":
            raise ValueError("only norm 'none' is supported (the option of the published GOPRO_wVAE weights)")
        if opt["nf"] * 8 != opt["kernel_dim"]:
            raise ValueError("KernelWizard needs kernel_dim == 8 * nf (the innermost U-Net width)")
        self.opt = opt
        nf, nc = opt["nf"], opt["input_nc"]
        lrelu = nn.LeakyReLU(0.1)
        fe: list[nn.Module] = [nn.Conv2d(nc, nf, 3, 1, 1), lrelu, nn.Conv2d(nf, nf, 3, 2, 1), lrelu,
                               nn.Conv2d(nf, nf, 3, 2, 1), lrelu]
        fe += [ResidualBlockNoBN(nf) for _ in range(opt["front_RBs"])]
        self.feature_extractor = nn.Sequential(*fe)
        self.kernel_extractor = KernelExtractor(opt)
        self.adapter = KernelAdapter(opt)
        rt: list[nn.Module] = [ResidualBlockNoBN(nf) for _ in range(opt["back_RBs"])]
        rt += [nn.Conv2d(nf, nf * 4, 3, 1, 1), nn.PixelShuffle(2), lrelu, nn.Conv2d(nf, 64 * 4, 3, 1, 1),
               nn.PixelShuffle(2), lrelu, nn.Conv2d(64, 64, 3, 1, 1), lrelu, nn.Conv2d(64, nc, 3, 1, 1)]
        self.recon_trunk = nn.Sequential(*rt)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(kernel_dim, H/128, W/128): the shape of k for an H x W image."""
        if height % 128 or width % 128:
            raise ValueError(f"KernelWizard needs image sides divisible by 128, got {height}x{width}")
        return self.opt["kernel_dim"], height // 128, width // 128

    def adapt_kernel(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """G(x, k) = x + recon(adapter(features(x), k)); the blurred image, not clamped."""
        return x + self.recon_trunk(self.adapter(self.feature_extractor(x), k))

    def forward(self, sharp: torch.Tensor, blur: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kernel_extractor(self.feature_extractor(sharp), self.feature_extractor(blur))


def _describe_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {own[k]}" for k in set(own) & set(state)
                    if tuple(state[k].shape) != own[k])
    parts = [f"{name} ({len(v)}): {', '.join(v[:8])}{' ...' if len(v) > 8 else ''}"
             for name, v in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if v]
    return "; ".join(parts)


def load_kernel_wizard(path: str | Path, options: dict[str, Any] | str | Path | None = None) -> KernelWizard:
    """Load a KernelWizard state dict (e.g. ``GOPRO_wVAE.pth``) with ``weights_only=True``.

    :param options: the network options (dict or JSON file); default: those of GOPRO_wVAE.
    :raises ValueError: listing missing, unexpected and mis-shaped keys if the file does not fit.
    """
    if isinstance(options, (str, Path)):
        options = json.loads(Path(options).read_text())
    model = KernelWizard(options or DEFAULT_OPTIONS)
    from ..io import load_torch_file

    state = load_torch_file(path, "KernelWizard weights")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    mismatch = _describe_mismatch(model, state)
    if mismatch:
        raise ValueError(f"{path} does not fit KernelWizard({options or 'GOPRO_wVAE options'}): {mismatch}")
    model.load_state_dict(state)
    return model.eval()


class NonUniformBlur(Operator):
    """y = G(x, k): the paper's nonlinear deblurring forward model with a fixed kernel latent k.

    k ~ N(0, 1.2^2 I) is drawn once from ``generator`` and kept (the authors' code draws a new k at every
    call, so the measurement model changes during sampling). ``clamp=True`` clips y to [0, 1] as the
    authors do (which zeroes the gradient where it clips); the default leaves it unclipped.
    """

    name = "nonuniform_blur"

    def __init__(self, model: KernelWizard, in_shape: tuple[int, int, int] = (3, 256, 256),
                 latent_std: float = 1.2, clamp: bool = False, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        from ..errors import check_float

        latent_std = check_float(latent_std, "latent_std", 0.0, lo_open=True)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        shape = model.latent_shape(in_shape[1], in_shape[2])
        self.register_buffer("latent", latent_std * torch.randn(1, *shape, generator=generator))
        self.clamp = clamp
        self.config = {"in_shape": list(in_shape), "latent_std": latent_std, "clamp": clamp}

    @classmethod
    def from_saved(cls, config, state, kernel_wizard: Optional[KernelWizard] = None, **resources):
        if kernel_wizard is None:
            from ..errors import DPSError

            raise DPSError("this operator is a KernelWizard blur: pass kernel_wizard=load_kernel_wizard(PATH) "
                           "(on the command line: --kernel-wizard GOPRO_wVAE.pth)")
        return cls(kernel_wizard, tuple(config["in_shape"]), config["latent_std"], config["clamp"])

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        k = self.latent.to(x.dtype).expand(x.shape[0], *self.latent.shape[1:])
        y = self.model.to(x.dtype).adapt_kernel(x, k)
        return y.clamp(0, 1) if self.clamp else y
