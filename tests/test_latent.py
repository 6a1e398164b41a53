"""Latent diffusion: the latent prior, the latent methods of the method table, the exact-posterior latent benchmark
and the loaders of Stable Diffusion and LDM folders (tiny random ones written here)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from dps.bench.gmm import gmm_latent_problem, latent_methods, run_cell
from dps.errors import DPSError
from dps.noise import GaussianNoise
from dps.operators import MatrixOperator
from dps.solvers.dps import DPSConfig
from dps.solvers.latent_dps import LatentDPSSettings
from dps.solvers.methods import METHODS, reconstruct
from dps.solvers.psld import PSLDSettings

LATENT = [name for name, m in METHODS.items() if m.latent]


def test_the_method_table_has_the_latent_methods():
    assert set(LATENT) == {"latent_dps", "psld", "resample", "latent_daps"}


def test_the_linear_image_prior_denoiser_is_tweedie_of_its_exact_density():
    """D(x; sigma) = x + sigma^2 grad log p_sigma(x), p_sigma = sum_k w_k N(W mu_k + b, W W^T + sigma^2 I),
    the density written out independently of the class's rotated-latent formula."""
    pb = gmm_latent_problem(6, 2, 1, 3)
    p = pb.prior
    x = p.sample(4, torch.Generator().manual_seed(0)) + torch.randn(4, 6, generator=torch.Generator().manual_seed(1),
                                                                   dtype=torch.float64)
    for sigma in (0.1, 1.0, 7.0):
        cov = p.W @ p.W.T + sigma ** 2 * torch.eye(6, dtype=torch.float64)
        means = pb.latent.means @ p.W.T + p.b

        def log_density(v):
            comps = torch.distributions.MultivariateNormal(means, covariance_matrix=cov)
            return torch.logsumexp(pb.latent.weights.log() + comps.log_prob(v[:, None, :]), dim=1).sum()

        xr = x.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(log_density(xr), xr)
        exact = p.exact_denoise(x, torch.full((4,), sigma, dtype=torch.float64))
        torch.testing.assert_close(exact, x + sigma ** 2 * score, rtol=1e-9, atol=1e-9)


def test_the_latent_problem_posterior_lives_on_the_decoder_image():
    pb = gmm_latent_problem(8, 4, 2, 0)
    x = pb.posterior().sample(50, torch.Generator().manual_seed(0))
    z = pb.latent_model().encode(x)
    torch.testing.assert_close(pb.latent_model().decode(z), x)


def test_psld_without_gluing_is_latent_dps_with_ddim():
    """PSLD's measurement term omega ||r|| is DPS's rule 'paper' at zeta' = omega / 2 (grad ||r||^2 = 2 ||r|| grad
    ||r||); with gamma = 0 the two methods make the same samples."""
    pb = gmm_latent_problem(8, 4, 2, 0)
    op, noise = MatrixOperator(pb.A), GaussianNoise(pb.sigma_y)
    a = reconstruct("psld", pb.latent_model(), op, pb.y[None], noise, PSLDSettings(steps=30, omega=0.5, gamma=0.0),
                    torch.Generator().manual_seed(0), 3).x
    b = reconstruct("latent_dps", pb.latent_model(), op, pb.y[None], noise,
                    LatentDPSSettings(steps=30, zeta=0.25, sampler="ddim"), torch.Generator().manual_seed(0), 3).x
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    c = reconstruct("psld", pb.latent_model(), op, pb.y[None], noise, PSLDSettings(steps=30, omega=0.5, gamma=0.1),
                    torch.Generator().manual_seed(0), 3).x
    assert (a - c).abs().max() > 1e-3  # the gluing term acts


@pytest.mark.parametrize("method, ratio", [("latent_dps", 0.5), ("latent_daps", 0.7)])
def test_latent_methods_approach_the_exact_posterior(method, ratio):
    """On a latent problem the sampler's distance to the exact posterior is well below the prior's (a sampler that
    ignored y would sit at the prior's)."""
    cfg = DPSConfig(steps=100, zeta=4.0, step_rule="variance", reference_steps=100)
    r = run_cell(8, 2, cfg, [0], n_samples=300, methods=(method,), latent_dim=4).summary()
    assert r[method]["mean"] < ratio * r["prior"]["mean"]


def test_every_method_states_which_models_it_takes():
    pb = gmm_latent_problem(8, 4, 2, 0)
    op, noise = MatrixOperator(pb.A), GaussianNoise(pb.sigma_y)
    for name, m in METHODS.items():
        if m.counter is None:
            continue
        on_latent, on_pixels = m.why_not(op, noise, pb.latent_model()), m.why_not(op, noise, pb.prior)
        if m.latent:
            assert on_latent is None and "needs a latent model" in on_pixels
        else:
            assert "latent model" in on_latent and ("latent_dps" in on_latent)


