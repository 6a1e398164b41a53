"""`dps bench images`: per-image results, tables, resume after interruption, honest n/a columns."""
from __future__ import annotations

import json

import pytest

from dps.execution import Execution
from dps.models.loading import load_model, save_unet_safetensors
from dps.runs.bench import BenchSettings, run_bench
from dps.runs.spec import Overrides


def bench(methods, tasks, n, batch_size=8, method_presets=None, **overrides) -> BenchSettings:
    """Bench settings with command-line overrides (steps, nfe, samples, model, ...)."""
    return BenchSettings(methods=methods, tasks=tasks, n=n, batch_size=batch_size, overrides=Overrides(**overrides),
                         method_presets=method_presets or {})


def _quality_text(md: str) -> str:
    """A table without its compute section (seconds per image differ from run to run; NFE is checked apart)."""
    return md.split("### Compute")[0]


def _quality(path) -> str:
    return _quality_text(path.read_text())


@pytest.fixture(scope="module")
def prior(tiny_model_path):
    return load_model(tiny_model_path)


def test_bench_tables_and_resume(tmp_path, prior):
    settings = bench(methods=["dps"], tasks=["super_resolution", "inpainting_random"], n=3, steps=2,
                             batch_size=2)
    table = run_bench(settings, tmp_path, prior=prior, progress=False)
    md = (tmp_path / "table.md").read_text()
    assert "super_resolution PSNR" in md and "inpainting_random SSIM" in md and "digit acc." in md
    assert all(r["nfe"] == 2 for r in table["rows"])  # counted network evaluations: 2 DPS steps
    rows = {(r["method"], r["task"]): r for r in table["rows"]}
    assert set(rows) == {("dps", "super_resolution"), ("dps", "inpainting_random")}
    per = [json.loads(p.read_text()) for p in (tmp_path / "results" / "dps" / "super_resolution").glob("*.json")]
    assert len(per) == 3
    assert abs(rows[("dps", "super_resolution")]["psnr"] - sum(r["psnr"] for r in per) / 3) < 1e-9
    import importlib.util

    if importlib.util.find_spec("torchmetrics") is None:  # without the metrics extra: n/a, never invented
        assert rows[("dps", "super_resolution")]["fid"] is None and "n/a" in md
    # interrupt: forget one finished image; the rerun recomputes only it and gives the same table
    victim = tmp_path / "results" / "dps" / "inpainting_random" / "heldout001.json"
    victim.unlink()
    stamp = (tmp_path / "results" / "dps" / "super_resolution" / "heldout000.json").stat().st_mtime_ns
    run_bench(settings, tmp_path, prior=prior, progress=False)
    assert victim.exists()
    assert (tmp_path / "results" / "dps" / "super_resolution" / "heldout000.json").stat().st_mtime_ns == stamp
    assert _quality(tmp_path / "table.md") == _quality_text(md)


def test_bench_grows_to_more_images(tmp_path, prior):
    """A rerun with a larger --n keeps the finished images (their seeds depend on the index only) and adds the
    new ones, giving the table a run of that --n from scratch gives; a smaller --n is refused."""
    small = bench(methods=["dps"], tasks=["inpainting_random"], n=2, steps=2, batch_size=2)
    run_bench(small, tmp_path / "grown", prior=prior, progress=False)
    first = tmp_path / "grown" / "results" / "dps" / "inpainting_random" / "heldout000.json"
    stamp = first.stat().st_mtime_ns
    large = bench(methods=["dps"], tasks=["inpainting_random"], n=3, steps=2, batch_size=2)
    grown = run_bench(large, tmp_path / "grown", prior=prior, progress=False)
    assert first.stat().st_mtime_ns == stamp  # not recomputed
    assert json.loads((tmp_path / "grown" / "bench.json").read_text())["settings"]["images"][-1] == "heldout002"
    fresh = run_bench(large, tmp_path / "fresh", prior=prior, progress=False)
    assert grown["rows"][0]["n"] == 3 and grown["rows"][0]["psnr"] == pytest.approx(fresh["rows"][0]["psnr"], abs=1e-9)
    from dps.errors import DPSError

    with pytest.raises(DPSError, match="changed: images; images: the folder holds 3, this run names 2"):
        run_bench(small, tmp_path / "grown", prior=prior, progress=False)


