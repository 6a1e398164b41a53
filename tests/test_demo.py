"""`dps demo`, `dps sample` and `dps train` end to end, on a tiny network (pipeline checks, not quality)."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from dps.cli import main
from conftest import TINY

@pytest.fixture(scope="module")
def tiny_model(tiny_model_path):
    return tiny_model_path


def test_demo_writes_every_task_and_resumes(tmp_path, tiny_model):
    from dps.runs.demo import DEMO_VARIANTS, run_demo
    from dps.errors import DPSError

    names = [v.name for v in DEMO_VARIANTS]
    out = tmp_path / "demo"
    report = run_demo(out, model=str(tiny_model), n=2, samples=2, steps=3, progress=False)
    assert set(report["tasks"]) == set(names)
    assert (out / "figure.png").stat().st_size > 0
    md = (out / "metrics.md").read_text()
    assert all(name in md for name in names)
    saved = json.loads((out / "metrics.json").read_text())
    for name, row in saved["tasks"].items():
        assert 0 <= row["classifier_acc"] <= 1 and row["ssim"] <= 1 and row["psnr"] > 0, name
    res = torch.load(out / "tasks" / "super_resolution" / "images" / "heldout001.pt", weights_only=True)
    assert res["samples"].shape == (2, 1, 32, 32) and res["y"].shape == (1, 8, 8)
    assert res["samples"].min() >= 0 and res["samples"].max() <= 1
    # a rerun with the same settings reuses finished images; other settings are refused, nothing is touched
    files = lambda: {p: p.stat().st_mtime_ns for p in (out / "tasks").rglob("*.pt")}  # noqa: E731
    stamp = files()
    again = run_demo(out, model=str(tiny_model), n=2, samples=2, steps=3, progress=False)
    assert files() == stamp and len(stamp) == 2 * len(names) + len(names)  # images and operators
    assert again["tasks"] == {k: {**v, "seconds": again["tasks"][k]["seconds"]} for k, v in report["tasks"].items()}
    with pytest.raises(DPSError, match="other settings"):
        run_demo(out, model=str(tiny_model), n=2, samples=2, steps=4, tasks=["inpainting_box"], progress=False)
    assert files() == stamp


def test_demo_rejects_unknown_task(tmp_path, tiny_model):
    result = CliRunner().invoke(main, ["demo", "--model", str(tiny_model), "--out", str(tmp_path),
                                       "--tasks", "deblur_everything"])
    assert result.exit_code != 0 and "unknown demo task" in result.output


def test_sample_cli_is_seeded(tmp_path, tiny_model):
    args = ["sample", "--model", str(tiny_model), "--n", "3", "--steps", "4"]
    r1 = CliRunner().invoke(main, args + ["--out", str(tmp_path / "a.png")])
    r2 = CliRunner().invoke(main, args + ["--out", str(tmp_path / "b.png"), "--seed", "0"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    a, b = torch.load(tmp_path / "a.pt", weights_only=True), torch.load(tmp_path / "b.pt", weights_only=True)
    assert a.shape == (3, 1, 32, 32) and torch.equal(a, b)
    assert (tmp_path / "a.png").stat().st_size > 0


def test_model_errors_are_clear(tmp_path):
    r = CliRunner().invoke(main, ["sample", "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x.png")])
    assert r.exit_code != 0 and "no model at" in r.output


def test_train_cli_and_resume(tmp_path):
    unet = json.dumps(TINY)
    base = ["train", "--out", str(tmp_path / "run"), "--unet", unet, "--batch-size", "4", "--checkpoint-every", "2"]
    r = CliRunner().invoke(main, base + ["--steps", "2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, base + ["--steps", "4"])
    assert r.exit_code == 0, r.output
    rows = (tmp_path / "run" / "loss.csv").read_text().splitlines()
    assert rows[0].startswith("step") and len(rows) <= 2  # log_every 10: no rows yet, header only
    from dps.models.loading import load_model

    assert load_model(tmp_path / "run" / "model.safetensors").metadata["train_steps"] == "4"
    r = CliRunner().invoke(main, base + ["--steps", "4", "--lr", "1e-3"])
    assert r.exit_code == 1 and "other settings (changed: lr)" in r.output, r.output


def test_demo_and_example_under_torchrun(tmp_path):
    """`torchrun --nproc_per_node 2 -m dps demo|example` (gloo on the CPU): the processes share the images and rank 0
    writes the figure and the metrics."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dps"]
    for args, folder in ((["demo", "--tasks", "super_resolution", "--num-images", "4", "--steps", "2"], "demo"),
                         (["example", "--steps", "3", "--samples", "2"], "example")):
        r = subprocess.run([*run, *args, "--out", str(tmp_path / folder)], env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert (tmp_path / folder / "figure.png").exists() and (tmp_path / folder / "metrics.json").exists()
    assert len(list((tmp_path / "demo" / "tasks" / "super_resolution" / "images").glob("*.pt"))) == 4


def test_example_figure_draws_every_task(tmp_path):
    """Each of the example's tasks has its own ground truth; the figure has a row for every one of them."""
    from PIL import Image

    from dps.runs.example import EXAMPLE_VARIANTS, run_example

    run_example(tmp_path, steps=3, samples=2, progress=False)
    record = json.loads((tmp_path / "example.json").read_text())
    assert [t["images"] for t in record["tasks"]] == [[v.name] for v in EXAMPLE_VARIANTS]
    one_task = Image.open(tmp_path / "figure.png").size[1] / len(EXAMPLE_VARIANTS)
    from dps.runs.figures import gallery_figure
    from dps.runs.layout import GalleryLayout

    record["tasks"] = record["tasks"][:1]
    (tmp_path / "example.json").write_text(json.dumps(record))
    single = gallery_figure(GalleryLayout(tmp_path, "example.json"), tmp_path / "one.png")
    assert Image.open(single).size[1] < 2 * one_task  # the full figure is about 8 rows high