def test_the_benchmark_default_runs_every_latent_method(tmp_path):
    from click.testing import CliRunner

    from dps.cli import main

    res = CliRunner().invoke(main, ["bench", "gmm", "--dim", "8", "--latent-dim", "4", "--obs-dim", "2", "--steps",
                                    "10", "--problems", "1", "--samples", "50", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["methods"] == ["dps", *latent_methods()] and report["latent_dim"] == 4
    bad = CliRunner().invoke(main, ["bench", "gmm", "--dim", "8", "--latent-dim", "8"])
    assert bad.exit_code != 0 and "--latent-dim 8 must be even, at least 2 and below every --dim" in bad.output
    pixel = CliRunner().invoke(main, ["bench", "gmm", "--methods", "psld", "--steps", "5"])
    assert pixel.exit_code != 0 and "psld samples latents: it needs --latent-dim" in pixel.output


# ------------------------------------------------------------------------------------------- diffusers folders
@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from latent_folders import write_tiny_stable_diffusion

    return write_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "sd")


@pytest.fixture(scope="module")
def ldm_folder(tmp_path_factory):
    pytest.importorskip("diffusers")
    from latent_folders import write_tiny_ldm

    return write_tiny_ldm(tmp_path_factory.mktemp("ldm") / "ldm")


def test_a_stable_diffusion_folder_loads_as_a_latent_prior(sd_folder):
    from dps import load_model

    p = load_model(sd_folder)
    assert p.form == "latent" and p.conditional and p.scaling_factor == 0.18215
    assert p.event_shape == (3, 8, 8) and p.latent_shape == (4, 4, 4)
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = p.decode(z)
        assert x.shape == (2, 3, 8, 8)
        vae = p.decoder.vae
        torch.testing.assert_close(x, vae.decode(z / 0.18215).sample)
        torch.testing.assert_close(p.encode(x), 0.18215 * vae.encode(x).latent_dist.mean)


def test_classifier_free_guidance_combines_the_two_branches(sd_folder):
    from dps import load_model

    p = load_model(sd_folder)
    net = p.latent.network
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500])
    empty = net.uncond.clone()
    p.condition("a cat", 4.0)
    assert not torch.equal(net.cond, empty)  # the prompt changes the text states
    with torch.no_grad():
        unet = net.unet.unet
        e_u = unet(z, t, encoder_hidden_states=empty.expand(2, -1, -1)).sample
        e_c = unet(z, t, encoder_hidden_states=net.cond.expand(2, -1, -1)).sample
        torch.testing.assert_close(net(z, t), e_u + 4.0 * (e_c - e_u), rtol=1e-4, atol=1e-5)
        p.condition("a cat", 1.0)
        torch.testing.assert_close(net(z, t), e_c, rtol=1e-4, atol=1e-5)
    with pytest.raises(DPSError, match="guidance scale"):
        p.condition("a cat", -1.0)