def test_bench_method_preset(tmp_path, prior):
    """--method-preset daps=daps-100 runs DAPS with the paper's 50 levels x 2 ODE steps: the counted evaluations
    per sample are the preset's (about 100, not the default 1000), the table says which preset ran, and the folder
    is another run than a preset-free one."""
    from dps.errors import DPSError
    from dps.solvers.daps import DAPS_PRESETS

    settings = bench(methods=["daps"], tasks=["inpainting_random"], n=1, method_presets={"daps": "daps-100"})
    table = run_bench(settings, tmp_path / "a", prior=prior, progress=False)
    levels, ode_steps = DAPS_PRESETS["daps-100"]
    assert 0.9 * levels * ode_steps <= table["rows"][0]["nfe"] <= levels * ode_steps
    assert "method presets daps daps-100" in (tmp_path / "a" / "table.md").read_text()
    with pytest.raises(DPSError, match="changed: method_presets"):
        run_bench(bench(methods=["daps"], tasks=["inpainting_random"], n=1, steps=None), tmp_path / "a",
                  prior=prior, progress=False)
    for bad, message in (({"ddrm": "daps-1k"}, "not in --methods"), ({"daps": "daps-9k"}, "no preset 'daps-9k'")):
        with pytest.raises(DPSError, match=message):
            run_bench(bench(methods=["daps"], tasks=["inpainting_random"], n=1, method_presets=bad),
                      tmp_path / "b", prior=prior, progress=False)
    with pytest.raises(DPSError, match="leave out --nfe"):
        run_bench(bench(methods=["daps"], tasks=["inpainting_random"], n=1, nfe=10,
                                method_presets={"daps": "daps-100"}), tmp_path / "c", prior=prior, progress=False)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # refused before any folder is made


def test_a_rerun_may_add_tasks_and_methods_but_not_change_a_task(tmp_path, prior):
    """bench.json's tasks grow with a rerun that adds a task (the finished pairs are kept); a rerun that changes
    a recorded task's definition is refused."""
    from dps.errors import DPSError

    run_bench(bench(["dps"], ["super_resolution"], 1, steps=2), tmp_path, prior=prior, progress=False)
    first = tmp_path / "results" / "dps" / "super_resolution" / "heldout000.json"
    stamp = first.stat().st_mtime_ns
    table = run_bench(bench(["dps", "ddrm"], ["inpainting_box", "super_resolution"], 1, steps=2), tmp_path, prior=prior,
                      progress=False)
    assert first.stat().st_mtime_ns == stamp and len(table["rows"]) == 4
    assert set(json.loads((tmp_path / "bench.json").read_text())["settings"]["tasks"]) == {"super_resolution",
                                                                                          "inpainting_box"}
    with pytest.raises(DPSError, match="tasks: inpainting_box removed, super_resolution changed"):
        run_bench(bench(["dps"], ["super_resolution"], 1, steps=2, preset="authors"), tmp_path, prior=prior,
                  progress=False)


def test_unknown_method_is_an_error(tmp_path, prior):
    with pytest.raises(ValueError, match="choose one of"):
        run_bench(bench(methods=["magic"], tasks=["super_resolution"], n=1), tmp_path, prior=prior)


