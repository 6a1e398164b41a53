"""KernelWizard loads the real GOPRO_wVAE state dict layout and reproduces the original network's outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dps.operators.kernel_wizard import KernelWizard, load_kernel_wizard

from conftest import REFERENCE as REF, reference_tensors


def test_key_and_shape_parity_with_gopro_manifest() -> None:
    manifest = json.loads((REF / "bkse_gopro_wvae_manifest.json").read_text())
    with torch.device("meta"):
        model = KernelWizard(manifest["options"])
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == manifest["state_dict_shapes"]
    assert sum(v.numel() for v in model.state_dict().values()) == manifest["num_parameters"]


def test_numerical_parity_with_original_code(reference_pt) -> None:
    options = json.loads((REF / "small_kernel_wizard_options.json").read_text())
    model = load_kernel_wizard(reference_pt["small_kernel_wizard"], options)
    io = reference_tensors("small_kernel_wizard_io")
    with torch.no_grad():
        out = model.adapt_kernel(io["x"], io["kernel"])
    assert model.latent_shape(128, 128) == tuple(io["kernel"].shape[1:])
    torch.testing.assert_close(out, io["output"], rtol=0, atol=1e-5)


def test_mismatched_state_dict_is_an_error(tmp_path: Path) -> None:
    options = json.loads((REF / "small_kernel_wizard_options.json").read_text())
    state = reference_tensors("small_kernel_wizard")
    state.pop("recon_trunk.0.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    state["adapter.model.up.1.bias"] = torch.zeros(5)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        load_kernel_wizard(tmp_path / "bad.pt", options)
    msg = str(err.value)
    assert "missing (1): recon_trunk.0.conv1.weight" in msg
    assert "unexpected (1): extra.weight" in msg
    assert "mis-shaped (1): adapter.model.up.1.bias" in msg
