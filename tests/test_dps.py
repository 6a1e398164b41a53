"""DPS against exact answers: prior moments, the GMM posterior benchmark, Tweedie, independence, golden values."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dps.bench.gmm import GMM_DEFAULT_RULE, GMM_DEFAULT_ZETA, gmm_problem, run_cell, sliced_wasserstein
from dps.diffusion.denoiser import NetworkPrior
from dps.diffusion.schedule import make_schedule, respace
from dps.noise import GaussianNoise, PoissonNoise
from dps.operators import Inpainting
from dps.priors.analytic import GaussianMixturePrior, GaussianPrior
from dps.solvers.dps import DPSConfig, dps_sample


class TinyEps(nn.Module):
    """A small conv net with GroupNorm (per-sample), standing in for a real noise predictor."""

    def __init__(self, channels: int = 1, out_mult: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(channels + 1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(),
                                 nn.Conv2d(8, channels * out_mult, 3, padding=1))
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        temb = (t.to(x.dtype) / 1000).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        return 0.1 * self.net(torch.cat([x, temb], dim=1))


def image_prior(learn_sigma: bool = False) -> NetworkPrior:
    prior = NetworkPrior(TinyEps(1, 2 if learn_sigma else 1).double(), make_schedule("linear"),
                         learn_sigma=learn_sigma)
    prior.event_shape = (1, 8, 8)
    prior.data_bounds = (0.0, 1.0)
    return prior


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


@pytest.mark.parametrize("sampler,eta,steps", [("ddpm", 0.0, 1000), ("ddim", 0.0, 200)])
def test_unguided_sampler_reproduces_gaussian_prior_moments(sampler: str, eta: float, steps: int) -> None:
    """zeta = 0 samples the prior. (Ancestral DDPM with fixed_small variance shrinks the spread by about
    7% at 100 steps, a discretisation error that vanishes as steps grow; 1000 steps is within 2%.)"""
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    prior = GaussianPrior(mean, std=0.5)
    y = torch.zeros(1, 3, dtype=torch.float64)
    cfg = DPSConfig(steps=steps, zeta=0.0, sampler=sampler, eta=eta)
    x = dps_sample(prior, identity, y, GaussianNoise(0.1), cfg, num_samples=4000,
                   generator=torch.Generator().manual_seed(0)).x[0]
    torch.testing.assert_close(x.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(x.std(0), torch.full((3,), 0.5, dtype=torch.float64), atol=0.025, rtol=0)


def test_gaussian_prior_tweedie_is_the_exact_posterior_mean() -> None:
    mu, s = torch.tensor([0.3, -1.0], dtype=torch.float64), 0.7
    prior = GaussianPrior(mu, s)
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.full((5,), 400)
    a = prior.abar(t)[:, None]
    expected = mu + s**2 * a.sqrt() / (a * s**2 + 1 - a) * (x - a.sqrt() * mu)
    torch.testing.assert_close(prior(x, t).x0, expected)


def test_mixture_score_matches_autograd_of_log_density() -> None:
    pb = gmm_problem(4, 1, seed=0)
    prior = pb.prior
    x = (3 * torch.randn(6, 4, dtype=torch.float64)).requires_grad_(True)
    t = torch.full((6,), 250)
    a = float(prior.abar(t)[0])
    comp = -0.5 * ((x[:, None, :] - a**0.5 * prior.means[None]) ** 2).sum(-1)
    logp = torch.logsumexp(prior.weights.log() + comp, dim=1).sum()
    (score,) = torch.autograd.grad(logp, x)
    eps = prior(x.detach(), t).eps
    torch.testing.assert_close(eps, -((1 - a) ** 0.5) * score)


def test_gmm_posterior_is_exact_by_importance_weights() -> None:
    """The closed-form mixture posterior matches self-normalised importance sampling from the prior."""
    pb = gmm_problem(2, 1, seed=3)
    g = torch.Generator().manual_seed(0)
    xs = pb.prior.sample(400_000, g)
    logw = -0.5 * ((pb.y - xs @ pb.A.T) ** 2).sum(1) / pb.sigma_y**2
    w = torch.softmax(logw, 0)
    is_mean = (w[:, None] * xs).sum(0)
    post = pb.posterior()
    exact_mean = (post.weights[:, None] * post.means).sum(0)
    torch.testing.assert_close(is_mean, exact_mean, atol=0.1, rtol=0)


# Pinned from `dps bench gmm --steps 100 --problems 3 --samples 1000` (1.96 / 2.55 / 0.22 measured) at the
# GMM default settings; DPS must stay far below the prior and no worse than these (with margin).
PINNED_GMM = {1: 2.2, 2: 2.8, 4: 0.25}


@pytest.mark.parametrize("d_y", [1, 2, 4])
def test_gmm_benchmark_dps_far_below_prior(d_y: int) -> None:
    cfg = DPSConfig(steps=100, zeta=GMM_DEFAULT_ZETA["paper"])
    res = run_cell(8, d_y, cfg, seeds=[0, 1, 2], n_samples=1000).summary()
    dps, prior, floor = res["dps"]["mean"], res["prior"]["mean"], res["floor"]["mean"]
    assert floor < 0.3 and prior > 5  # the metric separates exact samples from the prior
    assert dps < 0.4 * prior
    assert dps < PINNED_GMM[d_y]


# Rule "variance" at the benchmark's documented default (GMM_DEFAULT_RULE, zeta' 4), same cells: measured
# 0.59 / 0.77 / 0.18 by `dps bench gmm --steps 100 --problems 3 --samples 1000` (with `--step-rule paper`:
# 1.96 / 2.55 / 0.22):
# pinned with margin, below the paper rule's pins.
PINNED_GMM_VARIANCE = {1: 0.8, 2: 1.0, 4: 0.24}


@pytest.mark.parametrize("d_y", [1, 2, 4])
def test_gmm_benchmark_default_rule(d_y: int) -> None:
    cfg = DPSConfig(steps=100, zeta=GMM_DEFAULT_ZETA[GMM_DEFAULT_RULE], step_rule=GMM_DEFAULT_RULE)
    res = run_cell(8, d_y, cfg, seeds=[0, 1, 2], n_samples=1000).summary()
    assert res["dps"]["mean"] < PINNED_GMM_VARIANCE[d_y]


def test_variance_rule_uses_the_exact_predictive_variance() -> None:
    """For a Gaussian prior, Cov[x0 | x_i] = s^2 (1 - abar) / (abar s^2 + 1 - abar) I exactly, so the step
    of rule "variance" must equal zeta' beta_i / (2 sqrt(alpha_i) (sigma^2 + r^T A C A^T r / |r|^2))."""
    s, sigma, zeta = 0.7, 0.3, 2.0
    prior = GaussianPrior(torch.tensor([0.2, -0.4, 1.0, 0.0], dtype=torch.float64), std=s)
    A = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    cfg = DPSConfig(steps=20, zeta=zeta, step_rule="variance")
    sch = respace(prior.schedule, 20)
    seen = []

    def check(st: dict) -> None:
        i, x0 = st["i"], st["x0"]
        abar, beta = float(sch.alphas_cumprod[i]), float(sch.betas[i])
        c = s**2 * (1 - abar) / (abar * s**2 + 1 - abar)
        r = y - x0 @ A.T
        v = sigma**2 + c * ((r @ A) ** 2).sum(1) / (r**2).sum(1)
        torch.testing.assert_close(st["zeta"], zeta * beta / (2 * (1 - beta) ** 0.5 * v))
        seen.append(i)

    dps_sample(prior, lambda x: x @ A.T, y, GaussianNoise(sigma), cfg, num_samples=5,
               generator=torch.Generator().manual_seed(1), callback=check)
    assert seen == list(reversed(range(20)))


