"""The denoiser contract in sigma, its adapters (VP, VE, EDM, analytic), the noise-level grids, and the
samplers on them: the adapters against closed forms and against diffusers' own preconditioning, the grid
steps against the VP steps, exact posteriors in every form, VE and EDM models built here, saved, loaded and
sampled."""
from __future__ import annotations

import json
import math

import pytest
import torch

from dps.bench.gmm import gmm_problem
from dps.diffusion.forms import FORM_RANGES, EDMPrior, VEPrior, edm_coefficients, in_form
from dps.diffusion.grid import GridSpec, edm_grid, ve_grid, vp_grid
from dps.diffusion.schedule import make_schedule, respace
from dps.diffusion.steps import ancestral_step, ddim_grid_step, ddim_step, ddpm_step
from dps.errors import DPSError
from dps.noise import GaussianNoise
from dps.operators import MatrixOperator
from dps.priors.analytic import GaussianPrior
from dps.solvers.methods import METHODS, reconstruct

FORMS = ("vp", "ve", "edm")


# ----------------------------------------------------------------------------------------------------- grids
def test_vp_grid_is_the_respaced_schedule():
    sched = make_schedule("linear")
    sub = respace(sched, 50)
    g = vp_grid(sched, 50)
    abar = sub.alphas_cumprod
    torch.testing.assert_close(g.sigmas, ((1 - abar) / abar).sqrt())
    torch.testing.assert_close(g.scales, abar.sqrt())
    torch.testing.assert_close(g.alphas_cumprod, abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(g.betas, sub.betas, rtol=1e-9, atol=1e-15)
    assert torch.equal(g.timesteps, sub.timesteps)
    assert g.start_std() == pytest.approx(1.0, abs=1e-12)


def test_edm_and_ve_grids_follow_their_formulas():
    g = edm_grid(5, 0.002, 80.0, rho=7.0)
    assert float(g.sigmas[-1]) == pytest.approx(80.0) and float(g.sigmas[0]) == pytest.approx(0.002)
    k = torch.arange(5, dtype=torch.float64) / 4  # from the top
    expected = (80 ** (1 / 7) + k * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(g.sigmas.flip(0), expected)
    assert torch.equal(g.scales, torch.ones(5, dtype=torch.float64))
    v = ve_grid(4, 0.01, 100.0)
    torch.testing.assert_close(v.sigmas, torch.tensor([0.01, 0.01 * 10000 ** (1 / 3), 0.01 * 10000 ** (2 / 3), 100.0],
                                                      dtype=torch.float64))
    ratios = v.sigmas[1:] / v.sigmas[:-1]
    torch.testing.assert_close(ratios, ratios[:1].expand(3))  # geometric


def test_grid_spec_builds_within_what_the_model_knows():
    vp = GaussianPrior(torch.zeros(2, dtype=torch.float64))
    lo, hi = vp.sigma_range()
    assert lo == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4))) and hi > 150
    own = GridSpec().build(vp, 20)
    assert own.kind == "vp" and len(own) == 20
    edm = GridSpec("edm").build(vp, 10)  # EDM's 0.002..80 asked of the model's range: clamped to [lo, hi]
    assert float(edm.sigmas[0]) == pytest.approx(lo) and float(edm.sigmas[-1]) == pytest.approx(hi)
    narrow = GridSpec("edm", sigma_min=0.5, sigma_max=10.0).build(vp, 10)
    assert float(narrow.sigmas[0]) == pytest.approx(0.5) and float(narrow.sigmas[-1]) == pytest.approx(10.0)
    ve_prior = in_form(vp, "ve")
    assert GridSpec().build(ve_prior, 7).kind == "ve"
    with pytest.raises(DPSError, match="respaced training steps of a VP model; this model is VE"):
        GridSpec("vp").build(ve_prior, 7)
    with pytest.raises(DPSError, match="leaves no range inside the noise levels the model knows, 0.01 to 157.4"):
        GridSpec("edm", sigma_min=500.0, sigma_max=900.0).build(vp, 10)
    with pytest.raises(DPSError, match="takes no rho, sigma_min or sigma_max"):
        GridSpec("vp", rho=3.0)
    with pytest.raises(DPSError, match="must be below"):
        GridSpec("edm", sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(DPSError, match="but the model has 1000 diffusion steps"):
        GridSpec().build(vp, 2000)


def test_grid_override_keeps_or_drops_what_it_should():
    daps = GridSpec("edm", sigma_min=0.1, sigma_max=100.0)
    assert daps.override("ve") == GridSpec("ve", None, 0.1, 100.0)  # a new kind keeps the range
    assert daps.override("vp") == GridSpec("vp")  # the VP grid has none
    assert daps.override(rho=3.0) == GridSpec("edm", 3.0, 0.1, 100.0)
    assert GridSpec("edm", rho=3.0).override("ve") == GridSpec("ve")  # rho is the edm grid's
    assert GridSpec(rho=3.0).override(sigma_max=10.0) == GridSpec(None, 3.0, None, 10.0)  # the model's own: kept
    assert GridSpec(rho=3.0).override("edm") == GridSpec("edm", 3.0)
    with pytest.raises(DPSError, match="rho shapes the edm grid only"):
        GridSpec(rho=3.0).build(in_form(GaussianPrior(torch.zeros(2, dtype=torch.float64)), "ve"), 5)


# ---------------------------------------------------------------------------------------- the grid steps
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_ancestral_step_on_a_vp_grid_is_ddpms(variance):
    sched = make_schedule("linear")
    sub, grid = respace(sched, 30), vp_grid(sched, 30)
    g = torch.Generator().manual_seed(0)
    x, x0, z = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    v = torch.rand(3, 5, generator=g, dtype=torch.float64) * 2 - 1
    for i in (29, 15, 1, 0):
        torch.testing.assert_close(ancestral_step(x, x0, grid, i, z, variance, v), ddpm_step(x, x0, sub, i, z, variance, v),
                                   rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ddim_grid_step(x, x0, grid, i, z, 0.7), ddim_step(x, x0, sub, i, z, 0.7),
                                   rtol=1e-10, atol=1e-12)


def test_ancestral_step_is_the_bridge_of_x_between_two_levels():
    """On an unscaled grid the step's mean and variance are those of x_{i-1} | (x_i, x_0) for x = x_0 + sigma n:
    checked by Monte Carlo against the exact bridge."""
    grid = edm_grid(3, 0.5, 4.0)
    x0 = torch.zeros(200_000, 1, dtype=torch.float64)
    x = torch.full_like(x0, 2.0)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = ancestral_step(x, x0, grid, 2, z)
    s, sp = grid.sigma(2), grid.sigma(1)
    assert float(out.mean()) == pytest.approx(2.0 * sp ** 2 / s ** 2, abs=0.01)
    assert float(out.var()) == pytest.approx(sp ** 2 * (s ** 2 - sp ** 2) / s ** 2, rel=0.02)


# ----------------------------------------------------------------------------------------------- adapters
@pytest.mark.parametrize("form", FORMS)
def test_each_adapter_gives_the_mixtures_closed_form_denoiser(form):
    """D(x; sigma) of the Gaussian mixture through each form's adapter (VP: the epsilon network at its own
    timesteps; VE: the score network; EDM: the preconditioned F) equals the closed form."""
    p = gmm_problem(8, 2, 0).prior
    q = in_form(p, form)
    assert q.form == form
    x = 12 * torch.randn(6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if form == "vp":
        sigma = p.training_sigmas()[[0, 3, 50, 400, 800, 999]]
    else:
        lo, hi = FORM_RANGES[form]
        sigma = torch.tensor([lo, 0.05, 0.7, 3.0, 20.0, hi], dtype=torch.float64)
    torch.testing.assert_close(q.denoise(x, sigma).x0, p.exact_denoise(x, sigma), rtol=1e-11, atol=1e-11)


def test_tweedie_in_ve_form_ties_the_score_to_the_denoiser():
    """The mixture's score (responsibility form) and its posterior mean satisfy D = x + sigma^2 score."""
    for p in (gmm_problem(4, 1, 1).prior, GaussianPrior(torch.tensor([1.0, -2.0], dtype=torch.float64), std=0.7)):
        x = 5 * torch.randn(4, *p.event_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        sigma = torch.tensor([0.1, 1.0, 5.0, 30.0], dtype=torch.float64)
        torch.testing.assert_close(x + sigma[:, None] ** 2 * p.score_sigma(x, sigma), p.exact_denoise(x, sigma))


def test_vp_adapter_takes_the_nearest_timestep_in_log_sigma():
    prior = GaussianPrior(torch.zeros(3, dtype=torch.float64))
    sig = prior.training_sigmas()
    on_grid = sig[[0, 10, 999]]
    assert prior.timestep_for(on_grid).tolist() == [0, 10, 999]
    between = (sig[10].log() * 0.4 + sig[11].log() * 0.6).exp()  # nearer t = 11 in log sigma
    assert prior.timestep_for(between[None]).tolist() == [11]
    assert prior.timestep_for(torch.tensor([1e-6, 1e6], dtype=torch.float64)).tolist() == [0, 999]
    # between timesteps: the network at t = 11 on x / sqrt(1 + sigma^2), x0 = x - sigma eps_hat
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = between.expand(2)
    out = prior.denoise(x, s)
    eps = prior(x / (1 + s[:, None] ** 2).sqrt(), torch.tensor([11, 11])).eps
    torch.testing.assert_close(out.x0, x - s[:, None] * eps)


def test_edm_coefficients_at_sigma_data():
    c_skip, c_out, c_in, c_noise = edm_coefficients(torch.tensor([0.5], dtype=torch.float64), 0.5)
    assert float(c_skip) == pytest.approx(0.5) and float(c_out) == pytest.approx(0.5 / math.sqrt(2))
    assert float(c_in) == pytest.approx(1 / (0.5 * math.sqrt(2))) and float(c_noise) == pytest.approx(math.log(0.5) / 4)
    assert float(edm_coefficients(torch.tensor([0.5], dtype=torch.float64), 0.5, "v")[1]) < 0


# ------------------------------------------------------------------------------ samplers in every form
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("method,std,n,mean_tol,cov_tol", [
    ("pigdm", 1.0, 4000, 0.05, 0.08),  # unit-variance prior: Pi-GDM's likelihood is exact
    ("tds", 0.5, 8000, 0.04, 0.03),    # TDS's twisting is exact for any s; resampled particles repeat, so more
])
def test_exact_samplers_recover_a_gaussian_posterior_in_every_form(form, method, std, n, mean_tol, cov_tol):
    """Pi-GDM and TDS draw the exact posterior of a Gaussian prior whichever form the prior is in (each on the
    model's own grid), within the Monte Carlo error of their samples (the tolerances of the VP tests)."""
    g = torch.Generator().manual_seed(0)
    prior = GaussianPrior(torch.tensor([0.5, -0.3, 0.2, 1.0], dtype=torch.float64), std=std)
    A = torch.randn(2, 4, generator=g, dtype=torch.float64)
    y = A @ torch.tensor([1.0, 0.0, -1.0, 0.5], dtype=torch.float64) + 0.3 * torch.randn(2, generator=g,
                                                                                          dtype=torch.float64)
    post = prior.posterior(A, 0.3, y)
    settings = METHODS[method].settings(steps=200)
    x = reconstruct(method, in_form(prior, form), MatrixOperator(A), y[None], GaussianNoise(0.3), settings,
                    torch.Generator().manual_seed(1), num_samples=n).x[0]
    assert (x.mean(0) - post.mean).abs().max() < mean_tol
    assert (torch.cov(x.T) - post.cov).abs().max() < cov_tol
    assert (prior.mean - post.mean).abs().max() > 0.3


@pytest.mark.parametrize("grid", ["vp", "edm", "ve"])
def test_dps_reaches_the_mixture_posterior_on_every_grid(grid):
    """DPS (rule variance, the benchmark's zeta') on the VP prior with each grid lands near the exact posterior:
    far closer than the prior's own samples."""
    from dps.bench.gmm import GMM_DEFAULT_ZETA, sliced_wasserstein
    from dps.solvers.dps import DPSConfig

    pb = gmm_problem(8, 2, 1)
    exact = pb.posterior().sample(1000, torch.Generator().manual_seed(0))
    cfg = DPSConfig(steps=100, zeta=GMM_DEFAULT_ZETA["variance"], step_rule="variance", grid=GridSpec(grid))
    x = reconstruct("dps", pb.prior, MatrixOperator(pb.A), pb.y[None], GaussianNoise(pb.sigma_y), cfg,
                    torch.Generator().manual_seed(1), num_samples=1000).x[0]
    gen = torch.Generator().manual_seed(2)
    d = sliced_wasserstein(x, exact, generator=gen)
    d_prior = sliced_wasserstein(pb.prior.sample(1000, torch.Generator().manual_seed(3)), exact,
                                 generator=torch.Generator().manual_seed(2))
    assert d < 0.25 * d_prior, (d, d_prior)


def test_vp_only_methods_refuse_a_ve_model_with_the_reason():
    prior = in_form(GaussianPrior(torch.zeros(2, dtype=torch.float64)), "ve")
    op, noise = MatrixOperator(torch.eye(2, dtype=torch.float64)), GaussianNoise(0.1)
    for name, m in METHODS.items():
        reason = m.why_not(op, noise, prior)
        if m.takes_grid or name == "pnp_admm":
            assert reason is None or "VP" not in reason, name
        elif any(r.name == "VP model" for r in m.requires):
            assert "derived for the VP process" in reason and "this model is VE" in reason, name
    with pytest.raises(DPSError, match="runs on the VP model's own respaced steps only"):
        METHODS["ddrm"].with_grid(METHODS["ddrm"].settings(), "edm")


def test_pnp_admm_runs_on_a_ve_prior():
    """PnP-ADMM's denoiser is the contract D(x; sigma): it works with any form, and the same problem gives the
    same estimate with the prior in VP and EDM form up to the VP adapter's nearest-timestep rule."""
    g = torch.Generator().manual_seed(0)
    prior = GaussianPrior(torch.tensor([0.5, -0.3, 0.2, 1.0], dtype=torch.float64))
    A = torch.randn(2, 4, generator=g, dtype=torch.float64)
    y = (A @ torch.ones(4, dtype=torch.float64))[None]
    out = {f: reconstruct("pnp_admm", in_form(prior, f), MatrixOperator(A), y, GaussianNoise(0.05)).x
           for f in ("vp", "edm")}
    torch.testing.assert_close(out["vp"], out["edm"], atol=2e-2, rtol=0)


# --------------------------------------------------------------------------------- models built and loaded
def _tiny_unet(diffusers, fourier: bool):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(16, 16), norm_num_groups=4,
                                 time_embedding_type="fourier" if fourier else "positional",
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))


def test_a_ve_diffusers_folder_loads_as_a_ve_prior_and_samples(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from dps import load_model
    from dps.solvers.unconditional import sample_prior

    unet = _tiny_unet(diffusers, fourier=True)
    unet.save_pretrained(tmp_path / "ve" / "unet")
    diffusers.ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0).save_pretrained(tmp_path / "ve" / "scheduler")
    prior = load_model(tmp_path / "ve")
    assert isinstance(prior, VEPrior) and prior.sigma_range() == (0.01, 50.0) and prior.event_shape == (1, 8, 8)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.3, 20.0], dtype=torch.float64)
    with torch.no_grad():
        score = unet(x, sigma.float()).sample  # diffusers divides the Fourier UNet's output by sigma
        torch.testing.assert_close(prior.denoise(x, sigma).x0, x + sigma.float().view(-1, 1, 1, 1) ** 2 * score)
    samples = sample_prior(prior, 3, steps=8, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 8, 8) and bool(torch.isfinite(samples).all())
    assert samples.min() >= 0 and samples.max() <= 1


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_an_edm_diffusers_folder_matches_diffusers_preconditioning(tmp_path, prediction):
    diffusers = pytest.importorskip("diffusers")
    from dps import load_model

    unet = _tiny_unet(diffusers, fourier=False)
    sched = diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, prediction_type=prediction)
    unet.save_pretrained(tmp_path / "edm" / "unet")
    sched.save_pretrained(tmp_path / "edm" / "scheduler")
    prior = load_model(tmp_path / "edm")
    assert isinstance(prior, EDMPrior) and prior.form == "edm"
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.01, 0.5, 30.0], dtype=torch.float64)
    with torch.no_grad():
        ours = prior.denoise(x, sigma).x0
        for k in range(3):
            s = sigma[k].float()
            F = unet(sched.precondition_inputs(x[k:k + 1], s), sched.precondition_noise(s)).sample
            torch.testing.assert_close(ours[k:k + 1], sched.precondition_outputs(x[k:k + 1], F, s), rtol=1e-5,
                                       atol=1e-5)