def test_the_text_encoder_follows_the_prior(sd_folder):
    """Every module of a text-conditioned prior moves with it (on a GPU the prompt is encoded there): cast to float64,
    the text encoder is float64 and the prompt's states are those of the float64 encoder."""
    from dps import load_model

    p = load_model(sd_folder).to(torch.float64)
    encoder = p.text.text_encoder
    assert {q.dtype for q in encoder.parameters()} == {torch.float64}
    p.condition("a cat")
    ids = p.text.tokenizer(["a cat"], padding="max_length", max_length=p.text.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(p.latent.network.cond, encoder(ids)[0], rtol=0, atol=0)


@pytest.mark.parametrize("method", LATENT)
@pytest.mark.parametrize("which", ["sd", "ldm"])
def test_each_latent_method_runs_on_stable_diffusion_and_ldm_folders(method, which, sd_folder, ldm_folder):
    from dps import load_model
    from dps.tasks import build_operator

    p = load_model(sd_folder if which == "sd" else ldm_folder)
    if p.conditional:
        p.condition("a cat", 3.0)
    op = build_operator({"name": "super_resolution", "factor": 2}, p.event_shape, 0)
    x = torch.rand(1, *p.event_shape, generator=torch.Generator().manual_seed(0))
    y = op(x)
    m = METHODS[method]
    s = m.at_budget(4, m.settings())
    s = replace(s, every=2, pixel_iters=3, latent_iters=3) if method == "resample" else s
    r = reconstruct(method, p, op, y, GaussianNoise(0.05), s, [torch.Generator().manual_seed(k) for k in range(2)], 2)
    assert r.x.shape == (1, 2, *p.event_shape) and bool(torch.isfinite(r.x).all())
    assert r.x.min() >= 0 and r.x.max() <= 1
    assert r.extras["nfe"] >= 4
    assert not torch.equal(r.x[0, 0], r.x[0, 1])  # two samples from two generators


def test_an_unconditional_model_refuses_a_prompt(ldm_folder):
    from dps import load_model

    p = load_model(ldm_folder)
    assert not p.conditional and p.scaling_factor == 1.0
    with pytest.raises(DPSError, match="unconditional"):
        p.condition("a cat")


def test_the_curvature_bound_runs_through_a_decoder_without_forward_mode(sd_folder):
    """operator_norm_sq of the decoded operator (attention's CPU kernel has no forward-mode rule) against the
    largest eigenvalue of J^T J from the full Jacobian."""
    from dps import load_model
    from dps.solvers.daps import operator_norm_sq
    from dps.solvers.latent import DecodedOperator
    from dps.tasks import build_operator

    p = load_model(sd_folder)
    op = DecodedOperator(build_operator({"name": "super_resolution", "factor": 2}, p.event_shape, 0), p)
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    J = torch.autograd.functional.jacobian(lambda v: op(v.reshape(1, 4, 4, 4)).flatten(), z.flatten())
    exact = float(torch.linalg.eigvalsh(J.T.double() @ J.double()).max())
    with torch.enable_grad():
        est = operator_norm_sq(op, z, 60)
    assert est == pytest.approx(exact, rel=2e-2)


def test_solve_records_the_prompt_and_a_pixel_model_refuses_one(sd_folder, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from dps.cli import main

    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8), (200, 30, 90)).save(tmp_path / "in" / "a.png")
    args = ["solve", "--task", "super_resolution", "--model", str(sd_folder), "--method", "latent_dps", "--nfe", "3",
            "--input", str(tmp_path / "in")]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "r"), "--prompt", "a cat", "--guidance-scale", "2"])
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "r" / "run.json").read_text())["settings"]
    assert settings["prompt"] == "a cat" and settings["guidance_scale"] == 2.0
    other = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "r"), "--prompt", "a dog"])
    assert other.exit_code != 0 and "prompt" in other.output
    pixel = CliRunner().invoke(main, ["solve", "--task", "inpainting_box", "--prompt", "a cat", "--input",
                                      str(tmp_path / "in"), "--out", str(tmp_path / "p")])
    assert pixel.exit_code != 0 and "takes no prompt" in pixel.output and not (tmp_path / "p").exists()