def test_variance_rule_with_unit_zeta_samples_a_gaussian_posterior_exactly() -> None:
    """Gaussian prior, one measurement: p(y | x_i) = N(y; a^T x0_hat, sigma^2 + a^T C a) exactly, so zeta' = 1
    gives the exact conditional score and DDPM samples the exact posterior (up to discretisation)."""
    mean = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    prior = GaussianPrior(mean, std=1.0)
    A = torch.tensor([[1.0, 0.5, -0.5]], dtype=torch.float64)
    y, sigma = torch.tensor([2.0], dtype=torch.float64), 0.2
    x = dps_sample(prior, lambda v: v @ A.T, y[None], GaussianNoise(sigma),
                   DPSConfig(steps=1000, zeta=1.0, step_rule="variance"), num_samples=4000,
                   generator=torch.Generator().manual_seed(0)).x[0]
    post = prior.posterior(A, sigma, y)
    torch.testing.assert_close(x.mean(0), post.mean, atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), post.cov, atol=0.05, rtol=0)
    var_a = float(A @ post.cov @ A.T)  # the posterior variance along the measured direction (0.039)
    assert float((x @ A.T).var()) == pytest.approx(var_a, rel=0.1)
    # The paper's rule at the same zeta' is not calibrated this way: its spread along a differs.
    xp = dps_sample(prior, lambda v: v @ A.T, y[None], GaussianNoise(sigma), DPSConfig(steps=1000, zeta=1.0),
                    num_samples=4000, generator=torch.Generator().manual_seed(0)).x[0]
    assert float((xp @ A.T).var()) != pytest.approx(var_a, rel=0.3)