@pytest.mark.parametrize("scheduler,fourier,message", [
    ("ScoreSdeVeScheduler", False, "time_embedding_type 'positional'"),  # its output is not a score
    ("EDMEulerScheduler", True, "cannot be EDM's F"),  # log of a negative c_noise, output divided by it
])
def test_a_unet_that_does_not_fit_its_scheduler_is_refused(tmp_path, scheduler, fourier, message):
    diffusers = pytest.importorskip("diffusers")
    from dps import load_model

    _tiny_unet(diffusers, fourier=fourier).save_pretrained(tmp_path / "m" / "unet")
    getattr(diffusers, scheduler)().save_pretrained(tmp_path / "m" / "scheduler")
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("form", ["edm", "ve"])
def test_an_edm_or_ve_unet_file_loads_back_and_samples(tmp_path, form):
    from conftest import TINY

    from dps import load_model
    from dps.models.loading import save_unet_safetensors
    from dps.models.unet import UNetModel
    from dps.solvers.unconditional import sample_prior

    torch.manual_seed(0)
    net = UNetModel({**TINY, "learn_sigma": False})
    save_unet_safetensors(tmp_path / "m.safetensors", net, form=form, sigma_min=0.01, sigma_max=40.0,
                          **({"sigma_data": 0.4} if form == "edm" else {}))
    prior = load_model(tmp_path / "m.safetensors")
    assert prior.form == form and prior.sigma_range() == (0.01, 40.0)
    if form == "edm":
        assert prior.sigma_data == 0.4
    x = sample_prior(prior, 2, steps=5, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(x).all())


