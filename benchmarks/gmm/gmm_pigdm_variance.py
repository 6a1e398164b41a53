"""Pi-GDM on the GMM benchmark with other choices of r_t^2 (the variance of its Gaussian p(x_0 | x_t)): the
"Pi-GDM variants tried (not adopted)" rows of benchmarks/gmm/README.md (canonical problems, seeds 0-4, 2,000 samples).

    python benchmarks/gmm/gmm_pigdm_variance.py --r2 paper,data,jacobian --steps 100 --dim 8

- ``paper``: r_t^2 = 1 - abar_t, exact for unit-variance data and for one mixture component (what ships);
- ``data``: r_t^2 = s^2 (1 - abar_t) / (abar_t s^2 + 1 - abar_t), exact for Gaussian data of the mixture's
  per-coordinate variance s^2 (it includes the spread between the components);
- ``jacobian``: per sample, Tweedie's second moment along the guidance direction u = A^T r,
  r_t^2 = (1 - abar_t) / sqrt(abar_t) <u, J u> / ||u||^2 (J = d x0_hat / d x_t, symmetric), read off a first
  VJP, then the guidance VJP: two VJPs per step, so it spends twice the budget it is reported at.

Each swaps :func:`dps.solvers.pigdm.pigdm_score` for the run (an experiment, not a shipped option).
"""
from __future__ import annotations

import argparse
import math

import torch

import dps.solvers.pigdm as pigdm_module
from dps.bench.gmm import gmm_problem, sliced_wasserstein
from dps.noise import GaussianNoise
from dps.operators import MatrixOperator
from dps.solvers.methods import reconstruct
from dps.solvers.pigdm import PiGDMSettings

SHIPPED = pigdm_module.pigdm_score


def _gaussian_guidance(prior, op, y, x, t, abar, sigma_y2, r2_of):
    """(x0_hat, J^T A^T (r2 A A^T + sigma_y^2 I)^-1 (y - A x0_hat)) with a per-sample r2 = r2_of(x0, Ax0, x)."""
    x = x.detach().requires_grad_(True)
    x0 = prior(x, t).x0
    Ax0 = op(x0)
    r2 = r2_of(x0, Ax0, x)  # (B,)
    A = op.matrix.to(x)
    M = r2[:, None, None] * (A @ A.T) + sigma_y2 * torch.eye(A.shape[0], dtype=x.dtype)
    v = torch.linalg.solve(M, (y - Ax0).detach().unsqueeze(-1)).squeeze(-1)
    (g,) = torch.autograd.grad((v * Ax0).sum(), x)
    return x0.detach(), g


def score_for(mode: str, s2: float):
    if mode == "paper":
        return SHIPPED

    def score(prior, op, y, x, t, abar, sigma_y2):
        def r2_of(x0, Ax0, xt):
            if mode == "data":
                return torch.full((xt.shape[0],), s2 * (1 - abar) / (abar * s2 + 1 - abar), dtype=xt.dtype)
            r = (y - Ax0).detach()
            (Ju,) = torch.autograd.grad((r * Ax0).sum(), xt, retain_graph=True)  # J^T A^T r = J u
            u = op.A_adjoint(r)
            q = (1 - abar) / math.sqrt(abar) * (Ju * u).sum(1) / u.pow(2).sum(1).clamp_min(1e-30)
            return q.clamp_min(0.0).detach()

        return _gaussian_guidance(prior, op, y, x, t, abar, sigma_y2, r2_of)

    return score


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--r2", default="paper,data,jacobian")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--eta", type=float, default=1.0, help="Pi-GDM's DDIM eta")
    args = ap.parse_args()
    for mode in args.r2.split(","):
        cells = []
        for d_y in (1, 2, 4):
            dist = []
            for seed in range(5):
                pb = gmm_problem(args.dim, d_y, seed)
                w, mu = pb.prior.weights, pb.prior.means
                s2 = float(1 + (w[:, None] * (mu - (w[:, None] * mu).sum(0)) ** 2).sum(0).mean())
                pigdm_module.pigdm_score = score_for(mode, s2)
                exact = pb.posterior().sample(2000, torch.Generator().manual_seed(10_000 + seed))
                op, noise = MatrixOperator(pb.A), GaussianNoise(min(pb.sigma_y, 1.0))
                x = reconstruct("pigdm", pb.prior, op, pb.y[None], noise, PiGDMSettings(steps=args.steps, eta=args.eta),
                                torch.Generator().manual_seed(30_000 + seed), num_samples=2000).x[0]
                dist.append(sliced_wasserstein(x, exact, generator=torch.Generator().manual_seed(20_000 + seed)))
            cells.append(sum(dist) / len(dist))
        pigdm_module.pigdm_score = SHIPPED
        print(f"| {mode} | {args.steps} | {args.eta} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
