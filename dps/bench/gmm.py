"""The Gaussian-mixture posterior benchmark (MCGdiff's, Cardoso et al. 2024).

A 25-component mixture prior in dimension d, a random linear operator (d_y x d) with Gaussian noise,
and the exact posterior. The prior runs in one of three forms (``--parameterization``,
:func:`~dps.diffusion.forms.in_form`): a VP epsilon network of the linear 1000-step schedule (the default), a VE
score network or an EDM-preconditioned network, each computed exactly from the mixture, so the samplers
meet every denoiser adapter; ``--grid`` chooses the noise levels of the methods that take a grid. A sampler is scored by the sliced Wasserstein distance between its samples and
exact posterior samples; the prior's own samples ("knows nothing about y") and a second exact sample set
(the metric's noise floor at this sample size) frame the number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

from ..diffusion.forms import in_form
from ..errors import Diverged
from ..noise import GaussianNoise
from ..priors.analytic import GaussianMixturePrior, LinearImageMixturePrior
from ..solvers.dps import DPSConfig

#: The documented zeta' of each step rule on this benchmark (one value for every cell and step count;
#: benchmarks/gmm/ has the studies behind them), given for GMM_REFERENCE_STEPS steps (rules "paper" and
#: "beta" scale it by sqrt(GMM_REFERENCE_STEPS / N) at N steps, DPSConfig.at_steps; "variance" scales through
#: beta_i).
GMM_DEFAULT_ZETA = {"paper": 0.2, "beta": 0.2, "variance": 4.0}
GMM_REFERENCE_STEPS = 100
#: The benchmark's default step rule: "variance" meets the DeepInverse per-cell-tuned figures at 100 and
#: 1000 steps with the one zeta' above; "paper" over-guides as N grows (its per-step guidance is constant).
GMM_DEFAULT_RULE = "variance"

__all__ = ["GMM_DEFAULT_ZETA", "GMM_REFERENCE_STEPS", "GMM_DEFAULT_RULE", "GMMProblem", "gmm_problem",
           "sliced_wasserstein", "run_cell", "CellResult", "gmm_methods", "gmm_method_config", "run_gmm_bench",
           "gmm_markdown", "gmm_row", "gmm_header", "gmm_columns", "gmm_latent_problem", "latent_methods"]


@dataclass
class GMMProblem:
    """One canonical problem: prior, A (d_y, d), sigma_y, the true x* (d,) and y (d_y,), all float64."""

    prior: GaussianMixturePrior
    A: torch.Tensor
    sigma_y: float
    x_star: torch.Tensor
    y: torch.Tensor
    latent: Optional[GaussianMixturePrior] = None

    def posterior(self):
        return self.prior.posterior(self.A, self.sigma_y, self.y)

    def latent_model(self, form: str = "vp"):
        """For a latent problem: the latent mixture in ``form`` with the known linear decoder x = W z + b and its
        exact left inverse as the encoder (a :class:`~dps.diffusion.latent.LatentPrior` over x (d,))."""
        from ..diffusion.latent import LatentPrior, LinearDecoder, LinearEncoder

        W, b = self.prior.W, self.prior.b
        return LatentPrior(in_form(self.latent, form), LinearDecoder(W, b), LinearEncoder(W, b), self.prior.event_shape,
                           data_range=None)


def mixture_means(d: int) -> torch.Tensor:
    """(25, d): for i, j in {-2..2} (i outer), the 2-vector (8i, 8j) repeated d/2 times."""
    if d % 2:
        raise ValueError(f"the benchmark's dimension must be even, got {d}")
    pairs = [(8.0 * i, 8.0 * j) for i in range(-2, 3) for j in range(-2, 3)]
    return torch.tensor(pairs, dtype=torch.float64).repeat(1, d // 2)


def _operator(g: torch.Generator, d_y: int, d: int) -> tuple[torch.Tensor, float]:
    """A (d_y, d) = U diag(s) V^T with s sorted uniform draws, and sigma_y uniform in (0, max s): the benchmark's
    operator and noise, drawn from ``g`` in this order (A's Gaussian matrix, s, sigma_y)."""
    A0 = torch.randn(d_y, d, generator=g, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(A0, full_matrices=False)
    s = torch.sort(torch.rand(d_y, generator=g, dtype=torch.float64), descending=True).values
    A = U @ torch.diag(s) @ Vh[:d_y]
    return A, float(torch.rand(1, generator=g, dtype=torch.float64) * s.max())


def gmm_problem(d: int, d_y: int, seed: int) -> GMMProblem:
    """The canonical problem generator: all draws from one float64 generator, in the documented order."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(25, generator=g, dtype=torch.float64)
    w = z**2 / (z**2).sum()
    A, sigma_y = _operator(g, d_y, d)
    prior = GaussianMixturePrior(w, mixture_means(d))
    k = torch.multinomial(w, 1, generator=g)
    x_star = prior.means[k[0]] + torch.randn(1, d, generator=g, dtype=torch.float64)[0]
    y = A @ x_star + sigma_y * torch.randn(d_y, generator=g, dtype=torch.float64)
    return GMMProblem(prior=prior, A=A, sigma_y=sigma_y, x_star=x_star, y=y)


def gmm_latent_problem(d: int, latent_dim: int, d_y: int, seed: int) -> GMMProblem:
    """The latent problem: z from the canonical mixture in ``latent_dim`` = D dimensions, x = W z + b with W (d, D)
    of full column rank (entries N(0, 1 / D)) and b ~ N(0, I); A, sigma_y and y drawn as :func:`gmm_problem` draws
    them for x. All draws from one float64 generator in the order: weights, W, b, A, s, sigma_y, component, z*, noise."""
    if latent_dim >= d:
        raise ValueError(f"the latent dimension ({latent_dim}) must be below the dimension ({d})")
    g = torch.Generator().manual_seed(seed)
    zw = torch.randn(25, generator=g, dtype=torch.float64)
    w = zw**2 / (zw**2).sum()
    W = torch.randn(d, latent_dim, generator=g, dtype=torch.float64) / math.sqrt(latent_dim)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    A, sigma_y = _operator(g, d_y, d)
    latent = GaussianMixturePrior(w, mixture_means(latent_dim))
    k = torch.multinomial(w, 1, generator=g)
    z_star = latent.means[k[0]] + torch.randn(1, latent_dim, generator=g, dtype=torch.float64)[0]
    x_star = W @ z_star + b
    y = A @ x_star + sigma_y * torch.randn(d_y, generator=g, dtype=torch.float64)
    return GMMProblem(prior=LinearImageMixturePrior(latent, W, b), A=A, sigma_y=sigma_y, x_star=x_star, y=y,
                      latent=latent)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_directions: int = 100,
                       generator: torch.Generator | None = None) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance of the projections.

    a, b: (n, d) with the same n (the 1-D W1 of equal-size empirical measures is the mean absolute
    difference of the sorted projections).
    """
    if a.shape != b.shape:
        raise ValueError(f"sample sets must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    dirs = torch.randn(n_directions, a.shape[1], generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    pa = torch.sort(a.double() @ dirs.T, dim=0).values
    pb = torch.sort(b.double() @ dirs.T, dim=0).values
    return float((pa - pb).abs().mean(dim=0).mean())


@dataclass
class CellResult:
    """Per-problem distances for one (d, d_y, steps) cell; means via :meth:`summary`.

    ``others``: distances of the comparison methods (``ddrm``, ``mcg``) when they were run.
    """

    dps: list[float]
    prior: list[float]
    floor: list[float]
    others: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        def stats(v: list[float]) -> dict[str, float | None]:
            t = torch.tensor(v, dtype=torch.float64)
            t, diverged = t[~t.isnan()], int(t.isnan().sum())  # diverged problems (nan) are counted, not averaged
            half = 1.96 * float(t.std()) / math.sqrt(len(t)) if len(t) > 1 else None  # None: one problem
            return {"mean": float(t.mean()) if len(t) else None, "ci95": half, **({"diverged": diverged} if diverged
                                                                                  else {})}

        out = {"dps": stats(self.dps), "prior": stats(self.prior), "floor": stats(self.floor)}
        out.update({k: stats(v) for k, v in self.others.items()})
        return out


def gmm_method_config(method: str, config: DPSConfig, grid: Optional[dict] = None):
    """The benchmark's protocol for a comparison method: its settings at the cell's budget.

    Every method spends config.steps network evaluations per sample (its ``Method.at_budget``: DDRM,
    Pi-GDM and DiffPIR that many steps, DAPS levels x ODE steps, PnP-ADMM iterations). MCG takes DPS's
    "paper" step at the cell's zeta' when the DPS run uses rule "paper", else at the paper rule's GMM
    default. DAPS's likelihood is the exact one (tau = sigma_y, its ``tau=None``), as the target is the
    exact posterior. ``grid`` ({"grid", "rho", "sigma_min", "sigma_max"}) goes to the methods that take one.
    """
    from dataclasses import replace

    from ..solvers.methods import METHODS

    if method == "mcg" and config.rule.name != "paper":
        config = DPSConfig(steps=config.steps, zeta=GMM_DEFAULT_ZETA["paper"], reference_steps=GMM_REFERENCE_STEPS)
    m = METHODS[method]
    base = m.default_settings(config)
    if issubclass(m.settings, DPSConfig) and m.from_task is None:  # latent DPS: the cell's DPS settings, DPS's rule
        from dataclasses import fields

        base = m.settings(**{f.name: getattr(config, f.name) for f in fields(DPSConfig)})
        base = replace(base, tuned_steps=None) if hasattr(base, "tuned_steps") else base
    settings = m.at_budget(config.steps, base)
    settings = replace(settings, tau=None) if hasattr(settings, "tau") else settings  # DAPS's: the exact likelihood
    return _on_grid(m, settings, grid)


def _on_grid(m, settings, grid: Optional[dict]):
    """``settings`` on ``grid`` (a DPSError for a method that takes none, as on the command line)."""
    grid = grid or {}
    return m.with_grid(settings, grid.get("grid"), **{k: grid.get(k) for k in ("rho", "sigma_min", "sigma_max")})


def _probe(form: str, latent_dim: Optional[int] = None):
    """A one-component problem of the benchmark's kind (operator, noise, prior and, for ``latent_dim``, the latent
    model) for checking which methods apply."""
    from ..operators import MatrixOperator

    d = 2 if latent_dim is None else 4
    op, noise = MatrixOperator(torch.eye(d, dtype=torch.float64)), GaussianNoise(0.1)
    if latent_dim is None:
        return op, noise, in_form(GaussianMixturePrior(torch.ones(1, dtype=torch.float64),
                                                       torch.zeros(1, 2, dtype=torch.float64)), form), None
    pb = gmm_latent_problem(4, 2, 1, 0)
    return op, noise, in_form(pb.prior, form), pb.latent_model(form)


def gmm_methods(form: str = "vp", latent_dim: Optional[int] = None) -> list[str]:
    """The methods of the method table that apply to the benchmark (a matrix operator, Gaussian noise) with the
    prior in ``form``; with ``latent_dim``, the latent methods on the latent model too."""
    from ..solvers.methods import METHODS

    op, noise, prior, latent = _probe(form, latent_dim)
    return [name for name, m in METHODS.items()
            if m.why_not(op, noise, latent if m.latent and latent is not None else prior) is None]


def latent_methods(form: str = "vp") -> list[str]:
    """The latent methods that apply to the latent benchmark (``--latent-dim``'s default comparison)."""
    from ..solvers.methods import METHODS

    return [m for m in gmm_methods(form, 2) if METHODS[m].latent]


def run_cell(d: int, d_y: int, config: DPSConfig, seeds: list[int], n_samples: int = 2000,
             methods: tuple[str, ...] = (), form: str = "vp", grid: Optional[dict] = None,
             latent_dim: Optional[int] = None, device: Union[str, torch.device, None] = None) -> CellResult:
    """DPS (and the comparison ``methods``), prior and floor distances to the exact posterior per problem seed,
    with the prior in ``form`` and the methods that take a grid on ``grid``. With ``latent_dim`` the problems are
    :func:`gmm_latent_problem`'s: pixel methods see the exact prior of x, latent methods the latent model. The
    problems, exact and prior samples and distances are computed on the CPU; the methods run on ``device`` (None:
    the CPU; elsewhere their noise comes from that device's generators, so the samples differ from the CPU's)."""
    from ..diffusion.forms import in_form
    from ..operators import MatrixOperator
    from ..solvers.methods import METHODS, reconstruct

    config = _on_grid(METHODS["dps"], config, grid)
    dev = torch.device("cpu" if device is None else device)
    out = CellResult([], [], [], {m: [] for m in methods})
    for seed in seeds:
        pb = gmm_problem(d, d_y, seed) if latent_dim is None else gmm_latent_problem(d, latent_dim, d_y, seed)
        post = pb.posterior()
        g = torch.Generator().manual_seed(10_000 + seed)
        exact = post.sample(n_samples, g)
        exact2 = post.sample(n_samples, g)
        prior_samples = pb.prior.sample(n_samples, g)
        op = MatrixOperator(pb.A.to(dev))
        noise = GaussianNoise(min(pb.sigma_y, 1.0))
        prior, y = in_form(pb.prior, form).to(dev), pb.y[None].to(dev)
        g_dps = g if dev.type == "cpu" else torch.Generator(dev).manual_seed(10_000 + seed)
        samples = reconstruct("dps", prior, op, y, noise, config, g_dps, n_samples).x[0].cpu()

        def distance(a: torch.Tensor) -> float:
            return sliced_wasserstein(a, exact, generator=torch.Generator().manual_seed(20_000 + seed))

        out.dps.append(distance(samples))
        out.prior.append(distance(prior_samples))
        out.floor.append(distance(exact2))
        for m in methods:
            gm = torch.Generator(dev).manual_seed(30_000 + seed)
            model = pb.latent_model(form).to(dev) if METHODS[m].latent else prior
            try:
                xm = reconstruct(m, model, op, y, noise, gmm_method_config(m, config, grid), gm, n_samples).x[0].cpu()
            except Diverged:  # a comparison method that diverges on a problem scores nan there, the rest still run
                out.others[m].append(math.nan)
                continue
            out.others[m].append(distance(xm))
    return out


def run_gmm_bench(dims, obs_dims, steps_list, seeds: list[int], n_samples: int, zeta: Optional[float],
                  step_rule: str, methods: tuple[str, ...] = (), on_cell: Optional[Callable[[dict], None]] = None,
                  form: str = "vp", grid: Optional[dict] = None, latent_dim: Optional[int] = None,
                  device: Union[str, torch.device, None] = None) -> dict:
    """Every (d, d_y, steps) cell: DPS at ``zeta`` (None: the rule's GMM default) and the comparison
    ``methods``, the prior in ``form``, on ``grid`` ({"grid", "rho", "sigma_min", "sigma_max"}, None values: the
    method's own), the methods on ``device`` (:func:`run_cell`); ``on_cell(cell)`` is called as each cell finishes.
    Returns the report (JSON values)."""
    from ..errors import DPSError

    if latent_dim is not None and (any(latent_dim >= d for d in dims) or latent_dim < 2 or latent_dim % 2):
        raise DPSError(f"--latent-dim {latent_dim} must be even, at least 2 and below every --dim "
                       f"({', '.join(map(str, dims))})")
    unknown = set(methods) - set(gmm_methods(form, latent_dim))
    if unknown:
        from ..solvers.methods import METHODS as TABLE

        probe_op, noise, probe_prior, probe_latent = _probe(form, latent_dim)
        reasons = [(f"{m} samples latents: it needs --latent-dim" if TABLE[m].latent and probe_latent is None else
                    TABLE[m].why_not(probe_op, noise, probe_latent if TABLE[m].latent else probe_prior)) if m in TABLE
                   else f"no method {m!r}" for m in sorted(unknown)]
        raise DPSError(f"{'; '.join(reasons)} (the {form} parameterization); available: "
                       f"{', '.join(gmm_methods(form, latent_dim))}")
    grid = {k: v for k, v in (grid or {}).items() if v is not None}
    _, _, probe, probe_latent = _probe(form, latent_dim)
    from ..solvers.methods import METHODS

    for name in ("dps", *methods):  # a grid the form cannot take is an error before the first cell
        for n in steps_list:
            settings = gmm_method_config(name, DPSConfig(steps=n), grid) if name != "dps" else \
                _on_grid(METHODS["dps"], DPSConfig(steps=n), grid)
            if METHODS[name].takes_grid:
                settings.grid.build(probe_latent.latent if METHODS[name].latent else probe, getattr(settings, METHODS[name].counter), origin=f"--steps {n}", who=name)
    if any(d % 2 for d in dims):
        raise DPSError("the benchmark's dimension (--dim) must be even")
    if any(d_y > d for d in dims for d_y in obs_dims):
        raise DPSError(f"--obs-dim {max(obs_dims)} exceeds --dim {min(dims)}: the observation dimension must be "
                       "at most the dimension")
    zeta = GMM_DEFAULT_ZETA[step_rule] if zeta is None else zeta
    cells = []
    for d in dims:
        for d_y in obs_dims:
            for n in steps_list:
                cfg = DPSConfig(steps=n, zeta=zeta, step_rule=step_rule, reference_steps=GMM_REFERENCE_STEPS)
                res = run_cell(d, d_y, cfg, seeds, n_samples=n_samples, methods=methods, form=form, grid=grid,
                               latent_dim=latent_dim, device=device).summary()
                cells.append({"dim": d, "obs_dim": d_y, "steps": n, **res})
                if on_cell is not None:
                    on_cell(cells[-1])
    return {"problems": seeds, "samples": n_samples, "step_rule": step_rule, "zeta": zeta,
            "device": str(torch.device("cpu" if device is None else device)),
            "parameterization": form, "grid": grid, "latent_dim": latent_dim, "methods": ["dps", *methods],
            "cells": cells}


def gmm_columns(report: dict) -> tuple[str, ...]:
    return (*report["methods"], "prior", "floor")


def gmm_header(columns: tuple[str, ...]) -> str:
    from ..solvers.methods import METHODS

    return "| d | d_y | steps | " + " | ".join(METHODS[c].title if c in METHODS else c for c in columns) + " |"


def gmm_row(c: dict, columns: tuple[str, ...]) -> str:
    """One cell as a markdown table row: d, d_y, steps, then mean +- 95% interval per column (over the problems
    where the method did not diverge; their count follows)."""
    def text(v: dict) -> str:
        mean = "-" if v["mean"] is None else f"{v['mean']:.3f}"
        return mean + ("" if v["ci95"] is None else f" +- {v['ci95']:.3f}") + \
            (f" ({v['diverged']} diverged)" if v.get("diverged") else "")

    cell = " | ".join(text(c[k]) for k in columns)
    return f"| {c['dim']} | {c['obs_dim']} | {c['steps']} | {cell} |"


def gmm_markdown(report: dict) -> str:
    columns = gmm_columns(report)
    grid = ", ".join(f"{k} {v}" for k, v in report.get("grid", {}).items()) or "each method's own"
    lines = [f"GMM posterior benchmark: sliced W1 to exact posterior samples, mean over problems {report['problems']} "
             f"(+-95% interval), {report['samples']} samples, methods on {report.get('device', 'cpu')}, "
             f"step rule {report['step_rule']!r}, "
             f"zeta'={report['zeta']}, prior in {report.get('parameterization', 'vp')} form, grid: {grid}"
             + (f", latents of dimension {report['latent_dim']} with a linear decoder" if report.get("latent_dim") else ""),
             gmm_header(columns), "|---|---|---|" + "---|" * len(columns)]
    lines += [gmm_row(c, columns) for c in report["cells"]]
    return "\n".join(lines) + "\n"