def test_a_unet_file_of_an_unknown_form_is_refused(tmp_path):
    from conftest import TINY
    from safetensors.torch import load_file, save_file

    from dps import load_model
    from dps.models.loading import CheckpointMismatchError, save_unet_safetensors
    from dps.models.unet import UNetModel

    save_unet_safetensors(tmp_path / "m.safetensors", UNetModel({**TINY, "learn_sigma": False}), form="edm")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = f.metadata()
    save_file(load_file(str(tmp_path / "m.safetensors")), str(tmp_path / "bad.safetensors"),
              metadata={**meta, "form": "flow"})
    with pytest.raises(CheckpointMismatchError, match="metadata form 'flow' is not one of vp, edm, ve"):
        load_model(tmp_path / "bad.safetensors")
    save_file(load_file(str(tmp_path / "m.safetensors")), str(tmp_path / "bad2.safetensors"),
              metadata={**meta, "sigma_max": "lots"})
    with pytest.raises(CheckpointMismatchError, match="sigma_max='lots' is not a number"):
        load_model(tmp_path / "bad2.safetensors")


# ---------------------------------------------------------------------------------------- runs and records
def test_the_grid_is_part_of_a_runs_settings():
    from dps.runs.spec import Overrides, resolve, settings_from_record, settings_record

    spec = resolve("super_resolution", Overrides(grid="edm", rho=5.0))
    settings = spec.method_settings()
    assert settings.grid == GridSpec("edm", rho=5.0)
    assert spec.key()["method_settings"]["grid"] == {"kind": "edm", "rho": 5.0, "sigma_min": None, "sigma_max": None}
    assert settings_from_record(spec.method_entry, json.loads(json.dumps(settings_record(settings)))) == settings
    again = resolve("super_resolution", Overrides(), previous=json.loads(json.dumps(spec.key())))
    assert again.method_settings().grid == settings.grid  # a run.json's grid is kept on a rerun
    daps = resolve("super_resolution", Overrides(method="daps", grid="vp")).method_settings()
    assert daps.grid == GridSpec("vp")
    with pytest.raises(DPSError, match="method ddrm runs on the VP model's own respaced steps only"):
        resolve("super_resolution", Overrides(method="ddrm", grid="edm")).method_settings()


