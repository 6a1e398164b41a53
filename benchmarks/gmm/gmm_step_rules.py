"""Reproduce the "rules tried (not adopted)" rows of benchmarks/gmm/README.md (canonical problems, seeds 0-4).

    python benchmarks/gmm/gmm_step_rules.py --rule beta-abs --steps 100 --zeta 1,2,4
    python benchmarks/gmm/gmm_step_rules.py --rule likelihood-sde --steps 100 --zeta 0.3,1
    python benchmarks/gmm/gmm_step_rules.py --rule likelihood-sde-damped --steps 100 --zeta 1,3

Each rule is a :class:`dps.solvers.dps.StepRule` passed in ``DPSConfig(step_rule=...)`` (an experiment, not a
shipped option).
"""
from __future__ import annotations

import argparse

import torch

from dps.bench.gmm import gmm_problem, sliced_wasserstein
from dps.noise import GaussianNoise
from dps.solvers.dps import DPSConfig, StepRule, dps_sample

STATE: dict = {}


def beta_abs(zeta, residual_norm, schedule, i, **_):
    """zeta' beta_i / ||r|| (the total guidance sum_i beta_i does not grow with N)."""
    return zeta * float(schedule.betas[i]) / residual_norm.clamp_min(1e-30)


def likelihood_sde(zeta, residual_norm, schedule, i, damped=False, **_):
    """zeta' beta_i / (2 sqrt(alpha_i) (sigma_y^2 + (1 - abar_i) lambda)), lambda = mean eigenvalue of A A^T;
    damped: divided by 1 + 2 zeta_i lambda_max / sqrt(abar_i)."""
    b = float(schedule.betas[i])
    abar = float(schedule.alphas_cumprod[i])
    z = zeta * b / (2 * (1 - b) ** 0.5 * (STATE["s2"] + (1 - abar) * STATE["lam"]))
    if damped:
        z = z / (1 + 2 * z * STATE["lmax"] / abar ** 0.5)
    return torch.full_like(residual_norm, z)


class Rule(StepRule):
    def __init__(self, name, fn) -> None:
        self.name, self.fn = name, fn

    def __call__(self, zeta, residual_norm, schedule, i, **kw):
        return self.fn(zeta, residual_norm, schedule, i, **kw)


RULES = {"beta-abs": Rule("beta-abs", beta_abs), "likelihood-sde": Rule("likelihood-sde", likelihood_sde),
         "likelihood-sde-damped": Rule("likelihood-sde-damped", lambda *a, **k: likelihood_sde(*a, damped=True))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rule", choices=sorted(RULES), required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--zeta", default="1")
    ap.add_argument("--problems", type=int, default=5)
    args = ap.parse_args()
    for zeta in [float(z) for z in args.zeta.split(",")]:
        row = []
        for d_y in (1, 2, 4):
            dist = []
            for seed in range(args.problems):
                pb = gmm_problem(8, d_y, seed)
                g = torch.Generator().manual_seed(10_000 + seed)
                post = pb.posterior()
                exact = post.sample(2000, g)
                post.sample(2000, g)
                pb.prior.sample(2000, g)  # same draws as dps.bench.gmm.run_cell
                A = pb.A
                STATE.update(s2=pb.sigma_y ** 2, lam=float((A ** 2).sum()) / d_y,
                             lmax=float(torch.linalg.matrix_norm(A, 2)) ** 2)
                res = dps_sample(pb.prior, lambda x: x @ A.T, pb.y[None], GaussianNoise(pb.sigma_y),
                                 DPSConfig(steps=args.steps, zeta=zeta, step_rule=RULES[args.rule]), num_samples=2000, generator=g)
                dist.append(sliced_wasserstein(res.x[0], exact, generator=torch.Generator().manual_seed(20_000 + seed)))
            row.append(sum(dist) / len(dist))
        print(f"{args.rule} steps={args.steps} zeta'={zeta}: " + " / ".join(f"{v:.2f}" for v in row), flush=True)


if __name__ == "__main__":
    main()
