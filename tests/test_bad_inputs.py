"""Bad input of every kind, tried as a user would: one table, one row per case.

Each case builds its files in a fresh folder, runs one `dps` command (in-process, through click) and
states the exit code, a fragment of the one-line message and the files that must be left untouched.
Every failure must be a one-line ``Error: ...`` (never a traceback, never advice to turn off safe loading).
Below the table: image decoding at full precision, the API's validation, a concurrency test and a
kill-and-resume test (real processes).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dps.cli import main
from dps.images import save_image


@pytest.fixture(scope="module")
def digits():
    from dps.data.digits import digits_split

    x, _ = digits_split("held_out")
    return x[:3]


@dataclass
class Case:
    """args: the command line, with {d} the case's folder and {model} the tiny model; setup(d, ctx) makes the
    files; untouched: paths (relative to d) whose bytes must not change."""

    id: str
    args: str
    code: int
    message: str
    setup: Callable[[Path, dict], None] = lambda d, ctx: None
    untouched: tuple[str, ...] = ()
    after: Callable[[Path], None] = field(default=lambda d: None)


# ------------------------------------------------------------------------------------------------ set-ups
def _good_images(d: Path, ctx: dict, n: int = 2) -> None:
    (d / "in").mkdir(exist_ok=True)
    for i in range(n):
        save_image(ctx["digits"][i], d / "in" / f"good{i}.png")


def _truncated_png(d, ctx):
    _good_images(d, ctx)
    data = (d / "in" / "good0.png").read_bytes()
    (d / "in" / "cut.png").write_bytes(data[: len(data) // 2])


def _text_as_png(d, ctx):
    _good_images(d, ctx)
    (d / "in" / "notes.png").write_text("this is not an image\n")


def _one_image(d, ctx):
    _good_images(d, ctx, 1)


def _solve_run(d, ctx, task="inpainting_random", extra=()):
    _good_images(d, ctx, 1)
    r = CliRunner().invoke(main, ["solve", "--task", task, "--input", str(d / "in"), "--model", ctx["model"],
                                  "--steps", "2", "--out", str(d / "run"), *extra])
    assert r.exit_code == 0, r.output


def _measurement(d, ctx, tensor):
    _solve_run(d, ctx)
    torch.save(tensor, d / "y.pt")


def _empty(name):
    return lambda d, ctx: (d / name).write_bytes(b"")


def _random_bytes(name):
    return lambda d, ctx: (d / name).write_bytes(os.urandom(4096))


class _Gadget:  # a pickled object: weights_only loading must refuse it
    pass


def _pickled_object(name):
    return lambda d, ctx: torch.save({"model": _Gadget()}, d / name)


def _text(name, content):
    return lambda d, ctx: (d / name).write_text(content)


def _task_file(body):
    def setup(d, ctx):
        _one_image(d, ctx)
        (d / "task.yaml").write_text(body)

    return setup


def _bench_run(d, ctx):
    r = CliRunner().invoke(main, ["bench", "images", "--methods", "dps", "--tasks", "super_resolution", "--n", "1",
                                  "--steps", "2", "--model", ctx["model"], "--out", str(d / "bench")])
    assert r.exit_code == 0, r.output


def _live_lock(d, ctx):
    import socket

    _one_image(d, ctx)
    (d / "run").mkdir()
    (d / "run" / ".lock").write_text(f"{socket.gethostname()} {os.getpid()}")  # this test process: alive


def _trained_4(d, ctx):
    from conftest import TINY

    r = CliRunner().invoke(main, ["train", "--out", str(d / "train"), "--unet", json.dumps(TINY), "--steps", "4",
                                  "--batch-size", "2", "--checkpoint-every", "2"])
    assert r.exit_code == 0, r.output


def _truncated_state(d, ctx):
    from conftest import TINY

    r = CliRunner().invoke(main, ["train", "--out", str(d / "train"), "--unet", json.dumps(TINY), "--steps", "2",
                                  "--batch-size", "2", "--checkpoint-every", "2"])
    assert r.exit_code == 0, r.output
    state = d / "train" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:1000])


def _scheduler_folder(scheduler: dict):
    """A diffusers-looking folder (UNet config and scheduler config; no weights: the scheduler is refused first)."""
    def setup(d, ctx):
        (d / "m" / "unet").mkdir(parents=True)
        (d / "m" / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 32}))
        (d / "m" / "scheduler").mkdir()
        (d / "m" / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return setup


def _mismatched_checkpoint(d, ctx):
    from conftest import TINY

    from dps.models.unet import UNetModel

    sd = UNetModel({**TINY, "num_channels": 64}).state_dict()  # another width than the config says
    torch.save(sd, d / "m.pt")
    (d / "c.json").write_text(json.dumps(TINY))


def _damaged_run_json(d, ctx):
    _one_image(d, ctx)
    (d / "run").mkdir()
    (d / "run" / "run.json").write_text('{"settings": {')


def _unfinished_run(d, ctx):
    """A run interrupted before its first image: run.json with its settings and no image."""
    _solve_run(d, ctx)
    for p in (d / "run" / "records").glob("*.json"):
        p.unlink()
    record = json.loads((d / "run" / "run.json").read_text())
    (d / "run" / "run.json").write_text(json.dumps({**record, "images": {}}))


def _absent(*paths):
    def after(d):
        for p in paths:
            assert not (d / p).exists(), f"{p} was created"
    return after


def _solved_good_ones(d):
    record = json.loads((d / "out" / "run.json").read_text())
    assert sorted(record["images"]) == ["good0", "good1"] and (d / "out" / "recon" / "good1.png").exists()


SOLVE = "solve --task inpainting_random --model {model} --steps 2"
CASES = [
    # images
    Case("truncated-png-among-good", SOLVE + " --input {d}/in --out {d}/out", 1, "cut.png cannot be decoded",
         _truncated_png, after=_solved_good_ones),
    Case("text-file-named-png", SOLVE + " --input {d}/in --out {d}/out", 1, "notes.png is not an image file",
         _text_as_png, after=_solved_good_ones),
    Case("no-such-input", SOLVE + " --input {d}/none.png --out {d}/out", 2, "does not exist"),
    # measurements and operators
    Case("empty-measurement", SOLVE + " --measurement {d}/y.pt --operator {d}/run/operator.pt --out {d}/out2", 1,
         "is empty", lambda d, ctx: (_solve_run(d, ctx), (d / "y.pt").write_bytes(b""))),
    Case("measurement-wrong-channels", SOLVE + " --measurement {d}/y.pt --operator {d}/run/operator.pt --out {d}/out2",
         1, "has shape (3, 32, 32)", lambda d, ctx: _measurement(d, ctx, torch.rand(3, 32, 32))),
    Case("two-measurements-in-one-file", SOLVE + " --measurement {d}/y.pt --operator {d}/run/operator.pt --out {d}/o2",
         1, "holds 2 measurements", lambda d, ctx: _measurement(d, ctx, torch.rand(2, 1, 32, 32))),
    Case("nan-measurement", SOLVE + " --measurement {d}/y.pt --operator {d}/run/operator.pt --out {d}/out2", 1,
         "NaN or infinite", lambda d, ctx: _measurement(d, ctx, torch.full((1, 32, 32), float("nan")))),
    Case("operator-of-another-task", "solve --task super_resolution --model {model} --steps 2 --measurement "
         "{d}/run/measurement/good0.pt --operator {d}/run/operator.pt --out {d}/out2", 1, "task's operator is",
         _solve_run),
    Case("measurement-of-a-random-operator-without-it", SOLVE + " --measurement {d}/run/measurement/good0.pt "
         "--out {d}/out2", 1, "pass --operator RUN/operator.pt", _solve_run, untouched=()),
    Case("pickled-object-as-operator", SOLVE + " --input {d}/in --operator {d}/op.pt --out {d}/out", 1,
         "refuses it", lambda d, ctx: (_one_image(d, ctx), _pickled_object("op.pt")(d, ctx))),
    # model files
    Case("empty-checkpoint", "sample --model {d}/m.pt --out {d}/s.png", 1, "is empty", _empty("m.pt")),
    Case("garbage-checkpoint", "sample --model {d}/m.pt --out {d}/s.png", 1, "truncated or not a PyTorch file",
         _random_bytes("m.pt")),
    Case("pickled-class-checkpoint", "sample --model {d}/m.pt --out {d}/s.png", 1, "weights_only=True",
         _pickled_object("m.pt")),
    Case("corrupt-safetensors", "sample --model {d}/m.safetensors --out {d}/s.png", 1,
         "truncated or not a safetensors file", _random_bytes("m.safetensors")),
    Case("empty-safetensors", "sample --model {d}/m.safetensors --out {d}/s.png", 1, "is empty",
         _empty("m.safetensors")),
    Case("folder-that-is-no-model", "sample --model {d} --out {d}/s.png", 1, "not a diffusers"),
    # task files
    Case("malformed-yaml", SOLVE.replace("inpainting_random", "{d}/task.yaml") + " --input {d}/in --out {d}/out", 1,
         "not valid YAML", _task_file("name: t\noperator: {name: super_resolution\nnoise: [\n")),
    Case("steps-twenty", "solve --task {d}/task.yaml --model {model} --input {d}/in --out {d}/out", 1,
         "steps must be an integer", _task_file("operator: {name: super_resolution}\nnoise: gaussian:0.05\n"
                                                "dps: {steps: twenty}\n")),
    Case("steps-20.5", "solve --task {d}/task.yaml --model {model} --input {d}/in --out {d}/out", 1,
         "steps must be an integer", _task_file("operator: {name: super_resolution}\nnoise: gaussian:0.05\n"
                                                "dps: {steps: 20.5}\n")),
    Case("factor-0", "solve --task {d}/task.yaml --model {model} --steps 2 --input {d}/in --out {d}/out", 1,
         "operator 'super_resolution': factor must be in [1", _task_file("operator: {name: super_resolution, factor: 0}\n"
                                                    "noise: gaussian:0.05\n")),
    Case("gaussian-std-0", "solve --task {d}/task.yaml --model {model} --steps 2 --input {d}/in --out {d}/out", 1,
         "kernel std must be > 0", _task_file("operator: {name: gaussian_blur, std: 0}\nnoise: gaussian:0.05\n")),
    Case("missing-1.5", "solve --task {d}/task.yaml --model {model} --steps 2 --input {d}/in --out {d}/out", 1,
         "task.yaml: operator 'inpainting_random': missing fraction must be <= 0.999",
         _task_file("operator: {name: inpainting_random, missing: 1.5}\nnoise: gaussian:0.05\n")),
    Case("oversampling-nan", "solve --task {d}/task.yaml --model {model} --steps 2 --input {d}/in --out {d}/out", 1,
         "oversampling ratio must be finite", _task_file("operator: {name: phase_retrieval, oversampling: .nan}\n"
                                                         "noise: gaussian:0.05\n")),
    Case("operator-param-typo", "solve --task {d}/task.yaml --model {model} --steps 2 --input {d}/in --out {d}/out", 1,
         "bad parameters for operator 'super_resolution'", _task_file("operator: {name: super_resolution, "
                                                                      "factr: 2}\nnoise: gaussian:0.05\n")),
    Case("task-file-a-list", "solve --task {d}/task.yaml --model {model} --input {d}/in --out {d}/out", 1,
         "must hold a mapping", _task_file("- a\n- b\n")),
    Case("task-file-without-step-size", "solve --task {d}/task.yaml --model {model} --input {d}/in --out {d}/out", 1,
         "sets no step size zeta'", _task_file("name: mine\noperator: {name: super_resolution}\n"
                                                "noise: gaussian:0.05\n")),
    Case("unknown-task-key", "solve --task {d}/task.yaml --model {model} --input {d}/in --out {d}/out", 1,
         "unknown task keys", _task_file("operator: {name: super_resolution}\nnoise: gaussian:0.05\nzeta: 1\n")),
    Case("clip-x0-reversed", "solve --task {d}/task.yaml --model {model} --input {d}/in --out {d}/out", 1,
         "low < high", _task_file("operator: {name: super_resolution}\nnoise: gaussian:0.05\n"
                                  "dps: {clip_x0: [1, -1]}\n")),
    # values
    Case("noise-not-a-number", SOLVE + " --noise gaussian:abc --input {d}/in --out {d}/out", 1, "is not a number",
         _one_image),
    Case("noise-negative", SOLVE + " --noise gaussian:-1 --input {d}/in --out {d}/out", 1, "must be >= 0",
         _one_image),
    Case("poisson-rate-nan", SOLVE + " --noise poisson:nan --input {d}/in --out {d}/out", 1, "must be finite",
         _one_image),
    Case("step-size-nan", SOLVE + " --step-size nan --input {d}/in --out {d}/out", 1, "--step-size (zeta') must be finite",
         _one_image),
    Case("step-size-1e9-diverges", SOLVE.replace("--steps 2", "--steps 20") + " --step-size 1e9 --input {d}/in "
         "--out {d}/out", 1, "step size zeta'=1000000000.0", _one_image),
    Case("steps-0", SOLVE.replace("--steps 2", "--steps 0") + " --input {d}/in --out {d}/out", 2, "--steps",
         _one_image),
    # run folders
    Case("rerun-other-seed", SOLVE + " --input {d}/in --out {d}/run --seed 5", 1, "other settings (changed: operator, seed)",
         _solve_run, untouched=("run/run.json", "run/operator.pt", "run/recon/good0.png")),
    Case("rerun-other-task", "solve --task super_resolution --model {model} --steps 2 --input {d}/in --out {d}/run", 1,
         "other settings", _solve_run, untouched=("run/run.json", "run/operator.pt")),
    Case("out-is-a-file", SOLVE + " --input {d}/in --out {d}/in/good0.png", 2, "good0.png", _one_image,
         untouched=("in/good0.png",)),
    Case("out-under-a-file", SOLVE + " --input {d}/in --out {d}/in/good0.png/sub", 1, "cannot create the output folder",
         _one_image, untouched=("in/good0.png",)),
    Case("folder-held-by-a-live-process", SOLVE + " --input {d}/in --out {d}/run", 1, "in use by another dps process",
         _live_lock, untouched=("run/.lock",)),
    Case("bench-rerun-other-steps", "bench images --methods dps --tasks super_resolution --n 1 --steps 3 "
         "--model {model} --out {d}/bench", 1, "other settings (changed: steps, tasks; tasks: super_resolution changed", _bench_run,
         untouched=("bench/table.md", "bench/bench.json", "bench/results/dps/super_resolution/heldout000.json")),
    Case("bench-rerun-without-a-task", "bench images --methods dps --tasks inpainting_box --n 1 --steps 2 "
         "--model {model} --out {d}/bench", 1, "tasks: super_resolution removed (a rerun may add entries, not remove or "
         "change them)", _bench_run, untouched=("bench/table.md", "bench/bench.json")),
    Case("bench-rerun-other-seed", "bench images --methods dps --tasks super_resolution --n 1 --steps 2 --seed 3 "
         "--model {model} --out {d}/bench", 1, "other settings (changed: seed)", _bench_run,
         untouched=("bench/table.md", "bench/bench.json")),
    Case("bench-data-with-a-broken-file", "bench images --methods dps --tasks super_resolution --n 3 --steps 2 "
         "--model {model} --data {d}/in --out {d}/bench", 1, "1 image(s) could not be read", _truncated_png,
         after=lambda d: json.loads((d / "bench" / "table.json").read_text())["n"] == 2 or pytest.fail("table")),
    Case("bench-method-preset-without-a-name", "bench images --methods daps --method-preset daps --model {model} "
         "--out {d}/bench", 2, "expected METHOD=PRESET"),
    Case("bench-unknown-method", "bench images --methods magic --model {model} --out {d}/bench", 1,
         "unknown method 'magic'"),
    Case("bench-ddrm-on-poisson-is-na", "bench images --methods ddrm --tasks {d}/task.yaml --n 1 --model {model} "
         "--out {d}/bench", 0, "n/a", _task_file("name: sr_poisson\noperator: {name: super_resolution}\n"
                                                 "noise: poisson:1.0\ndps: {zeta: 1.0}\n")),
    Case("steps-past-the-schedule-nfe", SOLVE.replace(" --steps 2", "") + " --nfe 5000 --input {d}/in --out {d}/out", 1,
         "dps would run 5000 steps (--nfe 5000), but the model has 1000 diffusion steps: use 1 to 1000", _one_image,
         after=_absent("out")),
    Case("steps-past-the-schedule-task-file", "solve --task {d}/task.yaml --model {model} --input {d}/in --out {d}/out",
         1, "steps in the dps block of", lambda d, ctx: (_one_image(d, ctx), _task_file(
             "operator: {name: super_resolution}\nnoise: gaussian:0.05\ndps: {zeta: 1.0, steps: 5000}\n")(d, ctx)),
         after=_absent("out")),
    Case("noise-without-a-level", SOLVE + " --noise gaussian: --input {d}/in --out {d}/out", 1,
         "names no level; give one, e.g. gaussian:0.025", _one_image, after=_absent("out")),
    Case("preset-without-a-value-for-the-task", "solve --task phase_retrieval --preset paper-imagenet --model {model} "
         "--input {d}/in --out {d}/out", 1, "has no step size for task phase_retrieval", _one_image,
         after=_absent("out")),
    Case("damaged-run-json", SOLVE + " --input {d}/in --out {d}/run", 1, "run.json is damaged", _damaged_run_json,
         untouched=("run/run.json",)),
    Case("figure-of-a-run-without-a-finished-image", "figure {d}/run", 1, "no finished image yet", _unfinished_run),
    Case("figure-of-a-run-missing-a-result", "figure {d}/run", 1, "is missing: rerun the command",
         lambda d, ctx: (_solve_run(d, ctx), (d / "run" / "recon" / "good0.png").unlink())),
    # models
    Case("diffusers-karras-ve-scheduler", "sample --model {d}/m --out {d}/s.png", 1,
         "KarrasVeScheduler: a variance-exploding (VE) model with the deprecated Karras-VE pipeline's own input",
         _scheduler_folder({"_class_name": "KarrasVeScheduler"}), after=_absent("s.png")),
    Case("diffusers-edm-prediction-type", "sample --model {d}/m --out {d}/s.png", 1,
         "the EDM scheduler's prediction_type 'sample' is not supported; supported: epsilon, v_prediction",
         _scheduler_folder({"_class_name": "EDMEulerScheduler", "prediction_type": "sample"})),
    Case("grid-on-a-vp-only-method", "solve --task inpainting_random --model {model} --nfe 2 --method ddrm --grid edm "
         "--input {d}/in --out {d}/out", 1,
         "method ddrm runs on the VP model's own respaced steps only; leave out --grid", _one_image,
         after=_absent("out")),
    Case("steps-of-a-method-with-its-own-settings", SOLVE + " --method latent_dps --input {d}/in --out {d}/out", 1,
         "method latent_dps keeps its own settings (`dps methods`), not the task's steps and step rule: leave out "
         "--steps and --step-rule; --nfe sets its budget and --step-size its own zeta'",
         _one_image, after=_absent("out")),
    Case("pixel-method-on-a-latent-model", "solve --task inpainting_box --model digits-latent --nfe 2 --input {d}/in "
         "--out {d}/out", 1, "dps does not apply: it samples pixels and this model is a latent model; use latent_dps",
         _one_image, after=_absent("out")),
    Case("prompt-for-an-unconditional-model", "solve --task inpainting_box --model digits-latent --method psld --nfe 2 "
         "--prompt cat --input {d}/in --out {d}/out", 1, "this latent model is unconditional", _one_image,
         after=_absent("out")),
    Case("grid-range-outside-the-model", SOLVE + " --grid edm --sigma-min 500 --sigma-max 900 --input {d}/in "
         "--out {d}/out", 1, "leaves no range inside the noise levels the model knows", _one_image, after=_absent("out")),
    Case("vp-grid-with-a-range", SOLVE + " --grid vp --rho 3 --input {d}/in --out {d}/out", 1,
         "the vp grid is the model's own respaced steps: it takes no rho", _one_image, after=_absent("out")),
    Case("diffusers-unknown-scheduler", "sample --model {d}/m --out {d}/s.png", 1, "'MyScheduler' that this loader",
         _scheduler_folder({"_class_name": "MyScheduler"})),
    Case("diffusers-prediction-type", "sample --model {d}/m --out {d}/s.png", 1,
         "prediction_type 'flow' is not supported; supported: epsilon, sample, v_prediction",
         _scheduler_folder({"_class_name": "DDPMScheduler", "prediction_type": "flow"})),
    Case("diffusers-scheduler-not-json", "sample --model {d}/m --out {d}/s.png", 1, "scheduler_config.json is not valid JSON",
         lambda d, ctx: (_scheduler_folder({})(d, ctx), (d / "m" / "scheduler" / "scheduler_config.json").write_text("{"))),
    Case("checkpoint-that-does-not-fit", "sample --model {d}/m.pt --config {d}/c.json --out {d}/s.png", 1,
         "(109 in all) Pass the matching config", _mismatched_checkpoint, after=_absent("s.png")),
    Case("bench-speed-image-size-8", "bench speed --arch ffhq256 --image-size 8 --steps 1", 1,
         "--image-size for --arch ffhq256: 8 does not fit this UNet: its 6 levels (channel_mult 1,1,2,2,4,4) need a "
         "multiple of 32; use e.g. 32"),
    # training
    Case("train-image-size-33", "train --out {d}/t --image-size 33 --steps 1", 1,
         "--image-size 33 does not fit this UNet: its 3 levels (channel_mult 1,2,2) need a multiple of 4; use e.g. 32 "
         "or 36", after=_absent("t")),
    Case("train-missing-data-leaves-nothing", "train --out {d}/t --data {d}/nodata --steps 1", 1,
         "no such image file or folder", after=_absent("t")),
    Case("train-unet-not-json", "train --out {d}/t --unet '{{image_size: 32' --steps 1", 1,
         "--unet is not valid JSON", after=_absent("t")),
    Case("train-nan-loss", "train --out {d}/t --unet '{tiny}' --steps 3 --batch-size 2 --lr 1e30", 1,
         "the learning rate --lr 1e+30 is too large"),
    Case("train-fewer-steps-than-trained", "train --out {d}/train --unet '{tiny}' --steps 2 --batch-size 2 "
         "--checkpoint-every 2", 1, "holds a run trained to 4 steps; --steps 2 is fewer: pass --steps 4 or more",
         _trained_4, untouched=("train/train.json", "train/model.safetensors", "train/state.safetensors")),
    Case("train-other-settings", "train --out {d}/train --unet '{tiny}' --steps 4 --batch-size 2 --lr 1e-3", 1,
         "other settings (changed: lr)", _trained_4, untouched=("train/train.json", "train/model.safetensors")),
    Case("truncated-training-state", "train --out {d}/train --unet '{tiny}' --steps 4 --batch-size 2 "
         "--checkpoint-every 2", 1,
         "delete", _truncated_state, untouched=("train/state.safetensors",)),
    Case("train-data-folder-with-text", "train --out {d}/t --data {d}/data --steps 1", 1, "is not an image file",
         lambda d, ctx: ((d / "data").mkdir(), (d / "data" / "x.png").write_text("no"))),
    # benchmarks
    Case("gmm-method-that-does-not-apply", "bench gmm --methods hio --problems 1 --samples 10", 2, "do not apply"),
    Case("gmm-odd-dimension", "bench gmm --dim 3 --problems 1 --samples 10", 2, "even"),
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, tiny_model_path, digits):
    import shlex

    from conftest import TINY

    ctx = {"model": str(tiny_model_path), "digits": digits}
    case.setup(tmp_path, ctx)
    before = {p: _digest(tmp_path / p) for p in case.untouched}
    args = shlex.split(case.args.format(d=tmp_path, model=tiny_model_path, tiny=json.dumps(TINY)))
    r = CliRunner().invoke(main, args)
    out = r.output
    assert r.exit_code == case.code, out
    assert case.message in out, out
    assert "Traceback" not in out and "weights_only=False" not in out, out
    if case.code == 1:  # our errors: exactly one line, never a raw exception
        assert isinstance(r.exception, SystemExit), repr(r.exception)
        errors = [line for line in out.splitlines() if "Error:" in line]  # tqdm may share the line
        assert len(errors) == 1, out
    for p, digest in before.items():
        assert _digest(tmp_path / p) == digest, f"{p} was changed"
    case.after(tmp_path)


def test_missing_optional_package_is_named(tmp_path, monkeypatch):
    """A diffusers folder without diffusers installed: the error names the extra to install."""
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    r = CliRunner().invoke(main, ["sample", "--model", str(tmp_path), "--out", str(tmp_path / "s.png")])
    assert r.exit_code == 1 and "the optional package 'diffusers' is needed for this and is not installed: pip install " \
        "'dps[diffusers]'" in r.output, r.output


def test_sample_writes_png_only(tmp_path):
    """The sample grid is a PNG: another suffix is refused before any work (never PNG bytes in a .jpg)."""
    r = CliRunner().invoke(main, ["sample", "--n", "1", "--steps", "1", "--out", str(tmp_path / "s.jpg")])
    assert r.exit_code == 2 and "is not a .png file" in r.output and not list(tmp_path.iterdir()), r.output


def test_debug_flag_shows_the_traceback(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"")
    r = CliRunner().invoke(main, ["--debug", "sample", "--model", str(tmp_path / "m.pt")])
    assert r.exit_code == 1 and not isinstance(r.exception, SystemExit)  # the exception itself propagates
    for value, shown in (("0", False), ("", False), ("1", True)):
        r = CliRunner().invoke(main, ["sample", "--model", str(tmp_path / "m.pt")], env={"DPS_DEBUG": value})
        assert r.exit_code == 1 and isinstance(r.exception, SystemExit) != shown, (value, r.output)


# ------------------------------------------------------------------------------------------------ images
def _write_png16_rgb(path: Path, arr: np.ndarray) -> None:
    import png

    h, w, _ = arr.shape
    png.Writer(w, h, greyscale=False, bitdepth=16).write(open(path, "wb"), arr.reshape(h, w * 3).tolist())


def test_images_keep_full_precision_and_documented_channels(tmp_path):
    from dps.io import read_image

    ramp = (np.arange(32 * 32).reshape(32, 32) * 64 + 7).astype(np.uint16)  # uses all 16 bits
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    x = read_image(tmp_path / "g16.png", 1)
    torch.testing.assert_close(x[0].double(), torch.from_numpy(ramp / 65535.0), atol=1e-7, rtol=0)
    assert len(torch.unique(x)) == 1024  # an 8-bit path would leave at most 256 levels

    rgb = np.stack([ramp, ramp[::-1], ramp.T], -1)
    _write_png16_rgb(tmp_path / "c16.png", rgb)
    x = read_image(tmp_path / "c16.png", 3)
    torch.testing.assert_close(x.permute(1, 2, 0).double(), torch.from_numpy(rgb / 65535.0), atol=1e-7, rtol=0)
    grey = read_image(tmp_path / "c16.png", 1, convert_channels=True)
    luma = rgb @ np.array([0.299, 0.587, 0.114]) / 65535.0
    torch.testing.assert_close(grey[0].double(), torch.from_numpy(luma), atol=1e-6, rtol=0)

    pal = Image.fromarray((ramp >> 8).astype(np.uint8)).convert("P")
    pal.save(tmp_path / "p.png")
    x = read_image(tmp_path / "p.png", 3)
    expect = np.asarray(pal.convert("RGB"), dtype=np.float32) / 255
    torch.testing.assert_close(x.permute(1, 2, 0), torch.from_numpy(expect))

    la = np.stack([np.full((32, 32), 200, np.uint8), np.full((32, 32), 128, np.uint8)], -1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    x = read_image(tmp_path / "la.png", 1)  # alpha composited onto black: value * alpha
    torch.testing.assert_close(x, torch.full((1, 32, 32), 200 / 255 * 128 / 255))

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    rgba[:16, :, 3] = 0  # the top half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    x = read_image(tmp_path / "rgba.png", 3)
    assert float(x[0, :16].max()) == 0 and float(x[0, 16:].min()) == 1 and float(x[1:].max()) == 0

    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    x = read_image(tmp_path / "cmyk.jpg", 3)
    assert x.shape == (3, 32, 32) and float(x[0].mean()) > 0.9 and float(x[1:].mean()) < 0.1


def test_solve_uses_16_bit_ground_truth(tmp_path, tiny_model_path):
    """The ground truth of a 16-bit grey file is not clipped: its label keeps the mean of the source."""
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    r = CliRunner().invoke(main, ["solve", "--task", "inpainting_box", "--input", str(tmp_path / "g16.png"),
                                  "--model", str(tiny_model_path), "--steps", "2", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    label = np.asarray(Image.open(tmp_path / "o" / "label" / "g16.png"), dtype=np.float64) / 255
    assert abs(label.mean() - (ramp / 65535).mean()) < 0.01


# ------------------------------------------------------------------------------------------------ API
def test_values_are_validated_where_they_enter():
    from dps.errors import DPSError
    from dps.noise import GaussianNoise, PoissonNoise
    from dps.solvers.dps import DPSConfig

    for bad, key in [(dict(zeta=float("nan")), "finite"), (dict(zeta=-1), ">= 0"), (dict(steps=2.5), "integer"),
                     (dict(steps=True), "integer"), (dict(eta=2.0), "eta"), (dict(variance="big"), "variance"),
                     (dict(clip_x0=(1, 2, 3)), "pair")]:
        with pytest.raises(DPSError, match=key):
            DPSConfig(**bad)
    with pytest.raises(DPSError, match="finite"):
        GaussianNoise(float("inf"))
    with pytest.raises(DPSError, match="rate"):
        PoissonNoise(0.0)


def test_nan_measurement_is_not_blamed_on_the_step_size():
    from dps.bench.gmm import gmm_problem
    from dps.errors import DPSError
    from dps.noise import GaussianNoise
    from dps.solvers.dps import DPSConfig, dps_sample

    pb = gmm_problem(4, 2, 0)
    y = pb.y[None].clone()
    y[0, 0] = float("nan")
    with pytest.raises(DPSError, match="measurement holds 1 NaN") as err:
        dps_sample(pb.prior, lambda x: x @ pb.A.T, y, GaussianNoise(0.1), DPSConfig(steps=5))
    assert "step size" not in str(err.value)


# ------------------------------------------------------------------------------------------------ processes
def _spawn(args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "dps", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[1])


def _done(out: Path) -> set[str]:
    """The images whose record is written (the last file of an image)."""
    done = set()
    for path in (out / "records").glob("*.json"):
        try:
            done |= {path.stem} if json.loads(path.read_text()).get("done") else set()
        except json.JSONDecodeError:  # being written
            pass
    return done


def test_concurrent_run_is_refused_and_a_killed_run_resumes(tmp_path, tiny_model_path, digits):
    """A second process on a held folder is refused and changes nothing; after SIGKILL of the first, a rerun
    takes over the stale lock, removes stale temporary files, keeps finished images and completes the run
    with the same results as an uninterrupted run."""
    (tmp_path / "in").mkdir()
    for i in range(3):
        save_image(digits[i], tmp_path / "in" / f"d{i}.png")
    common = ["solve", "--task", "inpainting_random", "--input", tmp_path / "in", "--model", tiny_model_path,
              "--steps", "150", "--batch-size", "1"]
    out = tmp_path / "run"
    first = _spawn([*common, "--out", out])
    try:
        deadline = time.time() + 120
        while not _done(out) and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert _done(out) and first.poll() is None, "the first run should be part-way through"
        record_before = (out / "run.json").read_bytes()
        r = CliRunner().invoke(main, [*map(str, common), "--out", str(out)])
        assert r.exit_code == 1 and "in use by another dps process" in r.output, r.output
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    assert (out / ".lock").exists()  # left behind by the killed process
    finished = _done(out)
    assert 1 <= len(finished) < 3 and json.loads(record_before)["settings"] == json.loads(
        (out / "run.json").read_text())["settings"]
    (out / "recon" / ".d2.png.abc123.tmp").write_bytes(b"half-written")  # a stale temporary file
    stamps = {n: (out / "recon" / f"{n}.png").stat().st_mtime_ns for n in finished}
    again = _spawn([*common, "--out", out])  # every run with one thread, so results compare bit for bit
    assert again.wait(timeout=300) == 0, again.stdout.read().decode()
    assert _done(out) == {"d0", "d1", "d2"} and not (out / ".lock").exists()
    assert not list(out.rglob(".*.tmp"))
    assert {n: (out / "recon" / f"{n}.png").stat().st_mtime_ns for n in finished} == stamps  # not recomputed
    ref = tmp_path / "ref"
    reference = _spawn([*common, "--out", ref])
    assert reference.wait(timeout=300) == 0, reference.stdout.read().decode()
    for n in ("d0", "d1", "d2"):
        assert (out / "recon" / f"{n}.png").read_bytes() == (ref / "recon" / f"{n}.png").read_bytes(), n
    a, b = json.loads((out / "run.json").read_text()), json.loads((ref / "run.json").read_text())
    timeless = lambda images: {n: {k: v for k, v in e.items() if k != "seconds"} for n, e in images.items()}  # noqa: E731
    assert timeless(a["images"]) == timeless(b["images"])


def test_config_is_refused_where_it_does_not_apply(tmp_path):
    (tmp_path / "c.yaml").write_text("num_channels: 64\n")
    r = CliRunner().invoke(main, ["sample", "--model", "default", "--config", str(tmp_path / "c.yaml"),
                                  "--out", str(tmp_path / "s.png")])
    assert r.exit_code == 1 and "drop --config" in r.output, r.output
    import dps

    assert tuple(dps.load_model("default").event_shape) == (1, 32, 32)  # and the embedded model still loads


def test_two_runs_with_other_inputs_keep_every_record(tmp_path, tiny_model_path, digits):
    """Same settings, different inputs, one after the other: run.json keeps both runs' images."""
    for i in range(2):
        (tmp_path / f"in{i}").mkdir()
        save_image(digits[i], tmp_path / f"in{i}" / f"d{i}.png")
        r = CliRunner().invoke(main, ["solve", "--task", "super_resolution", "--input", str(tmp_path / f"in{i}"),
                                      "--model", str(tiny_model_path), "--steps", "2", "--out", str(tmp_path / "o")])
        assert r.exit_code == 0, r.output
    assert sorted(json.loads((tmp_path / "o" / "run.json").read_text())["images"]) == ["d0", "d1"]