def test_bench_gmm_runs_in_each_parameterization(tmp_path):
    from click.testing import CliRunner

    from dps.cli import main

    for form in FORMS:
        res = CliRunner().invoke(main, ["bench", "gmm", "--dim", "2", "--obs-dim", "1", "--steps", "20", "--problems",
                                        "1", "--samples", "200", "--methods", "dps,tds", "--parameterization", form,
                                        "--json"])
        assert res.exit_code == 0, res.output
        report = json.loads(res.output)
        assert report["parameterization"] == form
        cell = report["cells"][0]
        assert cell["dps"]["mean"] < cell["prior"]["mean"]
    res = CliRunner().invoke(main, ["bench", "gmm", "--dim", "2", "--obs-dim", "1", "--steps", "20", "--problems", "1",
                                    "--samples", "200", "--methods", "dps,ddrm", "--parameterization", "ve"])
    assert res.exit_code == 1 and "ddrm" in res.output and "ve parameterization" in res.output


def test_ve_and_edm_models_on_the_command_line(tmp_path):
    """`dps sample` and `dps solve` with VE and EDM diffusers folders: samples are written, DPS solves on the
    model's own grid and on another, and a method derived for the VP process is refused with its reason."""
    diffusers = pytest.importorskip("diffusers")
    from click.testing import CliRunner

    from dps.cli import main
    from dps.images import save_image

    _tiny_unet(diffusers, fourier=True).save_pretrained(tmp_path / "ve" / "unet")
    diffusers.ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0).save_pretrained(tmp_path / "ve" / "scheduler")
    _tiny_unet(diffusers, fourier=False).save_pretrained(tmp_path / "edm" / "unet")
    diffusers.EDMEulerScheduler().save_pretrained(tmp_path / "edm" / "scheduler")
    save_image(torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)), tmp_path / "in" / "a.png")
    run = CliRunner().invoke
    for form in ("ve", "edm"):
        res = run(main, ["sample", "--model", str(tmp_path / form), "--n", "4", "--steps", "5",
                         "--out", str(tmp_path / f"{form}.png")])
        assert res.exit_code == 0, res.output
        assert torch.isfinite(torch.load(tmp_path / f"{form}.pt", weights_only=True)).all()
        for grid in ([], ["--grid", "edm", "--sigma-max", "20"]):
            out = tmp_path / f"solve_{form}_{len(grid)}"
            res = run(main, ["solve", "--task", "inpainting_random", "--model", str(tmp_path / form), "--steps", "5",
                             "--input", str(tmp_path / "in"), "--out", str(out), *grid])
            assert res.exit_code == 0, res.output
            record = json.loads((out / "run.json").read_text())
            lo, hi = {"ve": (0.01, 50.0), "edm": (0.002, 80.0)}[form]
            expected = {"kind": "edm", "rho": 7.0, "sigma_min": lo, "sigma_max": 20.0} if grid else \
                {"kind": form, "rho": 7.0 if form == "edm" else None, "sigma_min": lo, "sigma_max": hi}
            assert record["settings"]["method_settings"]["grid"] == expected  # the grid as it ran
    res = run(main, ["solve", "--task", "inpainting_random", "--model", str(tmp_path / "ve"), "--method", "ddrm",
                     "--input", str(tmp_path / "in"), "--out", str(tmp_path / "ddrm")])
    assert res.exit_code != 0 and "derived for the VP process" in res.output and "this model is VE" in res.output
    res = run(main, ["solve", "--task", "inpainting_random", "--model", str(tmp_path / "ve"), "--grid", "vp",
                     "--input", str(tmp_path / "in"), "--out", str(tmp_path / "vpgrid")])
    assert res.exit_code == 1 and "use --grid ve or edm" in res.output