def test_sliced_wasserstein_sanity() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 8, generator=g, dtype=torch.float64)
    b = torch.randn(2000, 8, generator=g, dtype=torch.float64)
    assert sliced_wasserstein(a, b, generator=g) < 0.1
    # a shift by c along a random unit direction u moves each projection by c <u, v>: mean |<u, v>| c
    shift = 3.0 * torch.ones(8, dtype=torch.float64) / math.sqrt(8)
    d = sliced_wasserstein(a, b + shift, n_directions=2000, generator=g)
    assert d == pytest.approx(3.0 * math.sqrt(2 / (math.pi * 8)), rel=0.15)


def test_batch_independence_and_seeding() -> None:
    prior = image_prior()
    op = Inpainting.random((1, 8, 8), missing=0.5, generator=torch.Generator().manual_seed(0))
    y = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cfg = DPSConfig(steps=20, zeta=0.1)  # a random network: larger steps run off (DivergenceGuard)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    full = dps_sample(prior, op, y, GaussianNoise(0.05), cfg, num_samples=2, generator=gens(range(6))).x
    alone = dps_sample(prior, op, y[1:2], GaussianNoise(0.05), cfg, num_samples=2, generator=gens([2, 3])).x
    torch.testing.assert_close(alone[0], full[1], rtol=0, atol=1e-12)
    again = dps_sample(prior, op, y, GaussianNoise(0.05), cfg, num_samples=2, generator=gens(range(6))).x
    assert torch.equal(again, full)
    assert full.shape == (3, 2, 1, 8, 8) and float(full.min()) >= 0 and float(full.max()) <= 1


def test_one_forward_per_step_and_no_parameter_gradients() -> None:
    prior = image_prior()
    op = Inpainting.box((1, 8, 8), box=4, margin=1, centred=True)
    y = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    prior.network.calls = 0
    dps_sample(prior, op, y, GaussianNoise(0.05), DPSConfig(steps=15, zeta=0.1), generator=torch.Generator().manual_seed(0))
    assert prior.network.calls == 15
    for p in prior.parameters():
        assert p.grad is None and p.requires_grad


def test_learned_range_with_v_minus_one_equals_fixed_small() -> None:
    class ZeroEps(nn.Module):
        def forward(self, x, t):
            return torch.cat([torch.zeros_like(x), -torch.ones_like(x)], dim=1)

    prior = NetworkPrior(ZeroEps(), make_schedule("linear"), learn_sigma=True, data_range=None, event_shape=(1, 4, 4))
    y = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    run = lambda var: dps_sample(prior, identity, y, GaussianNoise(0.1), DPSConfig(steps=10, zeta=0.0, variance=var),
                                 generator=torch.Generator().manual_seed(0)).x
    torch.testing.assert_close(run(None), run("fixed_small"))
    assert not torch.allclose(run(None), run("fixed_large"))


def test_guidance_fits_the_measurement_gaussian_and_poisson() -> None:
    prior = GaussianPrior(torch.full((1, 8, 8), 0.0, dtype=torch.float64), std=1.0)
    op = Inpainting.random((1, 8, 8), missing=0.5, generator=torch.Generator().manual_seed(0))
    x_true = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for noise, near_noise_level in [(GaussianNoise(0.02), True), (PoissonNoise(4.0), False)]:
        y = noise(op(x_true), torch.Generator().manual_seed(3))
        truth = float(noise.sq_norm(y, op(x_true)).sqrt())  # the residual the noise itself leaves
        fit = dps_sample(prior, op, y, noise, DPSConfig(steps=200, zeta=0.1), num_samples=8,
                         generator=torch.Generator().manual_seed(0)).residual
        free = dps_sample(prior, op, y, noise, DPSConfig(steps=200, zeta=0.0), num_samples=8,
                          generator=torch.Generator().manual_seed(0)).residual
        assert float(fit.mean()) < 0.3 * float(free.mean())
        if near_noise_level:  # Poisson's weights make the constant normalised step oscillate above it
            assert float(fit.mean()) < 2 * truth