def test_a_full_disk_is_a_one_line_error_not_a_bug(tmp_path, monkeypatch, tiny_model_path, digits):
    """A writer that reports a full disk in its own words (torch.save: "unexpected pos ...") is turned into the
    user's error (no space left), not an internal one; the run resumes once there is space."""
    import shutil

    from dps import utils

    save_image(digits[0], tmp_path / "d0.png")
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7552 vs 7440")))
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**6, 10**6, 0))
    args = ["solve", "--task", "super_resolution", "--model", str(tiny_model_path), "--steps", "2", "--input",
            str(tmp_path / "d0.png"), "--out", str(tmp_path / "run")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "no space left on the device" in r.output and "internal" not in r.output, r.output
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.undo()
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and (tmp_path / "run" / "recon" / "d0.png").exists(), r.output


def test_api_checks_the_measurement_and_the_sample_count():
    """The Python API runs the command line's checks: a measurement of another shape is refused (never
    broadcast), and so is a sample count below 1."""
    from dps.errors import DPSError
    from dps.models.loading import load_model
    from dps.noise import GaussianNoise
    from dps.solvers.dps import DPSConfig, dps_sample
    from dps.solvers.methods import reconstruct
    from dps.tasks import build_operator

    prior = load_model("default")
    op = build_operator({"name": "super_resolution", "factor": 4}, (1, 32, 32), 0)
    y = op(torch.rand(1, 1, 32, 32))
    rgb = y.expand(1, 3, 8, 8).clone()
    for call in (lambda y, n: dps_sample(prior, op, y, GaussianNoise(0.05), DPSConfig(steps=2), num_samples=n),
                 lambda y, n: reconstruct("dps", prior, op, y, GaussianNoise(0.05), DPSConfig(steps=2), num_samples=n)):
        with pytest.raises(DPSError, match=r"has shape \(1, 3, 8, 8\), but super_resolution produces \(B, 1, 8, 8\)"):
            call(rgb, 1)
        with pytest.raises(DPSError, match=r"add the batch dimension"):
            call(y[0], 1)
        with pytest.raises(DPSError, match="num_samples must be in"):
            call(y, 0)
        assert call(y.double(), 1) is not None  # a float64 measurement runs in the network's float32


def test_a_retrained_model_and_an_edited_bench_image_are_recomputed(tmp_path, tiny_model_path, digits):
    """Results record the model file's digest: replacing the model in place recomputes every result, and says
    so; in a bench, an image edited in place is recomputed and the table follows it."""
    import shutil

    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    model = tmp_path / "m.safetensors"
    shutil.copyfile(tiny_model_path, model)
    _good_images(tmp_path, {"digits": digits}, 2)
    args = ["solve", "--task", "super_resolution", "--model", str(model), "--steps", "2", "--input",
            str(tmp_path / "in"), "--out", str(tmp_path / "run")]
    assert CliRunner().invoke(main, args).exit_code == 0
    first = _digest(tmp_path / "run" / "recon" / "good0.png")
    run = tmp_path / "run"
    (run / "recon" / "good0.png").write_bytes(b"")  # damaged in place
    r = CliRunner().invoke(main, ["figure", str(run)])
    assert r.exit_code == 1 and "good0.png is damaged: rerun the command" in r.output, r.output
    (run / "records" / "good1.json").unlink()
    r = CliRunner().invoke(main, ["figure", str(run)])
    assert r.exit_code == 1 and "the record of good1" in r.output and "is missing" in r.output, r.output
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "1 record missing (good1)" in r.output and "1 result file changed (good0)" in r.output, \
        r.output
    assert _digest(run / "recon" / "good0.png") == first
    with safe_open(str(model), "pt") as f:
        meta = f.metadata()
    tensors = load_file(model)
    tensors = {k: v * 1.5 if v.is_floating_point() else v for k, v in tensors.items()}  # "retrained"
    save_file(tensors, str(model), metadata=meta)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "recomputing 2 image(s) made before: 2 model changed (good0, good1)" in r.output, r.output
    assert _digest(tmp_path / "run" / "recon" / "good0.png") != first
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "recomputing" not in r.output, r.output

    bench = ["bench", "images", "--methods", "dps", "--tasks", "super_resolution", "--steps", "2", "--model",
             str(model), "--data", str(tmp_path / "in"), "--out", str(tmp_path / "bench")]
    assert CliRunner().invoke(main, bench).exit_code == 0
    psnr = json.loads((tmp_path / "bench" / "table.json").read_text())["rows"][0]["psnr"]
    save_image(torch.zeros(1, 32, 32), tmp_path / "in" / "good1.png")
    r = CliRunner().invoke(main, bench)
    assert r.exit_code == 0 and "1 input changed (good1)" in r.output, r.output
    assert json.loads((tmp_path / "bench" / "table.json").read_text())["rows"][0]["psnr"] != psnr


def test_two_training_processes_on_one_folder(tmp_path):
    """dps train holds its folder: a second process is refused while the first trains, and changes nothing;
    the first finishes with its own step count in train.json and in the weights."""
    from conftest import TINY

    out = tmp_path / "t"
    common = ["train", "--out", out, "--unet", json.dumps(TINY), "--batch-size", "2", "--checkpoint-every", "5"]
    first = _spawn([*common, "--steps", "60"])
    try:
        deadline = time.time() + 120
        while not (out / "state.safetensors").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert (out / "state.safetensors").exists() and first.poll() is None, "the first run should be training"
        r = CliRunner().invoke(main, [*map(str, common), "--steps", "30"])
        assert r.exit_code == 1 and "in use by another dps process" in r.output, r.output
        assert first.wait(timeout=300) == 0, first.stdout.read().decode()
    finally:
        if first.poll() is None:
            first.kill()
    from dps.models.loading import load_model

    assert json.loads((out / "train.json").read_text())["steps"] == 60
    assert load_model(out / "model.safetensors").metadata["train_steps"] == "60"
    rows = (out / "loss.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and [int(r.split(",")[0]) for r in rows[1:]] == list(range(10, 61, 10))


def _can_mount_tmpfs() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                              capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a tmpfs here (needs unshare -rm)")
@pytest.mark.parametrize("command", ["solve", "bench", "train"])
def test_a_full_disk_on_a_small_tmpfs(command, tmp_path, tiny_model_path, digits):
    """A real full disk (a tmpfs too small for the run, in a private mount namespace): one line, exit 1, naming
    the folder; what was written stays; after the disk grows (remount) the same command finishes the run."""
    from conftest import TINY

    _good_images(tmp_path, {"digits": digits}, 3)
    disk = tmp_path / "disk"
    disk.mkdir()
    dps = f"OMP_NUM_THREADS=1 {sys.executable} -m dps"
    cmd = {"solve": f"solve --task super_resolution --model {tiny_model_path} --steps 2 --input {tmp_path}/in",
           "bench": f"bench images --methods dps --tasks super_resolution --steps 2 --model {tiny_model_path} "
                    f"--data {tmp_path}/in",
           "train": f"train --unet '{json.dumps(TINY)}' --steps 4 --batch-size 2 --checkpoint-every 2"}[command]
    size = {"solve": "40k", "bench": "40k", "train": "3m"}[command]
    script = (f"mount -t tmpfs -o size={size} tmpfs {disk} && cd {Path(__file__).resolve().parents[1]} && "
              f"{dps} {cmd} --out {disk}/run; echo RC=$?; ls -R {disk}/run | head -50; "
              f"mount -o remount,size=200m {disk} && {dps} {cmd} --out {disk}/run; echo RC=$?; ls {disk}/run")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    first, second = out.split("RC=", 2)[1:] if out.count("RC=") == 2 else pytest.fail(out)
    assert first.startswith("1") and "Error: no space left on the device" in out and "internal" not in out, out
    assert "Traceback" not in out, out
    assert second.startswith("0"), out
    finished = {"solve": "run.json", "bench": "table.md", "train": "model.safetensors"}[command]
    assert finished in second, out


@pytest.mark.calibrated_guard
def test_the_calibrated_guard_stops_speckle_and_passes_a_correct_run(tmp_path, digits):
    """With the embedded (trained) model and the product's limits: the task's own zeta' runs through, while
    zeta' = 100 (binary speckle that still fits y) stops with an error naming zeta', and writes no result."""
    _good_images(tmp_path, {"digits": digits}, 1)
    args = ["solve", "--task", "super_resolution", "--steps", "100", "--input", str(tmp_path / "in")]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "ok")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, [*args, "--step-size", "100", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 1 and "diverged" in r.output and "zeta'=100.0" in r.output, r.output
    from dps.solvers.divergence import ITERATE_LIMIT

    assert f"the guard stops at {ITERATE_LIMIT:g} times" in r.output and not (tmp_path / "bad" / "recon" / "good0.png").exists()


@pytest.mark.calibrated_guard
def test_a_diverged_new_run_leaves_nothing_that_blocks_the_fix(tmp_path, digits):
    """A new solve folder whose first image diverges is removed again (only what the run wrote), so the
    corrected step size runs in the same --out; MCG's advice names MCG."""
    _good_images(tmp_path, {"digits": digits}, 1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    args = ["solve", "--task", "super_resolution", "--steps", "100", "--input", str(tmp_path / "in"),
            "--out", str(tmp_path / "out")]
    r = CliRunner().invoke(main, [*args, "--step-size", "100"])
    assert r.exit_code == 1 and "step(s) into the run" in r.output, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["solve", "--task", "inpainting_random", "--method", "mcg", "--steps", "20",
                                  "--input", str(tmp_path / "in"), "--out", str(tmp_path / "mcg")])
    assert r.exit_code == 1 and "MCG's step size zeta'" in r.output and "DPS" not in r.output, r.output


def test_bench_rebuilds_deleted_pictures_and_its_figure_names_missing_ones(tmp_path, tiny_model_path, digits):
    _good_images(tmp_path, {"digits": digits}, 2)
    bench = ["bench", "images", "--methods", "dps", "--tasks", "super_resolution", "--steps", "2", "--model",
             str(tiny_model_path), "--data", str(tmp_path / "in"), "--out", str(tmp_path / "b")]
    r = CliRunner().invoke(main, bench + ["--n", "5"])
    assert r.exit_code == 0 and "--n 5: " in r.output and "holds 2 image(s); the table is over 2" in r.output, r.output
    b = tmp_path / "b"
    (b / "labels" / "good1.png").unlink()
    (b / "inputs" / "super_resolution" / "good0.png").unlink()
    r = CliRunner().invoke(main, bench)
    assert r.exit_code == 0 and "2 result file missing (good0, good1)" in r.output, r.output
    assert (b / "labels" / "good1.png").exists() and (b / "inputs" / "super_resolution" / "good0.png").exists()
    (b / "results" / "dps" / "super_resolution" / "good0.png").unlink()  # the first image's: never dropped silently
    r = CliRunner().invoke(main, ["figure", str(b)])
    assert r.exit_code == 1 and "good0.png is missing: rerun the command" in r.output, r.output
