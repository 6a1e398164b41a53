"""Max abs difference of our UNet's forward(x, t) from the original code's output on a small ADM network
(small_adm; float32, and float64 against the float32 reference), and the manifest key/shape parity counts.

    python benchmarks/adm_parity/adm_parity.py [REFERENCE_DIR]    # default: tests/reference

The reference state dict is loaded as the published checkpoints are: written as a raw ``.pt`` file and
passed to ``load_model``.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from dps.models import UNetModel, load_model

ref = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "tests" / "reference"
io = load_file(ref / "small_adm_io.safetensors")
with tempfile.TemporaryDirectory() as tmp:
    torch.save(load_file(ref / "small_adm.safetensors"), Path(tmp) / "small_adm.pt")
    prior = load_model(Path(tmp) / "small_adm.pt", config=ref / "small_adm_config.json")
with torch.no_grad():
    d32 = (prior.network(io["x"], io["t"]) - io["output"]).abs().max().item()
    net64 = prior.network.double()
    d64 = (net64(io["x"].double(), io["t"]) - io["output"].double()).abs().max().item()
print(f"small_adm: max abs diff float32 {d32:.2e}, float64 vs float32 reference {d64:.2e}")
for name in ("ffhq_10m", "imagenet256"):
    m = json.loads((ref / f"{name}_manifest.json").read_text())
    with torch.device("meta"):
        net = UNetModel(m["config"])
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    n = sum(torch.Size(s).numel() for s in shapes.values())
    print(f"{name}: keys and shapes equal: {shapes == m['state_dict_shapes']}; {len(shapes)} tensors, {n:,} values")
