"""Choose the demo's zeta' per task on TRAINING digits (never the held-out ones the demo reports on).

    python benchmarks/demo_step_sizes/tune_demo_zeta.py [--model default] [--steps 250] [--n 8] [--grid 0.3,1,3] [--rule paper]

Prints, per task and zeta', the mean PSNR of one DPS sample over n training digits, and the best zeta'. With a
latent model (``--model digits-latent``) it tunes latent DPS's own zeta' (rule paper, given for 1000 steps), which
the demo runs there.
"""
from __future__ import annotations

import argparse

import torch

from dps.data.digits import digits_split
from dps.runs.demo import demo_tasks
from dps.errors import Diverged
from dps.metrics import psnr
from dps.models.loading import load_model
from dps.solvers.dps import STEP_RULES
from dps.solvers.latent_dps import LatentDPSSettings
from dps.solvers.methods import METHODS, reconstruct
from dps.tasks import build_operator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--grid", default="0.3,1,3")
    ap.add_argument("--rule", default="paper", choices=list(STEP_RULES))
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    args = ap.parse_args()
    prior = load_model(args.model)
    latent = getattr(prior, "form", None) == "latent"  # the demo runs latent DPS on a latent model
    x, _ = digits_split("train")
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[: args.n]]
    best = {}
    for variant, _ in demo_tasks(args.steps, args.tasks.split(",") if args.tasks else None):
        op = build_operator(variant.resolve().operator, tuple(prior.event_shape), 0)
        noise = variant.resolve().noise_model()
        y = noise(op(x), torch.Generator().manual_seed(0))
        task = variant
        scores = {}
        for z in [float(v) for v in args.grid.split(",")]:
            gens = [torch.Generator().manual_seed(100 + k) for k in range(args.n)]
            if latent:  # latent DPS: its own zeta' (rule paper, for 1000 steps) at this many evaluations
                method, cfg = "latent_dps", METHODS["latent_dps"].at_budget(args.steps, LatentDPSSettings(zeta=z))
            else:
                method, cfg = "dps", variant.resolve(args.steps, zeta=z, step_rule=args.rule).dps_config()
            try:
                res = reconstruct(method, prior, op, y, noise, cfg, gens)
                scores[z] = float(psnr(res.x[:, 0], x).mean())
            except Diverged:
                scores[z] = float("nan")
            print(f"{task.name:24s} {args.rule} zeta'={z:<5g} PSNR {scores[z]:.2f}", flush=True)
        best[task.name] = max((v, k) for k, v in scores.items() if v == v)[1]
    print("best:", best)


if __name__ == "__main__":
    main()