def test_bench_figure_per_task(tmp_path, prior):
    run_bench(bench(methods=["dps"], tasks=["motion_blur"], n=2, steps=2), tmp_path, prior=prior,
              progress=False)
    assert (tmp_path / "figure_motion_blur.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["heldout000.png", "heldout001.png"]
    from dps.runs.figures import figure_for

    assert [p.name for p in figure_for(tmp_path)] == ["figure_motion_blur.png"]


def test_torchrun_two_processes_give_the_single_process_table(tmp_path, prior):
    """`torchrun --nproc_per_node 2 -m dps bench images` (gloo on CPU) shards the images and merges them."""
    import os
    import subprocess
    import sys

    model = tmp_path / "m.safetensors"
    save_unet_safetensors(model, prior.network)
    args = ["bench", "images", "--model", str(model), "--tasks", "inpainting_box,super_resolution", "--num-images", "3",
            "--steps", "2", "--batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "dps", *args, "--out", str(tmp_path / "one")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "dps", *args, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                           text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "rank 1" in multi.stderr  # the second process did a share of the work
    assert _quality(tmp_path / "two" / "table.md") == _quality(tmp_path / "one" / "table.md")
    one = json.loads((tmp_path / "one" / "table.json").read_text())["rows"]
    two = json.loads((tmp_path / "two" / "table.json").read_text())["rows"]
    for a, b in zip(one, two):
        assert a["psnr"] == b["psnr"] and a["ssim"] == b["ssim"]


def test_bench_runs_baselines_and_marks_not_applicable(tmp_path, prior):
    table = run_bench(bench(methods=["dps", "admm_tv", "hio"], tasks=["inpainting_box", "phase_retrieval"],
                                    n=2, steps=2), tmp_path, prior=prior, progress=False)
    rows = {(r["method"], r["task"]): r for r in table["rows"]}
    assert rows[("admm_tv", "inpainting_box")]["psnr"] is not None
    assert rows[("hio", "phase_retrieval")]["psnr"] is not None
    assert rows[("admm_tv", "phase_retrieval")].get("not_applicable")
    assert rows[("hio", "inpainting_box")].get("not_applicable")
    md = (tmp_path / "table.md").read_text()
    assert "| HIO | n/a | n/a |" in md.replace("  ", " ")  # rows are titled by the method table


def test_best_of_k_for_phase_retrieval(tmp_path, prior):
    """--samples K with a best-residual task keeps, per image, the sample with the lowest residual: its residual
    is the minimum of the K single-sample runs' residuals (sample k uses the same generator either way)."""
    common = dict(methods=["hio"], tasks=["phase_retrieval"], n=2, steps=2, model="tiny")
    run_bench(bench(**common, samples=3), tmp_path / "k3", prior=prior, progress=False)
    best = [json.loads((tmp_path / "k3" / "results" / "hio" / "phase_retrieval" / f"heldout00{i}.json")
                       .read_text())["residual"] for i in range(2)]
    assert json.loads((tmp_path / "k3" / "bench.json").read_text())["settings"]["samples"] == 3
    run_bench(bench(**common), tmp_path / "k1", prior=prior, progress=False)
    first = [json.loads((tmp_path / "k1" / "results" / "hio" / "phase_retrieval" / f"heldout00{i}.json")
                        .read_text())["residual"] for i in range(2)]
    assert all(b <= f + 1e-9 for b, f in zip(best, first))


def test_execution_settings_reach_every_task_and_the_folder_key(tmp_path, prior):
    """--precision/--checkpointing apply to every task, the folder records them and the device, and a folder made
    with other network settings is refused."""
    from dps.errors import DPSError

    base = dict(methods=["dps"], tasks=["super_resolution"], n=2, steps=2, batch_size=2)
    plain = run_bench(bench(**base), tmp_path / "a", prior=prior, progress=False, execution=Execution())
    ckpt = run_bench(bench(**base), tmp_path / "b", prior=prior, progress=False,
                     execution=Execution(checkpointing=True))
    assert abs(plain["rows"][0]["psnr"] - ckpt["rows"][0]["psnr"]) < 1e-4  # checkpointing changes no result
    key = json.loads((tmp_path / "b" / "bench.json").read_text())["settings"]
    assert key["checkpointing"] is True
    row = json.loads((tmp_path / "a" / "results" / "dps" / "super_resolution" / "heldout000.json").read_text())
    assert row["device"] == "cpu" and plain["device"] == "cpu"
    with pytest.raises(DPSError):
        run_bench(bench(**base), tmp_path / "a", prior=prior, progress=False, execution=Execution(precision="bf16"))
