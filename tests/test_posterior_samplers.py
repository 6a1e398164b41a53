"""Pi-GDM, DiffPIR and DAPS against closed forms; DPS's step size across step counts; counted budgets."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from dps.noise import GaussianNoise
from dps.operators import MatrixOperator, PhaseRetrieval, SaturatedMotionBlur, Blur
from dps.priors.analytic import GaussianPrior
from dps.solvers.daps import DAPSSettings, langevin_x0, operator_norm_sq
from dps.solvers.pigdm import PiGDMSettings
from dps.solvers.tds import TDSSettings
from dps.solvers.dps import DPSConfig, dps_sample
from dps.solvers.methods import METHODS, reconstruct

D = 4


@pytest.fixture(scope="module")
def gaussian_problem():
    """Prior N(mu, I) on R^4 (unit variance: Pi-GDM's r_t^2 = 1 - abar_t is then exact), A (2 x 4), sigma 0.3."""
    g = torch.Generator().manual_seed(0)
    prior = GaussianPrior(torch.tensor([0.5, -0.3, 0.2, 1.0], dtype=torch.float64), std=1.0)
    A = torch.randn(2, D, generator=g, dtype=torch.float64)
    sigma = 0.3
    y = A @ torch.tensor([1.0, 0.0, -1.0, 0.5], dtype=torch.float64) + sigma * torch.randn(2, generator=g,
                                                                                          dtype=torch.float64)
    return prior, MatrixOperator(A), y, sigma, prior.posterior(A, sigma, y)


def _samples(method, problem, n=4000, nfe=200, **changes):
    prior, op, y, sigma, _ = problem
    m = METHODS[method]
    settings = replace(m.at_budget(nfe, m.default_settings(DPSConfig())), **changes)
    return reconstruct(method, prior, op, y[None], GaussianNoise(sigma), settings, torch.Generator().manual_seed(1),
                       num_samples=n).x[0]


# Tolerances: 4000 samples give a standard error of about 0.013 on a mean and 0.02 on a covariance entry
# (the posterior variances are <= 0.71); the rest is each method's own approximation, stated per method.
@pytest.mark.parametrize("method,mean_tol,cov_tol", [
    ("pigdm", 0.05, 0.08),     # exact conditional score for a unit-variance Gaussian prior: mean and covariance
    ("daps", 0.06, None),      # Langevin at every level; its covariance is not claimed
    ("diffpir", 0.1, None),    # a plug-and-play point iteration with noise: its mean only
])
def test_gaussian_prior_posterior_is_recovered(gaussian_problem, method, mean_tol, cov_tol):
    post = gaussian_problem[-1]
    x = _samples(method, gaussian_problem, **({"tau": None} if method == "daps" else {}))  # DAPS: exact likelihood
    assert (x.mean(0) - post.mean).abs().max() < mean_tol
    if cov_tol is not None:
        assert (torch.cov(x.T) - post.cov).abs().max() < cov_tol
    prior_mean_gap = (gaussian_problem[0].mean - post.mean).abs().max()
    assert prior_mean_gap > 4 * mean_tol  # the test can tell the posterior from the prior


def test_pigdm_without_guidance_would_fail(gaussian_problem):
    """The same check catches a sampler that ignores y (a broken guidance term)."""
    prior, op, y, sigma, post = gaussian_problem
    far = GaussianNoise(sigma)
    x = reconstruct("pigdm", prior, op, (y + 5.0)[None], far, PiGDMSettings(steps=100),
                    torch.Generator().manual_seed(1), num_samples=2000).x[0]
    assert (x.mean(0) - post.mean).abs().max() > 0.2


def test_langevin_step_has_the_gaussian_target_as_stationary_law():
    """U(x) = ||y - A x||^2 / (2 tau^2) + ||x - m||^2 / (2 r^2) is quadratic: its law is N(C (A^T y / tau^2 +
    m / r^2), C), C^-1 = A^T A / tau^2 + I / r^2. Many chains of DAPS's Langevin step (small lr) reach it;
    unadjusted Langevin's known bias is an O(lr) variance inflation, well inside the tolerance at lr 0.02."""
    g = torch.Generator().manual_seed(3)
    A = torch.randn(3, D, generator=g, dtype=torch.float64)
    y = torch.randn(3, generator=g, dtype=torch.float64)
    m = torch.randn(D, generator=g, dtype=torch.float64)
    tau, r, n = 0.5, 0.8, 4000
    C = torch.linalg.inv(A.T @ A / tau ** 2 + torch.eye(D, dtype=torch.float64) / r ** 2)
    mean = C @ (A.T @ y / tau ** 2 + m / r ** 2)
    grad = lambda x: (x @ A.T - y) @ A / tau ** 2  # noqa: E731  (gradient of ||y - A x||^2 / (2 tau^2))
    L = float(torch.linalg.matrix_norm(A, 2)) ** 2 / tau ** 2
    x = langevin_x0(m.expand(n, D), r, grad, torch.full((n,), L, dtype=torch.float64), 1500, 0.02, g)
    assert (x.mean(0) - mean).abs().max() < 0.03
    assert (torch.cov(x.T) - C).abs().max() < 0.03
    # and it is not the start: the chains moved to the target's spread
    assert (torch.cov(x.T).diagonal() > 0.5 * C.diagonal()).all()


def test_langevin_chain_of_a_sample_does_not_depend_on_its_batch():
    """With per-sample generators a sample's Langevin chain is the same alone as in a batch."""
    m = torch.tensor([[0.3, -0.2, 0.1, 0.0]], dtype=torch.float64)
    grad = lambda x: 2.0 * x  # noqa: E731

    def chains(n):
        gens = [torch.Generator().manual_seed(7 + k) for k in range(n)]
        return langevin_x0(m.expand(n, D), 0.5, grad, torch.full((n,), 2.0, dtype=torch.float64), 12, 0.1, gens)

    batch = chains(3)
    assert torch.equal(chains(1)[0], batch[0])
    assert not torch.allclose(batch[0], batch[1])  # distinct generators, distinct chains


def test_operator_norm_by_power_iteration():
    A = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    est = operator_norm_sq(MatrixOperator(A), torch.zeros(1, 6, dtype=torch.float64), iters=50)
    assert math.isclose(est, float(torch.linalg.matrix_norm(A, 2)) ** 2, rel_tol=1e-6)
    pr = PhaseRetrieval((1, 8, 8), 2.0)  # |F pad x| with an orthonormal F is 1-Lipschitz
    assert operator_norm_sq(pr, torch.rand(1, 1, 8, 8, dtype=torch.float64) + 0.1) <= 1.0 + 1e-6


@pytest.mark.parametrize("make", [lambda: PhaseRetrieval((1, 16, 16), 2.0),
                                  lambda: SaturatedMotionBlur((1, 16, 16), blur=Blur.motion((1, 16, 16), size=5))])
def test_daps_fits_nonlinear_measurements(make):
    """DAPS needs no linearity: on phase retrieval and a saturated blur with a smooth prior it brings the
    residual to less than half the prior mean's."""
    op = make()
    prior = GaussianPrior(torch.zeros(1, 16, 16, dtype=torch.float64), std=1.0)
    prior.data_scale, prior.data_offset, prior.data_bounds = 0.5, 0.5, (0.0, 1.0)
    x = prior.to_data(prior.sample(2, torch.Generator().manual_seed(0))).clamp(0, 1)
    y = op(x)
    res = reconstruct("daps", prior, op, y, GaussianNoise(0.01), DAPSSettings(levels=30, ode_steps=1, langevin_steps=100),
                      [torch.Generator().manual_seed(k) for k in range(2)])
    start = (y - op(torch.full_like(x, 0.5))).flatten(1).norm(dim=1)
    assert (res.residual[:, 0] < 0.5 * start).all(), (res.residual, start)


@pytest.mark.parametrize("method", [m for m in METHODS.values() if m.counter is not None], ids=lambda m: m.name)
def test_budget_is_what_the_method_spends(gaussian_problem, method):
    """The NFE column is counted by a hook on the prior; the one budget rule spends what it promises, DAPS with
    several ODE steps per level included."""
    prior, op, y, sigma, _ = gaussian_problem
    if method.latent:  # a latent method: the latent problem of the exact-posterior benchmark
        from dps.bench.gmm import gmm_latent_problem

        pb = gmm_latent_problem(8, 4, 2, 0)
        prior, op, y, sigma = pb.latent_model(), MatrixOperator(pb.A), pb.y, pb.sigma_y
    for nfe in (20, 60):
        settings = method.at_budget(nfe, method.default_settings(DPSConfig(zeta=0.1)))
        res = reconstruct(method, prior, op, y[None], GaussianNoise(sigma), settings, torch.Generator().manual_seed(0),
                          num_samples=3)
        assert res.extras["nfe"] == nfe, (method.name, res.extras["nfe"])
    if method.name == "daps":
        five = method.at_budget(60, DAPSSettings(ode_steps=5))
        assert (five.levels, five.ode_steps) == (12, 5)
        res = reconstruct(method, prior, op, y[None], GaussianNoise(sigma), five, torch.Generator().manual_seed(0))
        assert res.extras["nfe"] == 60


def test_dps_step_size_follows_the_step_count():
    """zeta' is given for reference_steps = R: the per-step zeta of rules 'paper' and 'beta' scales by
    sqrt(R / N), so the total guidance grows as sqrt(N) (not as N); 'variance' needs no factor."""
    prior = GaussianPrior(torch.zeros(D, dtype=torch.float64))
    op = MatrixOperator(torch.eye(D, dtype=torch.float64)[:2])
    y = torch.ones(1, 2, dtype=torch.float64)
    totals = {}
    for n in (50, 200):
        zetas, norms = [], []
        dps_sample(prior, op, y, GaussianNoise(0.1), DPSConfig(steps=n, zeta=0.5, reference_steps=100),
                   generator=torch.Generator().manual_seed(0),
                   callback=lambda s: (zetas.append(float(s["zeta"][0])), norms.append(float(s["residual"][0]))))
        per_step = [z * r for z, r in zip(zetas, norms)]  # rule "paper": zeta_i ||r|| = zeta' sqrt(R / N)
        assert max(abs(v - 0.5 * math.sqrt(100 / n)) for v in per_step) < 1e-9
        totals[n] = sum(per_step)
    assert math.isclose(totals[200] / totals[50], 2.0, rel_tol=1e-9)  # sqrt(200 / 50)
    assert DPSConfig(steps=50, zeta=2.0, step_rule="variance").zeta_per_step == 2.0
    assert DPSConfig(steps=250, zeta=1.0, reference_steps=1000).zeta_per_step == 2.0  # a 1000-step zeta' at 250
    assert DPSConfig(steps=250, zeta=1.0).zeta_per_step == 1.0  # without reference_steps: per step, as given


def test_step_count_overrides_keep_the_tasks_zeta_meaning():
    """Every override of a step count goes through DPSConfig.at_steps: the task's own steps become R."""
    from dps.runs.demo import DEMO_ZETA_STEPS, demo_tasks
    from dps.tasks import load_task

    cfg = DPSConfig(steps=1000, zeta=1.0)
    assert cfg.at_steps(100).reference_steps == 1000 and cfg.at_steps(100).at_steps(10).reference_steps == 1000
    assert cfg.at_steps(1000).reference_steps is None  # back at its own count: nothing to scale
    task = load_task("super_resolution", preset="paper-ffhq")
    assert task.with_steps(100).dps_config().zeta_per_step == pytest.approx(task.dps_config().zeta * math.sqrt(10))
    assert task.with_steps(100).with_steps(1000).dps_config() == task.dps_config()
    (_, demo), = demo_tasks(names=["super_resolution"])
    (_, fast), = demo_tasks(50, names=["super_resolution"])
    assert demo.dps_config().steps == DEMO_ZETA_STEPS and demo.dps_config().reference_steps is None
    assert fast.dps_config().zeta_per_step == pytest.approx(demo.dps_config().zeta * math.sqrt(DEMO_ZETA_STEPS / 50))


def test_tds_is_exact_with_an_exact_twisting_function():
    """For a Gaussian prior N(mu, s^2 I) TDS's twisting p~(y | x_t) (variance Prior.x0_variance) is the exact
    p(y | x_t), so with any s (here 0.5, where Pi-GDM's unit-variance r_t^2 is wrong) its particles are exact
    posterior samples: mean and covariance within the Monte Carlo error of 8000 particles (after the final
    resampling about 5000 distinct ones, so the error is larger than for independent samples)."""
    g = torch.Generator().manual_seed(0)
    prior = GaussianPrior(torch.tensor([0.5, -0.3, 0.2, 1.0], dtype=torch.float64), std=0.5)
    A = torch.randn(2, D, generator=g, dtype=torch.float64)
    x_true = torch.tensor([1.0, 0.0, -1.0, 0.5], dtype=torch.float64)
    y = A @ x_true + 0.3 * torch.randn(2, generator=g, dtype=torch.float64)
    post = prior.posterior(A, 0.3, y)
    x = reconstruct("tds", prior, MatrixOperator(A), y[None], GaussianNoise(0.3), TDSSettings(steps=200),
                    torch.Generator().manual_seed(1), num_samples=8000).x[0]
    assert (x.mean(0) - post.mean).abs().max() < 0.04
    assert (torch.cov(x.T) - post.cov).abs().max() < 0.03
    assert (prior.mean - post.mean).abs().max() > 0.3  # the test can tell the posterior from the prior


def test_tds_recovers_a_mixture_posterior_where_single_chains_fail():
    """GMM benchmark problem d = 8, d_y = 1, seed 3 (sigma_y 0.045): Pi-GDM at 100 steps puts its samples in
    the wrong modes (measured 13.2 at 2000 samples); TDS's resampled particles, with the same guidance as
    proposal, land near the floor of the metric (0.12 at 2000 samples; floor 0.11 on d_y = 1)."""
    from dps.bench.gmm import gmm_problem, sliced_wasserstein

    pb = gmm_problem(8, 1, 3)
    exact = pb.posterior().sample(1000, torch.Generator().manual_seed(0))
    op, noise = MatrixOperator(pb.A), GaussianNoise(pb.sigma_y)
    dist = {}
    for m in ("tds", "pigdm"):
        x = reconstruct(m, pb.prior, op, pb.y[None], noise, METHODS[m].settings(steps=100),
                        torch.Generator().manual_seed(1), num_samples=1000).x[0]
        dist[m] = sliced_wasserstein(x, exact, generator=torch.Generator().manual_seed(2))
    assert dist["tds"] < 0.5 and dist["pigdm"] > 2.0, dist


def test_systematic_resampling_keeps_each_particle_about_k_w_times():
    from dps.solvers.tds import effective_sample_size, systematic_resample

    K = 8
    w = torch.tensor([[0.5, 0.25, 0.125, 0.125, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0], [1 / K] * K],
                     dtype=torch.float64)
    log_w = w.clamp_min(1e-300).log()
    gens = [torch.Generator().manual_seed(k) for k in range(3)]
    idx = systematic_resample(log_w, gens)
    counts = torch.stack([torch.bincount(row, minlength=K) for row in idx]).double()
    assert ((counts - K * w).abs() < 1.0 + 1e-9).all()  # floor or ceil of K w_k: systematic resampling
    assert torch.equal(idx[1], torch.full((K,), 2)) and torch.equal(idx[2], torch.arange(K))
    torch.testing.assert_close(effective_sample_size(log_w), torch.tensor([1 / (0.25 + 0.0625 + 2 / 64), 1.0, K],
                                                                          dtype=torch.float64))


def test_tds_particles_interact_only_within_their_measurement():
    """The K samples of a measurement are one particle system; another measurement in the batch changes
    nothing (per-sample generators, resampling decided and seeded per measurement). On a mixture prior the
    two measurements' weights degenerate at different steps."""
    from dps.bench.gmm import gmm_problem

    pb = gmm_problem(8, 2, 1)
    op, noise, K = MatrixOperator(pb.A), GaussianNoise(pb.sigma_y), 40
    gens = lambda n: [torch.Generator().manual_seed(50 + k) for k in range(n)]  # noqa: E731
    two = torch.stack([pb.y, pb.y + 3.0])
    both = reconstruct("tds", pb.prior, op, two, noise, TDSSettings(steps=30), gens(2 * K), num_samples=K).x
    alone = reconstruct("tds", pb.prior, op, pb.y[None], noise, TDSSettings(steps=30), gens(K), num_samples=K).x
    torch.testing.assert_close(both[0], alone[0], rtol=0, atol=1e-12)
    assert len(torch.unique(alone[0], dim=0)) < K  # it did resample


def test_tds_rejects_a_bad_ess_threshold(gaussian_problem):
    from dps.errors import DPSError

    prior, op, y, sigma, _ = gaussian_problem
    with pytest.raises(DPSError, match="ess_threshold"):
        TDSSettings(steps=5, ess_threshold=1.5)
    with pytest.raises(DPSError, match="takes TDSSettings"):  # another method's settings are refused
        reconstruct("tds", prior, op, y[None], GaussianNoise(sigma), DPSConfig(), torch.Generator().manual_seed(0),
                    num_samples=2)