def test_bench_images_puts_its_methods_on_the_grid_asked_for():
    from dps.execution import Execution
    from dps.runs.bench import BenchSettings, bench_specs
    from dps.runs.spec import Overrides

    specs = bench_specs(BenchSettings(methods=["dps", "daps", "ddrm"], tasks=["super_resolution"], n=1,
                                      overrides=Overrides(grid="edm", rho=5.0)), Execution())
    grids = {s.method: getattr(s.method_settings(), "grid", None) for s in specs if s.method != "ddrm"}
    assert grids == {"dps": GridSpec("edm", 5.0), "daps": GridSpec("edm", 5.0, 0.1, 100.0)}
    with pytest.raises(DPSError, match="method ddrm runs on the VP model's own respaced steps only"):
        next(s for s in specs if s.method == "ddrm").method_settings()


def test_a_budget_past_the_schedule_is_fine_for_iterations():
    """PnP-ADMM's iterations are not diffusion steps: --nfe 2000 is 2000 iterations, not a step-count error."""
    from dps.models.loading import load_model
    from dps.runs.loop import Job
    from dps.runs.spec import Overrides, resolve

    job = Job.build(resolve("super_resolution", Overrides(method="pnp_admm", nfe=2000)), load_model("default"))
    assert job.settings.iters == 2000


