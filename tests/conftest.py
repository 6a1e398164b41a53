"""Shared fixtures: a tiny random 1 x 32 x 32 UNet saved as a dps safetensors file (pipeline tests only)."""
from __future__ import annotations

import pytest
import torch

#: create_model keywords of the tiny test network (no attention, two levels).
TINY = dict(image_size=32, in_channels=1, num_channels=32, channel_mult="1,2", num_res_blocks=1,
            attention_resolutions="", num_heads=1, learn_sigma=False)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from dps.models.loading import save_unet_safetensors
    from dps.models.unet import UNetModel

    torch.manual_seed(0)
    net = UNetModel(TINY)
    for p in net.parameters():  # non-zero everywhere (the output layers start at zero)
        torch.nn.init.normal_(p, std=0.02)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_unet_safetensors(path, net)
    return path