def test_divergence_names_the_step_size() -> None:
    pb = gmm_problem(8, 2, seed=0)
    with pytest.raises(FloatingPointError, match="zeta'=1e\\+300"):
        dps_sample(pb.prior, lambda x: x @ pb.A.T, pb.y[None], GaussianNoise(0.1), DPSConfig(steps=10, zeta=1e300),
                   num_samples=4, generator=torch.Generator().manual_seed(0))


def test_golden_values_short_run() -> None:
    """A short deterministic run pinned to 1e-8: any silent change of schedule, step or guidance fails."""
    pb = gmm_problem(4, 2, seed=1)
    x = dps_sample(pb.prior, lambda v: v @ pb.A.T, pb.y[None], GaussianNoise(pb.sigma_y), DPSConfig(steps=10),
                   num_samples=2, generator=torch.Generator().manual_seed(0)).x[0]
    golden = torch.tensor(GOLDEN, dtype=torch.float64)
    torch.testing.assert_close(x, golden, rtol=0, atol=1e-8)


GOLDEN = [[-16.193540768688, -1.291272838524, -14.402022711475, -0.314008350362], [9.218846363033, 14.131537878661, 9.499884608204, 14.666200433528]]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="step_rule"):
        DPSConfig(step_rule="adaptive")
    with pytest.raises(ValueError, match="sampler"):
        DPSConfig(sampler="euler")
    prior = GaussianMixturePrior(torch.ones(2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="x_T must have shape"):
        dps_sample(prior, identity, torch.zeros(1, 3), x_T=torch.zeros(2, 2), config=DPSConfig(steps=2))


def test_step_rule_objects_and_read_only_callback() -> None:
    """A StepRule object passed by the user runs as the built-in of the same formula; a callback that writes
    into what it gets changes nothing (it receives copies); post_step is the hook that may change x."""
    from dps.solvers.dps import PaperRule, StepRule

    class MyPaper(StepRule):
        name = "mine"

        def __call__(self, zeta, residual_norm, schedule, i, **_):
            return zeta / residual_norm

    pb = gmm_problem(4, 2, seed=1)
    run = lambda cfg, **kw: dps_sample(pb.prior, lambda v: v @ pb.A.T, pb.y[None], GaussianNoise(pb.sigma_y), cfg,
                                       num_samples=3, generator=torch.Generator().manual_seed(0), **kw).x
    ref = run(DPSConfig(steps=10))
    torch.testing.assert_close(run(DPSConfig(steps=10, step_rule=MyPaper())), ref, rtol=0, atol=1e-12)
    assert DPSConfig(step_rule=PaperRule()).to_dict()["step_rule"] == "paper"

    def vandal(state: dict) -> None:
        for key in ("x", "x0", "residual", "zeta"):
            state[key].fill_(1e6)

    assert torch.equal(run(DPSConfig(steps=10), callback=vandal), ref)
    moved = run(DPSConfig(steps=10), post_step=lambda x, i: torch.zeros_like(x) if i == 0 else x)
    assert not torch.equal(moved, ref)


def test_bench_gmm_reports_each_cell_as_it_finishes() -> None:
    """A long `dps bench gmm` run shows every finished cell's numbers on stderr (an interrupted run keeps
    them), the same rows as the final table on stdout."""
    from click.testing import CliRunner

    from dps.cli import main

    args = ["bench", "gmm", "--dim", "4", "--obs-dim", "1,2", "--steps", "5", "--problems", "1", "--samples", "50"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    done = [line.split("done ", 1)[1] for line in r.stderr.splitlines() if line.strip().startswith("done ")]
    table = [line for line in r.stdout.splitlines() if line.startswith("| 4 |")]
    assert len(done) == 2 and done == table
    assert "| 4 | 1 | 5 | " in table[0] and "| 4 | 2 | 5 | " in table[1]