def test_a_daps_record_of_before_grids_still_reads():
    from dps.runs.spec import settings_from_record

    old = {"levels": 50, "ode_steps": 2, "langevin_steps": 100, "lr": 0.5, "lr_min_ratio": 0.01, "tau": 0.01,
           "sigma_max": 100.0, "sigma_min": 0.1}
    settings = settings_from_record(METHODS["daps"], old)
    assert settings.grid == GridSpec("edm", sigma_min=0.1, sigma_max=100.0) and settings.levels == 50




@pytest.mark.parametrize("rule", ["paper", "beta", "variance"])
def test_dps_on_two_grids_of_the_same_levels_is_the_same_run(rule):
    """The VP grid and the unscaled grid of the same noise levels, started from the same noise and drawing the same
    noise at every step, give the same samples: the ancestral step, the Tweedie estimate and each rule's gradient
    step mean the same in both iterates (zeta' carries over to other grids)."""
    from dps.diffusion.grid import Grid
    from dps.solvers.dps import DPSConfig, dps_sample

    pb = gmm_problem(8, 2, 2)
    vp = vp_grid(pb.prior.schedule, 30)
    flat = Grid(sigmas=vp.sigmas.clone(), scales=torch.ones_like(vp.sigmas), kind="edm")
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cfg = DPSConfig(steps=30, zeta={"paper": 0.2, "beta": 0.2, "variance": 4.0}[rule], step_rule=rule)
    runs = [dps_sample(pb.prior, lambda x: x @ pb.A.T, pb.y[None], GaussianNoise(pb.sigma_y), cfg, num_samples=4,
                       generator=[torch.Generator().manual_seed(k) for k in range(4)], x_T=z * g.start_std(),
                       grid=g).x for g in (vp, flat)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=1e-8)


