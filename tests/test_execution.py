"""How the network runs: precision, block checkpointing, compile, threads, the device, the divergence guard's
host reads, and the speed benchmark's report."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from dps.diffusion.denoiser import NetworkPrior
from dps.diffusion.schedule import make_schedule
from dps.errors import DPSError, Diverged
from dps.models.unet import UNetModel
from dps.noise import GaussianNoise
from dps.execution import Execution, choose_device
from dps.solvers.dps import DivergenceGuard, DPSConfig
from dps.solvers.methods import reconstruct
from dps.tasks import build_operator

from conftest import TINY


def tiny_prior(seed: int = 0) -> NetworkPrior:
    torch.manual_seed(seed)
    net = UNetModel({**TINY, "attention_resolutions": "16"})  # one attention level too
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return NetworkPrior(net, make_schedule("linear", 1000), event_shape=(1, 32, 32)).eval()


def problem(prior, seed=0):
    op = build_operator({"name": "super_resolution", "factor": 4}, (1, 32, 32), 0)
    noise = GaussianNoise(0.025)
    g = torch.Generator().manual_seed(seed)
    y = noise(op(torch.rand((2, 1, 32, 32), generator=g)), g)
    return op, noise, y


def run(prior, **execution):
    """A 6-step DPS run through the method table with the given Execution settings (on the CPU)."""
    op, noise, y = problem(prior)
    cfg = DPSConfig(steps=6, zeta=0.1, clip_x0=(-1.0, 1.0))
    gens = [torch.Generator().manual_seed(10 + k) for k in range(2)]
    return reconstruct("dps", prior, op, y, noise, cfg, gens, execution=Execution(**execution)).x


def fwd_vjp(prior, x, t, v):
    xg = x.clone().requires_grad_(True)
    out = prior(xg, t).x0
    (g,) = torch.autograd.grad(out, xg, v)
    return out.detach(), g


def test_checkpointing_recomputes_blocks_and_keeps_output_and_vjp():
    prior = tiny_prior()
    x, v = torch.randn(3, 1, 32, 32), torch.randn(3, 1, 32, 32)
    t = torch.tensor([10, 400, 900])
    calls = []
    prior.network.middle_block.register_forward_pre_hook(lambda *a: calls.append(1))
    plain = fwd_vjp(prior, x, t, v)
    assert len(calls) == 1
    calls.clear()
    with prior.running(checkpointing=True):
        assert prior.network.use_checkpoint
        ckpt = fwd_vjp(prior, x, t, v)
    assert len(calls) == 2, "the backward pass must recompute the block (checkpointing engaged)"
    assert not prior.network.use_checkpoint, "the setting must be restored after the block"
    torch.testing.assert_close(ckpt[0], plain[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(ckpt[1], plain[1], rtol=0, atol=1e-6)
    with torch.no_grad(), prior.running(checkpointing=True):  # no graph: nothing to checkpoint
        calls.clear()
        prior(x, t)
    assert len(calls) == 1


def test_dps_with_checkpointing_equals_without():
    prior = tiny_prior()
    torch.testing.assert_close(run(prior, checkpointing=True), run(prior), rtol=0, atol=1e-5)


def frozen_unet(scale_shift: bool, seed: int = 0) -> UNetModel:
    torch.manual_seed(seed)
    net = UNetModel({**TINY, "attention_resolutions": "16", "use_scale_shift_norm": scale_shift,
                     "resblock_updown": True})
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net.eval().requires_grad_(False)


def saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass while ``fn`` runs."""
    kept = {}

    def pack(t):
        kept[(t.data_ptr(), t.shape)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(kept.values())


@pytest.mark.parametrize("scale_shift", [True, False])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_lean_vjp_gives_autograds_gradient_and_keeps_less(scale_shift, checkpointing):
    net = frozen_unet(scale_shift)
    net.use_checkpoint = checkpointing
    x, v = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    t = torch.tensor([30, 700])

    def vjp(lean: bool):
        net.lean = lean
        xg = x.clone().requires_grad_(True)
        out = net(xg, t)
        return out.detach(), torch.autograd.grad(out, xg, v)[0]

    (out0, g0), (out1, g1) = vjp(False), vjp(True)
    torch.testing.assert_close(out1, out0, rtol=0, atol=0)
    torch.testing.assert_close(g1, g0, rtol=0, atol=1e-6 * float(g0.abs().max()))
    if not checkpointing:  # what the graph keeps: the norm's input only, instead of three activations
        xg = x.clone().requires_grad_(True)
        net.lean = False
        plain = saved_bytes(lambda: net(xg, t))
        net.lean = True
        lean = saved_bytes(lambda: net(xg, t))
        assert lean < 0.5 * plain, (lean, plain)


def test_lean_vjp_by_default_from_128_by_128_pixels():
    net = frozen_unet(True)
    t = torch.tensor([500])
    for size, expected in ((64, False), (128, True), (64, False)):
        net(torch.randn(1, 1, size, size, requires_grad=True), t)
        assert all(b.lean == expected for b in net._resblocks), size
    net.lean = True
    net(torch.randn(1, 1, 32, 32, requires_grad=True), t)
    assert all(b.lean for b in net._resblocks)


def test_lean_vjp_under_autocast_and_when_training():
    net = frozen_unet(True)
    x, v = torch.randn(1, 1, 32, 32), torch.randn(1, 1, 32, 32)
    t = torch.tensor([500])
    grads = {}
    for lean in (False, True):
        net.lean = lean
        xg = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(xg, t)
        grads[lean] = torch.autograd.grad(out.float(), xg, v)[0]
    torch.testing.assert_close(grads[True], grads[False], rtol=0, atol=1e-6 * float(grads[False].abs().max()))
    # weights that need gradients (training) take autograd's own layers: parameter gradients are unchanged
    net.requires_grad_(True)
    param_grads = {}
    for lean in (False, True):
        net.lean = lean
        net.zero_grad()
        (net(x, t) * v).sum().backward()
        param_grads[lean] = [p.grad.clone() for p in net.parameters()]
    for a, b in zip(param_grads[True], param_grads[False]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_reduced_precision_runs_the_network_only_in_that_dtype(precision, dtype):
    prior = tiny_prior()
    seen = []
    conv = prior.network.input_blocks[0][0]
    conv.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    reference = run(prior)
    assert set(seen) == {torch.float32}
    seen.clear()
    low = run(prior, precision=precision)
    assert set(seen) == {dtype}, "the network's convolutions must run in the chosen dtype"
    assert low.dtype == torch.float32, "the iterate and the result stay float32"
    assert prior.precision == "fp32"
    diff = (low - reference).abs()
    # a 6-step run of a random network on [0, 1] images: reduced precision moves pixels by a few 1e-3
    assert 0 < float(diff.max()) < 0.05 and float(diff.mean()) < 0.01


def test_prior_output_is_cast_back_to_the_input_dtype():
    prior = tiny_prior()
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([5, 700])
    with prior.running(precision="bf16"):
        out = prior(x, t)
    assert out.eps.dtype == torch.float32 and out.x0.dtype == torch.float32


def test_execution_settings_need_a_network():
    from dps.priors.analytic import GaussianPrior

    prior = GaussianPrior(torch.zeros(4), 1.0)
    with pytest.raises(DPSError, match="no network"):
        with prior.running(precision="bf16"):
            pass
    with prior.running():  # the defaults are fine
        pass
    plain = NetworkPrior(torch.nn.Conv2d(1, 1, 1), make_schedule("linear", 1000), event_shape=(1, 8, 8))
    with pytest.raises(DPSError, match="cannot checkpoint"):
        with plain.running(checkpointing=True):
            pass
    with pytest.raises(DPSError, match="unknown precision"):
        Execution(precision="int8")


def test_settings_are_restored_after_an_error():
    prior = tiny_prior()
    with pytest.raises(RuntimeError):
        with prior.running(precision="bf16", checkpointing=True):
            raise RuntimeError("boom")
    assert prior.precision == "fp32" and not prior.network.use_checkpoint


def test_run_records_name_network_settings_only_when_not_default():
    assert Execution().network_settings() == {}
    d = Execution(precision="bf16", checkpointing=True).network_settings()
    assert d == {"precision": "bf16", "checkpointing": True}
    assert set(DPSConfig().to_dict()).isdisjoint({"precision", "checkpointing", "compile", "device"})


def test_device_is_chosen_once_and_a_missing_one_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device(None) == torch.device("cpu")  # the default without CUDA
    assert choose_device("cpu") == torch.device("cpu")
    for bad, words in (("cuda", "no CUDA device"), ("cuda:1", "no CUDA device"), ("gpu0", "not a device"),
                       ("tpu", "not a device")):
        with pytest.raises(DPSError, match=words):
            choose_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert choose_device(None) == torch.device("cuda", 0)  # CUDA by default when present
    with pytest.raises(DPSError, match="2 CUDA device"):
        choose_device("cuda:2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert choose_device("cuda") == torch.device("cuda", 1)  # under torchrun: the local rank's GPU
    with pytest.raises(DPSError, match="local rank"):
        choose_device("cuda:0")


def test_abar_table_is_kept_on_the_device_and_follows_a_new_schedule():
    prior = tiny_prior()
    t = torch.tensor([0, 999])
    assert torch.equal(prior.abar(t), prior.schedule.alphas_cumprod[t])
    prior.schedule = make_schedule("cosine", 1000)
    assert torch.equal(prior.abar(t), prior.schedule.alphas_cumprod[t])


def test_guard_reads_the_host_every_few_steps_and_at_the_last():
    prior = tiny_prior()
    guard = DivergenceGuard(prior, every=3)
    bad = torch.full((1, 4), 1e6)
    guard.check(torch.zeros(1, 4), 9, 900, "lower it")
    guard.check(bad, 8, 800, "lower it")  # kept on the device, not read yet
    with pytest.raises(Diverged, match="by t=700, within the first 3 steps"):
        guard.check(torch.zeros(1, 4), 7, 700, "lower it")  # the largest RMS so far is read here
    last = DivergenceGuard(prior, every=50)
    last.check(bad, 3, 30, "x")
    with pytest.raises(Diverged):
        last.check(torch.zeros(1, 4), 0, 0, "x")  # step 0 always reads
    with pytest.raises(Diverged, match="at t=40, 1 step"):
        DivergenceGuard(prior).check(torch.full((1, 4), float("nan")), 4, 40, "x")  # CPU: every step


@pytest.fixture
def restore_threads():
    from dps import distributed

    before = torch.get_num_threads()
    yield
    distributed._CHOSEN.clear()
    torch.set_num_threads(before)


def test_threads_split_the_cores_between_local_processes(monkeypatch, restore_threads):
    from dps import distributed

    monkeypatch.setattr(distributed.os, "cpu_count", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert distributed.default_threads() == 2
    assert distributed.set_threads() == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert distributed.default_threads() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert distributed.default_threads() is None


def test_cli_threads_option_is_applied_and_wins_over_the_default(monkeypatch, restore_threads):
    from dps import distributed
    from dps.cli import main

    torch.set_num_threads(2)
    result = CliRunner().invoke(main, ["--threads", "1", "methods"])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    distributed.setup(torch.device("cpu"))  # what every runner calls: the user's count stays
    assert torch.get_num_threads() == 1
    bad = CliRunner().invoke(main, ["--threads", "0", "methods"])
    assert bad.exit_code != 0 and "--threads" in bad.output


def test_speed_report_measures_every_row(tmp_path, tiny_model_path):
    from dps.bench.speed import SpeedSettings, run_speed, speed_markdown

    prior = tiny_prior()
    settings = SpeedSettings(samples=(1, 2), precision=("fp32",), checkpointing=(False, True), repeats=1, steps=2)
    report = run_speed(prior, settings, torch.device("cpu"), "tiny")
    assert len(report["rows"]) == 4
    for r in report["rows"]:
        for key in ("forward_s", "floor_s", "dps_step_s", "uncond_step_s"):
            assert r[key] > 0
        assert r["dps_over_floor"] == pytest.approx(r["dps_step_s"] / r["floor_s"])
        assert r["per_sample_vs_k1"] == (1.0 if r["samples"] == 1 else pytest.approx(
            r["dps_step_per_sample_s"] / next(b["dps_step_per_sample_s"] for b in report["rows"] if b["samples"] == 1
                                              and b["checkpointing"] == r["checkpointing"])))
    table = speed_markdown(report)
    assert table.count("\n| ") == 5 and "DPS / floor" in table

    out = tmp_path / "speed.json"
    res = CliRunner().invoke(__import__("dps.cli", fromlist=["main"]).main,
                             ["bench", "speed", "--model", str(tiny_model_path), "--repeats", "1", "--steps", "1",
                              "--samples", "1,2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [r["samples"] for r in data["rows"]] == [1, 2] and data["parameters"] > 0
    bad = CliRunner().invoke(__import__("dps.cli", fromlist=["main"]).main,
                             ["bench", "speed", "--precision", "fp8"])
    assert bad.exit_code != 0 and "fp8" in bad.output


def test_compile_runs_the_plain_layers_and_restores_the_lean_setting():
    prior = tiny_prior()
    prior.network.lean = True
    with prior.running(compile=True):
        assert prior.network.lean is False  # the compiler partitions the graph itself
    assert prior.network.lean is True
    prior.network.lean = None
    with prior.running(checkpointing=True):
        assert prior.network.lean is None


def test_compile_without_a_cpp_compiler_is_a_one_line_error(monkeypatch):
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent-c++",))
    torch._dynamo.reset()
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x, t):
            return self.conv(x) * t.float().view(-1, 1, 1, 1)

    prior = NetworkPrior(Net(), make_schedule("linear", 1000), event_shape=(1, 8, 8))
    with pytest.raises(DPSError, match="C\\+\\+ compiler"):
        with torch.no_grad(), prior.running(compile=True):
            prior(torch.randn(1, 1, 8, 8), torch.tensor([3]))
    torch._dynamo.reset()


def test_speed_report_measures_only_what_is_asked():
    from dps.bench.speed import SpeedSettings, run_speed, speed_markdown

    settings = SpeedSettings(samples=(1,), repeats=1, steps=1, measure=("floor", "dps_step"))
    report = run_speed(tiny_prior(), settings, torch.device("cpu"), "tiny")
    (row,) = report["rows"]
    assert row["forward_s"] is None and row["uncond_step_s"] is None and row["uncond_over_forward"] is None
    assert row["floor_s"] > 0 and row["dps_over_floor"] > 0 and row["floor_mem_bytes"] is not None
    assert "| - |" in speed_markdown(report)
    assert report["lean_vjp"] is False and "lean VJP off" in speed_markdown(report)  # 32 x 32: below the threshold


def test_peak_memory_counts_live_tensors_on_the_cpu():
    from dps.bench.speed import PeakMemory

    with PeakMemory(torch.device("cpu")) as pm:
        a = torch.ones(1_000_000)  # 4 MB
        b = a * 2  # 4 MB: 8 MB live
        del a
        c = b + 1  # a was freed: still 8 MB
        del b, c
    assert 8e6 <= pm.peak < 8.1e6
    with PeakMemory(torch.device("cpu")) as pm2:
        d = torch.ones(250_000)
    assert 1e6 <= pm2.peak < 1.1e6 and d.numel() == 250_000
