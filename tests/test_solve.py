"""`dps solve`: run folders, reproducibility, batch independence, resume, measurement input, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dps.cli import main
from dps.images import save_image
from dps.tasks import TASK_NAMES, build_operator, load_task

@pytest.fixture(scope="module")
def model(tiny_model_path):
    return str(tiny_model_path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from dps.data.digits import digits_split

    folder = tmp_path_factory.mktemp("imgs")
    x, _ = digits_split("held_out")
    for i in range(3):
        save_image(x[i], folder / f"digit{i}.png")
    return folder


def _solve(*args):
    r = CliRunner().invoke(main, ["solve", *map(str, args)])
    assert r.exit_code == 0, r.output
    return r


def _png(path):
    return np.asarray(Image.open(path))


def test_presets_load_and_build_for_any_size():
    for name in TASK_NAMES:
        task = load_task(name)
        assert task.name == name and task.dps_config().steps == 1000
        op = build_operator(task.operator, (1, 32, 32), seed=0)
        assert op(torch.rand(2, 1, 32, 32)).shape[0] == 2
    assert load_task("phase_retrieval").select == "best-residual"


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_shipped_task_solves(tmp_path, model, images, name):
    """Every task of the catalogue (a YAML file in dps/task_presets is a task) runs end to end."""
    _solve("--task", name, "--input", images, "--model", model, "--steps", 2, "--out", tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["settings"]["task"]["name"] == name and len(record["images"]) == 3


def test_solve_folder_is_complete_and_reproducible(tmp_path, model, images):
    common = ["--task", "inpainting_random", "--input", images, "--model", model, "--steps", 3, "--samples", 2]
    _solve(*common, "--out", tmp_path / "a", "--batch-size", 3)
    a = tmp_path / "a"
    for sub in ("input", "label", "recon", "mean", "std"):
        assert sorted(p.name for p in (a / sub).glob("digit*.png"))[:1] == ["digit0.png"], sub
    record = json.loads((a / "run.json").read_text())
    assert record["settings"]["task"]["operator"]["name"] == "inpainting_random"
    assert record["method_settings"]["steps"] == 3 and set(record["images"]) == {"digit0", "digit1", "digit2"}
    assert record["execution"]["device"] == "cpu" and record["images"]["digit0"]["device"] == "cpu"
    samples = torch.load(a / "samples" / "digit1.pt", weights_only=True)
    assert samples.shape == (2, 1, 32, 32)
    # recon PNG = sample 0 clipped and rounded, never stretched
    assert np.array_equal(_png(a / "recon" / "digit1.png"),
                          (samples[0, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    # the run.json reproduces the run exactly; the batch size changes results only by float rounding
    # (each sample has its own generator; convolutions of other batch sizes round differently)
    _solve("--task", a / "run.json", "--input", images, "--out", tmp_path / "b", "--batch-size", 3)
    _solve("--task", a / "run.json", "--input", images, "--out", tmp_path / "c", "--batch-size", 1)
    for name in ("digit0", "digit1", "digit2"):
        ref = torch.load(a / "samples" / f"{name}.pt", weights_only=True)
        assert torch.equal(ref, torch.load(tmp_path / "b" / "samples" / f"{name}.pt", weights_only=True))
        torch.testing.assert_close(ref, torch.load(tmp_path / "c" / "samples" / f"{name}.pt", weights_only=True),
                                   atol=1e-4, rtol=0)
        assert torch.equal(torch.load(a / "measurement" / f"{name}.pt", weights_only=True),
                           torch.load(tmp_path / "c" / "measurement" / f"{name}.pt", weights_only=True))


def test_solve_resumes_after_interruption(tmp_path, model, images):
    common = ["--task", "super_resolution", "--input", images, "--model", model, "--steps", 3, "--out", tmp_path]
    _solve(*common)
    full = {p.name: p.read_bytes() for p in (tmp_path / "recon").iterdir()}
    # simulate an interruption before digit2 was finished (its record is written last)
    (tmp_path / "records" / "digit2.json").unlink()
    (tmp_path / "recon" / "digit2.png").unlink()
    stamp = (tmp_path / "recon" / "digit0.png").stat().st_mtime_ns
    _solve(*common)
    assert (tmp_path / "recon" / "digit0.png").stat().st_mtime_ns == stamp  # finished images skipped
    assert {p.name: p.read_bytes() for p in (tmp_path / "recon").iterdir()} == full
    r = CliRunner().invoke(main, ["solve", *map(str, common), "--seed", "1"])
    assert r.exit_code != 0 and "other settings" in r.output


def test_solve_recomputes_stale_and_missing_results(tmp_path, model, images):
    """A result file deleted by hand is rebuilt, and an input edited in place is solved again (its digest is
    in the image's record); the untouched images are skipped."""
    import shutil

    inputs = tmp_path / "in"
    shutil.copytree(images, inputs)
    common = ["--task", "super_resolution", "--input", inputs, "--model", model, "--steps", 2, "--out", tmp_path / "r"]
    _solve(*common)
    run = tmp_path / "r"
    before = json.loads((run / "run.json").read_text())["images"]["digit1"]
    stamp = (run / "recon" / "digit2.png").stat().st_mtime_ns
    (run / "input" / "digit0.png").unlink()
    save_image(torch.zeros(1, 32, 32), inputs / "digit1.png")  # edited in place
    _solve(*common)
    assert (run / "input" / "digit0.png").exists()
    after = json.loads((run / "run.json").read_text())["images"]["digit1"]
    assert _png(run / "label" / "digit1.png").max() == 0  # the edited image's ground truth, and its result
    assert after["inputs"]["input"] != before["inputs"]["input"] and after["psnr"] != before["psnr"]
    assert (run / "recon" / "digit2.png").stat().st_mtime_ns == stamp


def test_solve_from_measurements_and_operator(tmp_path, model, images):
    _solve("--task", "motion_blur", "--input", images, "--model", model, "--steps", 3, "--out", tmp_path / "a")
    a = tmp_path / "a"
    meas = sorted((a / "measurement").glob("*.pt"))
    args = ["--task", "motion_blur", "--model", model, "--steps", 3, "--out", tmp_path / "b",
            "--operator", a / "operator.pt"]
    for m in meas:
        args += ["--measurement", m]
    _solve(*args)
    for m in meas:
        assert np.array_equal(_png(a / "recon" / f"{m.stem}.png"), _png(tmp_path / "b" / "recon" / f"{m.stem}.png"))
    assert not (tmp_path / "b" / "label").exists()


def test_best_residual_selection(tmp_path, model, images):
    _solve("--task", "phase_retrieval", "--input", images, "--model", model, "--steps", 2, "--samples", 3,
           "--out", tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    for name, entry in record["images"].items():
        k = int(np.argmin(entry["residual"]))
        assert entry["chosen_sample"] == k
        assert np.array_equal(_png(tmp_path / "recon" / f"{name}.png"), _png(tmp_path / "recon" / f"{name}_{k}.png"))


def test_wrong_size_is_a_clear_error(tmp_path, model):
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(tmp_path / "big.png")
    r = CliRunner().invoke(main, ["solve", "--task", "super_resolution", "--input", str(tmp_path / "big.png"),
                                  "--model", model, "--steps", "2", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "48 x 40" in r.output and "--resize" in r.output
    _solve("--task", "super_resolution", "--input", tmp_path / "big.png", "--model", model, "--steps", 2,
           "--out", tmp_path / "o2", "--resize", "center-crop")
    assert _png(tmp_path / "o2" / "recon" / "big.png").shape == (32, 32)
    r = CliRunner().invoke(main, ["solve", "--task", "deblur_all", "--input", str(tmp_path / "big.png"),
                                  "--out", str(tmp_path / "o3")])
    assert r.exit_code != 0 and "unknown task" in r.output


def test_user_task_file_with_unknown_key_is_rejected(tmp_path):
    (tmp_path / "t.yaml").write_text("operator: {name: super_resolution}\nnoise: gaussian:0.05\nzeta: 1\n")
    with pytest.raises(ValueError, match="unknown task keys"):
        load_task(tmp_path / "t.yaml")
    (tmp_path / "t2.yaml").write_text("operator: {name: super_resolution, factr: 4}\nnoise: gaussian:0.05\n")
    with pytest.raises(ValueError, match="bad parameters"):
        build_operator(load_task(tmp_path / "t2.yaml").operator, (1, 32, 32), 0)


def test_wrong_channel_count_is_a_clear_error(tmp_path, model):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "rgb.png")
    r = CliRunner().invoke(main, ["solve", "--task", "inpainting_box", "--input", str(tmp_path / "rgb.png"),
                                  "--model", model, "--steps", "2", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "3 channel(s)" in r.output and "--convert-channels" in r.output
    _solve("--task", "inpainting_box", "--input", tmp_path / "rgb.png", "--model", model, "--steps", 2,
           "--out", tmp_path / "o2", "--convert-channels")


def test_progress_frames_and_figure(tmp_path, model, images):
    # zeta' 0.05 for the task's 1000 steps is 0.65 per step at 6 steps (sqrt(1000 / 6)): a small last step
    _solve("--task", "inpainting_box", "--input", images, "--model", model, "--steps", 6, "--samples", 2,
           "--step-size", 0.05, "--progress-frames", 3, "--out", tmp_path)
    frames = torch.load(tmp_path / "progress" / "digit0.pt", weights_only=True)
    assert frames.shape == (3, 1, 32, 32)
    # the last frame is x0_hat of the last step: the returned sample 0 before its last guidance step
    samples = torch.load(tmp_path / "samples" / "digit0.pt", weights_only=True)
    assert (frames[-1] - samples[0]).abs().mean() < 0.1 * (frames[0] - samples[0]).abs().mean()
    r = CliRunner().invoke(main, ["figure", str(tmp_path)])
    assert r.exit_code == 0, r.output
    fig = np.asarray(Image.open(tmp_path / "figure.png"))
    assert fig.shape[0] > 100 and fig.shape[1] > 300 and fig.std() > 10  # a drawn grid, not a blank canvas
    assert (tmp_path / "figure_progress.png").exists()
    r = CliRunner().invoke(main, ["figure", str(images)])
    assert r.exit_code != 0 and "not a run folder" in r.output


def test_solve_with_a_comparison_method(tmp_path, model, images):
    _solve("--task", "inpainting_random", "--method", "admm_tv", "--input", images, "--model", model,
           "--out", tmp_path / "a")
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["settings"]["method"] == "admm_tv" and len(record["images"]) == 3
    r = CliRunner().invoke(main, ["solve", "--task", "phase_retrieval", "--method", "admm_tv", "--input", str(images),
                                  "--model", model, "--out", str(tmp_path / "b")])
    assert r.exit_code != 0 and "linear operator" in r.output


def test_presets_on_the_command_line(tmp_path, model, images):
    """Without --preset the shipped tasks take paper-ffhq (and its Poisson values with Poisson noise);
    --preset authors also switches to the authors' operators; --step-size wins over a preset."""
    def record(*extra):
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        _solve("--input", images, "--model", model, "--steps", 2, "--out", out, *extra)
        return json.loads((out / "run.json").read_text())["settings"]["task"]

    assert record("--task", "super_resolution")["dps"]["zeta"] == 1.0
    assert record("--task", "super_resolution", "--noise", "poisson:1")["dps"]["zeta"] == 0.3
    authors = record("--task", "gaussian_blur", "--preset", "authors")
    assert authors["dps"]["zeta"] == 0.3 and authors["operator"]["truncate"] == 4.0
    pr = record("--task", "phase_retrieval", "--preset", "authors")
    assert pr["operator"]["convention"] == "authors" and pr["noise"] == "gaussian:0.05" and pr["dps"]["zeta"] == 0.5
    assert record("--task", "motion_blur", "--preset", "paper-imagenet", "--step-size", 2)["dps"]["zeta"] == 2.0
    r = CliRunner().invoke(main, ["solve", "--task", "phase_retrieval", "--preset", "paper-imagenet", "--input",
                                  str(images), "--model", model, "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "no step size for task phase_retrieval" in r.output


def test_solve_at_a_budget_of_network_evaluations(tmp_path, model, images):
    _solve("--task", "inpainting_random", "--method", "diffpir", "--nfe", 7, "--input", images, "--model", model,
           "--out", tmp_path / "a")
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["settings"]["nfe"] == 7 and record["method_settings"]["steps"] == 7
    r = CliRunner().invoke(main, ["solve", "--task", "inpainting_random", "--method", "admm_tv", "--nfe", "7",
                                  "--input", str(images), "--model", model, "--out", str(tmp_path / "b")])
    assert r.exit_code != 0 and "no --nfe budget" in r.output
    r = CliRunner().invoke(main, ["solve", "--task", "inpainting_random", "--nfe", "7", "--steps", "5",
                                  "--input", str(images), "--model", model, "--out", str(tmp_path / "c")])
    assert r.exit_code != 0 and "leave out --steps" in r.output


def test_run_json_reproduces_method_and_budget(tmp_path, model, images):
    """`--task RUN/run.json` reruns the recorded method at the recorded budget (not DPS), giving the same samples."""
    _solve("--task", "inpainting_random", "--method", "diffpir", "--nfe", 5, "--input", images, "--model", model,
           "--out", tmp_path / "a")
    _solve("--task", tmp_path / "a" / "run.json", "--input", images, "--out", tmp_path / "b")
    record = json.loads((tmp_path / "b" / "run.json").read_text())
    assert record["settings"]["method"] == "diffpir" and record["method_settings"]["steps"] == 5
    for name in ("digit0", "digit2"):
        assert (_png(tmp_path / "a" / "recon" / f"{name}.png") == _png(tmp_path / "b" / "recon" / f"{name}.png")).all()
    # a rerun into the same folder from its own run.json resumes it instead of refusing "other settings"
    _solve("--task", tmp_path / "a" / "run.json", "--input", images, "--out", tmp_path / "a")


def test_methods_without_a_step_size_run_tasks_without_one(tmp_path, model, images):
    """Random inpainting with Poisson noise has no preset zeta': DPS says so, PnP-ADMM (which uses none) runs."""
    args = ["--task", "inpainting_random", "--noise", "poisson:1.0", "--input", str(images), "--model", model]
    r = CliRunner().invoke(main, ["solve", *args, "--steps", "2", "--out", str(tmp_path / "dps")])
    assert r.exit_code == 1 and "sets no step size zeta'" in r.output
    _solve(*args, "--method", "pnp_admm", "--nfe", 2, "--out", tmp_path / "admm")
    assert len(list((tmp_path / "admm" / "recon").glob("*.png"))) == 3
    r = CliRunner().invoke(main, ["solve", *args, "--method", "ddrm", "--out", str(tmp_path / "ddrm")])
    assert r.exit_code == 1 and "ddrm does not apply" in r.output  # the method's reason, not the step size


def test_method_preset_sets_the_papers_configuration(tmp_path, model, images):
    """`--method-preset daps-100` runs DAPS with the paper's 50 levels x 2 ODE steps (recorded, and
    reused from run.json); an unknown preset, a method without presets and a preset with --nfe are one-line errors."""
    from dps.solvers.daps import DAPS_PRESETS

    args = ["--task", "inpainting_random", "--input", str(images), "--model", model]
    _solve(*args, "--method", "daps", "--method-preset", "daps-100", "--out", tmp_path / "a")
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    levels, ode_steps = DAPS_PRESETS["daps-100"]
    assert record["settings"]["method_preset"] == "daps-100"
    assert (record["method_settings"]["levels"], record["method_settings"]["ode_steps"]) == (levels, ode_steps)
    _solve("--task", tmp_path / "a" / "run.json", "--input", images, "--out", tmp_path / "b")
    assert json.loads((tmp_path / "b" / "run.json").read_text())["method_settings"] == record["method_settings"]
    for extra, message in ((["--method", "daps", "--method-preset", "daps-9k"], "no preset 'daps-9k'; its presets: daps-100"),
                           (["--method", "ddrm", "--method-preset", "daps-1k"], "method ddrm has no preset 'daps-1k'; it has none"),
                           (["--method", "daps", "--method-preset", "daps-1k", "--nfe", "5"], "leave out --nfe")):
        r = CliRunner().invoke(main, ["solve", *args, *extra, "--out", str(tmp_path / "x")])
        assert r.exit_code == 1 and message in r.output, r.output


def test_torchrun_two_processes_solve_a_folder_like_one(tmp_path, model, images):
    """`torchrun --nproc_per_node 2 -m dps solve ...` (gloo on the CPU): each process takes every other image, rank 0
    writes run.json, and every image comes out as the single process makes it."""
    import os
    import subprocess
    import sys

    args = ["solve", "--task", "inpainting_random", "--input", str(images), "--model", model, "--steps", "3",
            "--batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "dps", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                          "dps", *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "[rank 1]" in two.stderr  # the second process solved its share
    a = json.loads((tmp_path / "one" / "run.json").read_text())["images"]
    b = json.loads((tmp_path / "two" / "run.json").read_text())["images"]
    assert set(a) == set(b) == {"digit0", "digit1", "digit2"}
    for name in a:
        assert a[name]["residual"] == b[name]["residual"] and a[name]["psnr"] == b[name]["psnr"], name
        assert _png(tmp_path / "one" / "recon" / f"{name}.png").tobytes() == \
            _png(tmp_path / "two" / "recon" / f"{name}.png").tobytes()


def test_progress_frames_from_every_method_that_reports_progress(tmp_path, model, images):
    """Methods that report progress record x0_hat frames (DDRM now too) and dps figure titles them by the
    method; a method that reports none refuses --progress-frames before any folder is made."""
    from dps.solvers.methods import METHODS

    _solve("--task", "super_resolution", "--method", "ddrm", "--nfe", 4, "--progress-frames", 2, "--input", images,
           "--model", model, "--out", tmp_path / "ddrm")
    assert torch.load(tmp_path / "ddrm" / "progress" / "digit0.pt", weights_only=True).shape == (2, 1, 32, 32)
    assert METHODS["ddrm"].progress is not None and METHODS["hio"].progress is None
    r = CliRunner().invoke(main, ["solve", "--task", "super_resolution", "--method", "pnp_admm", "--progress-frames",
                                  "2", "--input", str(images), "--model", model, "--out", str(tmp_path / "admm")])
    assert r.exit_code == 1 and "reports no progress" in r.output and not (tmp_path / "admm").exists()
    from dps.runs.figures import method_title

    assert method_title("ddrm") == "DDRM" and method_title("dps") == "DPS"