def test_a_solve_records_the_grid_as_it_ran(tmp_path):
    """Two requests that mean the same grid are the same run (a rerun resumes); the record holds the resolved
    grid (kind, rho, clamped range), which `--task run.json` takes up; another grid is refused."""
    from click.testing import CliRunner

    from dps.cli import main
    from dps.data.digits import digits_split
    from dps.images import save_image

    save_image(digits_split("held_out")[0][0], tmp_path / "in" / "d.png")
    base = ["solve", "--task", "super_resolution", "--steps", "3", "--input", str(tmp_path / "in"), "--out",
            str(tmp_path / "run")]
    run = CliRunner().invoke
    assert run(main, base + ["--grid", "edm"]).exit_code == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    grid = record["settings"]["method_settings"]["grid"]
    assert grid["kind"] == "edm" and grid["rho"] == 7.0
    assert grid["sigma_max"] == pytest.approx(157.4, abs=0.1)  # EDM's 80 would be inside; the model's own top
    same = run(main, base + ["--grid", "edm", "--rho", "7", "--sigma-max", "1000"])  # the same grid, clamped
    assert same.exit_code == 0, same.output
    other = run(main, base + ["--grid", "ve"])
    assert other.exit_code == 1 and "method_settings" in other.output
    again = run(main, ["solve", "--task", str(tmp_path / "run" / "run.json"), "--input", str(tmp_path / "in"), "--out",
                       str(tmp_path / "run2")])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "run2" / "run.json").read_text())["settings"]["method_settings"]["grid"] == grid
    assert run(main, base[:-1] + [str(tmp_path / "vp"), "--grid", "vp"]).exit_code == 0
    assert "grid" not in json.loads((tmp_path / "vp" / "run.json").read_text())["settings"]["method_settings"]
    # DAPS's own grid is EDM's: its run on the VP steps is recorded as the model's own grid and reruns on them
    daps = ["solve", "--task", "super_resolution", "--method", "daps", "--nfe", "4", "--grid", "vp", "--input",
            str(tmp_path / "in"), "--out", str(tmp_path / "daps")]
    assert run(main, daps).exit_code == 0
    recorded = json.loads((tmp_path / "daps" / "run.json").read_text())["settings"]["method_settings"]["grid"]
    assert recorded["kind"] is None
    again = run(main, ["solve", "--task", str(tmp_path / "daps" / "run.json"), "--input", str(tmp_path / "in"),
                       "--out", str(tmp_path / "daps2")])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "daps2" / "run.json").read_text())["settings"] == \
        json.loads((tmp_path / "daps" / "run.json").read_text())["settings"]