def test_sample_and_speed_run_on_a_latent_model(sd_folder, tmp_path):
    """dps sample decodes sampled latents; dps bench speed's floor of a latent model includes the decoder's VJP
    (it costs more than the latent network's forward)."""
    from click.testing import CliRunner

    from dps.cli import main

    res = CliRunner().invoke(main, ["sample", "--model", str(sd_folder), "--n", "2", "--steps", "3", "--out",
                                    str(tmp_path / "s.png")])
    assert res.exit_code == 0, res.output
    x = torch.load(tmp_path / "s.pt", weights_only=True)
    assert x.shape == (2, 3, 8, 8) and x.min() >= 0 and x.max() <= 1
    res = CliRunner().invoke(main, ["bench", "speed", "--model", str(sd_folder), "--steps", "2", "--repeats", "1",
                                    "--json", str(tmp_path / "speed.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "speed.json").read_text())
    assert report["latent_shape"] == [4, 4, 4] and report["event_shape"] == [3, 8, 8]
    row = report["rows"][0]
    assert row["floor_s"] > row["forward_s"] > 0 and row["dps_step_s"] > 0


@pytest.mark.slow  # builds 943M parameters (about 10 s and 4 GB)
def test_the_sd15_architecture_is_stable_diffusion_sized():
    """--arch sd15 builds Stable Diffusion 1.5's UNet (859.5M parameters) and autoencoder (83.7M) with random
    weights, at a small image size here."""
    pytest.importorskip("diffusers")
    from dps.bench.speed import random_prior

    p = random_prior("sd15", 64)
    assert p.event_shape == (3, 64, 64) and p.latent_shape == (4, 8, 8)
    unet = sum(t.numel() for t in p.latent.parameters())
    vae = sum(t.numel() for t in p.decoder.parameters())
    assert round(unet / 1e6, 1) == 859.5 and round(vae / 1e6, 1) == 83.7
    with pytest.raises(DPSError, match="multiple of 64"):
        random_prior("sd15", 100)


def test_steps_and_step_size_reach_only_the_methods_that_read_them():
    from dps.runs.spec import Overrides, resolve

    with pytest.raises(DPSError, match="keeps its own settings"):
        resolve("inpainting_box", Overrides(method="ddrm", steps=50))
    with pytest.raises(DPSError, match="keeps its own settings"):
        resolve("inpainting_box", Overrides(method="psld", step_size=0.5))
    with pytest.raises(DPSError, match="keeps its own settings"):  # DiffPIR's zeta is no step size
        resolve("inpainting_box", Overrides(method="diffpir", step_size=0.5))
    with pytest.raises(DPSError, match="keeps its own settings"):
        resolve("inpainting_box", Overrides(method="latent_dps", step_rule="beta"))
    with pytest.raises(DPSError, match="takes no step size"):
        resolve("inpainting_box", Overrides(method="score_sde", step_size=0.5))
    assert resolve("inpainting_box", Overrides(method="dps", steps=50, step_size=0.5)).method_settings().zeta == 0.5


def test_step_size_sets_latent_dps_own_zeta_and_a_rerun_keeps_it():
    """Latent DPS's zeta' is its own, not the task's: --step-size sets it (the task stays as it is), a rerun from the
    run's record keeps it, another method does not inherit it, and the default stays where none is given."""
    from dps.runs.spec import Overrides, resolve
    from dps.solvers.latent_dps import LatentDPSSettings

    spec = resolve("inpainting_box", Overrides(method="latent_dps", nfe=50, step_size=0.03))
    assert spec.method_settings().zeta == 0.03
    assert spec.task == resolve("inpainting_box", Overrides(method="latent_dps", nfe=50)).task
    record = json.loads(json.dumps(spec.key()))
    assert resolve("inpainting_box", Overrides(), previous=record).method_settings().zeta == 0.03
    assert resolve("inpainting_box", Overrides(nfe=100), previous=record).method_settings().zeta == 0.03
    assert resolve("inpainting_box", Overrides(method="latent_dps", nfe=50)).method_settings().zeta == \
        LatentDPSSettings().zeta
    with pytest.raises(DPSError, match="step-size"):
        resolve("inpainting_box", Overrides(method="latent_dps", step_size=-1.0))


def test_resample_spends_the_budget_it_is_given():
    """--nfe N buys ReSample the most steps whose evaluations (one per step, inter_steps per hard-consistency
    step) fit in N; the counted evaluations are that number."""
    pb = gmm_latent_problem(8, 4, 2, 0)
    m = METHODS["resample"]
    s = replace(m.at_budget(60, m.settings()), pixel_iters=20, latent_iters=20)
    assert s.evaluations() <= 60 < s.evaluations(s.steps + 1) and s.consistency_steps()
    r = reconstruct("resample", pb.latent_model(), MatrixOperator(pb.A), pb.y[None], GaussianNoise(pb.sigma_y), s,
                    torch.Generator().manual_seed(0), 2)
    assert r.extras["nfe"] == s.evaluations()


def test_progress_frames_of_a_latent_method_are_decoded_images(sd_folder, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from dps.cli import main

    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8), (20, 130, 90)).save(tmp_path / "in" / "a.png")
    res = CliRunner().invoke(main, ["solve", "--task", "inpainting_box", "--model", str(sd_folder), "--method", "psld",
                                    "--nfe", "4", "--progress-frames", "2", "--input", str(tmp_path / "in"), "--out",
                                    str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    frames = torch.load(tmp_path / "r" / "progress" / "a.pt", weights_only=True)
    frames = frames["x0"] if isinstance(frames, dict) else frames
    assert frames.shape[-3:] == (3, 8, 8)


def test_a_damaged_stable_diffusion_folder_is_a_one_line_error(sd_folder, tmp_path):
    import shutil

    from dps import load_model

    broken = tmp_path / "sd"
    shutil.copytree(sd_folder, broken)
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="unet cannot be loaded .*copy the folder again"):
        load_model(broken)


def test_a_guidance_scale_needs_a_prompt(sd_folder):
    from dps import load_model

    p = load_model(sd_folder)
    with pytest.raises(DPSError, match="a guidance scale needs a prompt"):
        p.condition("", 5.0)


@pytest.mark.parametrize("settings", ["PSLDSettings", "ReSampleSettings"])
def test_an_unknown_spacing_is_refused(settings):
    from dps.solvers import psld, resample

    cls = getattr(psld, settings, None) or getattr(resample, settings)
    with pytest.raises(DPSError, match="unknown spacing 'bogus'"):
        cls(spacing="bogus")


def test_latent_weights_stop_growing_below_the_budget_they_were_tuned_at():
    """Latent DPS's zeta' and PSLD's omega, gamma are given for 1000 steps and scale by sqrt(1000 / N), but below the
    100 steps they were tuned at the per-step weight stays the 100-step one (larger steps diverge whatever N is)."""
    from dps.solvers.dps import step_factor
    from dps.solvers.methods import METHODS

    weight = {"latent_dps": lambda s: s.zeta_per_step, "psld": lambda s: s.step_scale * s.omega}
    for name, w in weight.items():
        m = METHODS[name]
        at = {n: w(m.at_budget(n, m.settings())) for n in (10, 50, 100, 400, 1000)}
        base = w(m.settings())
        assert at[1000] == pytest.approx(base)
        assert at[400] == pytest.approx(base * 10 ** 0.5 / 2)
        assert at[10] == at[50] == at[100] == pytest.approx(base * 10 ** 0.5)
    assert step_factor(1000, 20) == pytest.approx(50 ** 0.5) and step_factor(None, 20, 100) == 1.0
    assert step_factor(50, 20, 100) == 1.0  # given for 50 steps, tuned at more: it never grows


@pytest.mark.parametrize("name", ["daps", "latent_daps"])
def test_a_budget_below_one_level_is_refused(name):
    """A DAPS level costs its ODE steps in evaluations: a smaller --nfe is an error, never a silent overspend."""
    from dps.solvers.methods import METHODS

    m = METHODS[name]
    settings = replace(m.settings(), ode_steps=3)
    with pytest.raises(DPSError, match=f"--nfe 2 is less than one level of {name}, which takes 3"):
        m.at_budget(2, settings)
    assert m.at_budget(3, settings).levels == 1 and m.at_budget(7, settings).levels == 2


def test_the_gmm_benchmark_runs_latent_dps_at_the_cells_dps_step():
    """On the exact-posterior problems latent DPS takes the cell's DPS settings, its step-count rule included (the
    digits-tuned cap does not apply to the benchmark's zeta')."""
    from dps.bench.gmm import GMM_DEFAULT_ZETA, GMM_REFERENCE_STEPS, gmm_method_config

    for rule in ("paper", "beta", "variance"):
        for n in (20, 100, 1000):
            cfg = DPSConfig(steps=n, zeta=GMM_DEFAULT_ZETA[rule], step_rule=rule, reference_steps=GMM_REFERENCE_STEPS)
            latent = gmm_method_config("latent_dps", cfg)
            assert (latent.steps, latent.zeta_per_step) == (cfg.steps, cfg.zeta_per_step), (rule, n)


def test_bench_gmm_with_a_grid_compares_the_latent_methods_that_take_one():
    """--grid with --latent-dim and no --methods: the default comparison keeps the latent methods that run on a grid
    (PSLD and ReSample run on the VP steps only) instead of refusing a method the user never named."""
    from click.testing import CliRunner

    from dps.cli import main
    from dps.solvers.methods import METHODS

    args = ["bench", "gmm", "--dim", "4", "--latent-dim", "2", "--obs-dim", "1", "--steps", "4", "--problems", "1",
            "--samples", "20", "--grid", "edm", "--device", "cpu"]
    r = CliRunner().invoke(main, args + ["--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["methods"] == ["dps", *[m for m in latent_methods() if METHODS[m].takes_grid]]
    assert "psld" not in report["methods"] and report["device"] == "cpu"
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0 and "methods on cpu" in text.output


def test_the_latent_demo_runs_latent_dps_with_its_zeta_per_task(tmp_path):
    """`dps demo --model digits-latent`: every demo task has a latent zeta', each task's run uses its own, and the
    nonlinear deblur (whose saturating response overflowed on the first decoded estimates) beats the naive inverse."""
    from dps.runs.demo import DEMO_LATENT_ZETA, DEMO_VARIANTS, run_demo

    assert set(DEMO_LATENT_ZETA) == {v.name for v in DEMO_VARIANTS}
    report = run_demo(tmp_path / "demo", model="digits-latent", n=2, steps=100,
                      tasks=["nonlinear_blur", "inpainting_box"], progress=False)
    assert report["method"] == "latent_dps"
    for name, row in report["tasks"].items():
        assert row["zeta"] == DEMO_LATENT_ZETA[name]
    assert report["tasks"]["nonlinear_blur"]["psnr"] > report["tasks"]["nonlinear_blur"]["psnr_naive"] + 3