def test_a_bench_folder_refuses_another_grid(tmp_path):
    from click.testing import CliRunner

    from dps.cli import main

    base = ["bench", "images", "--methods", "dps", "--tasks", "super_resolution", "--n", "1", "--steps", "2", "--out",
            str(tmp_path / "b")]
    assert CliRunner().invoke(main, base + ["--grid", "edm"]).exit_code == 0
    res = CliRunner().invoke(main, base + ["--grid", "ve"])
    assert res.exit_code == 1 and "grid" in res.output


def test_bench_gmm_refuses_a_grid_for_a_method_that_takes_none():
    from dps.bench.gmm import run_gmm_bench

    with pytest.raises(DPSError, match="method ddrm runs on the VP model's own respaced steps only"):
        run_gmm_bench([2], [1], [5], [0], 50, None, "variance", ("ddrm",), grid={"grid": "edm"})
    with pytest.raises(DPSError, match="derived for the VP process.*use a method that takes any model"):
        run_gmm_bench([2], [1], [5], [0], 50, None, "variance", ("ddrm",), form="ve")


@pytest.mark.parametrize("change,message", [
    ({"_class_name": None}, "no _class_name but noise levels"),
    ({"sigma_max": "big"}, "sigma_max='big', not a number"),
    ({"sigma_min": -1.0}, "sigma_min=-1.0; it must be positive"),
    ({"sigma_min": 60.0}, "sigma_min 60.0 >= sigma_max 50.0"),
])
def test_a_ve_scheduler_config_with_bad_noise_levels_names_the_key(tmp_path, change, message):
    diffusers = pytest.importorskip("diffusers")
    from dps import load_model

    _tiny_unet(diffusers, fourier=True).save_pretrained(tmp_path / "m" / "unet")
    diffusers.ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0).save_pretrained(tmp_path / "m" / "scheduler")
    path = tmp_path / "m" / "scheduler" / "scheduler_config.json"
    cfg = {**json.loads(path.read_text()), **change}
    path.write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path / "m")


def test_sigma_priors_need_their_sample_shape():
    with pytest.raises(ValueError, match="needs event_shape"):
        VEPrior(torch.nn.Identity(), 0.01, 50.0)
    assert VEPrior(torch.nn.Identity(), 0.01, 50.0, event_shape=(1, 4, 4)).data_bounds == (0.0, 1.0)
