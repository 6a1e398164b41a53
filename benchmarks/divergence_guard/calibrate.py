"""Calibration of the divergence guards (dps.solvers.divergence): the largest iterate ratio rho and final
residual ratio q that correct runs reach, on every shipped task with every method that applies, and where
a DPS step-size sweep crosses them.

    python benchmarks/divergence_guard/calibrate.py --out benchmarks/divergence_guard/results.md [--n 2]
    python benchmarks/divergence_guard/calibrate.py --budgets 20,100 --out benchmarks/divergence_guard/budgets.md

Correct runs: the settings `dps solve --task TASK --method METHOD` uses on the embedded digits model
(the task's steps and zeta'), plus DPS at the demo's 100 steps and zeta' (`dps demo`), on the first n
held-out digits, seed 0. With ``--budgets``: every method that has one at each budget (``--nfe N``) on every
task instead (few-step runs). The guards are switched off while measuring (their limits set to infinity), so
every ratio is seen; the table marks a run whose ratio would have crossed today's limit.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import dps.solvers.divergence as divergence
from dps.data.digits import digits_split
from dps.models.loading import load_model
from dps.runs.demo import demo_tasks
from dps.runs.loop import Job, measure
from dps.runs.spec import Overrides, resolve
from dps.seeds import sample_generators
from dps.solvers.methods import METHODS, reconstruct
from dps.tasks import TASK_NAMES

LIMITS = {"rho": divergence.ITERATE_LIMIT, "q": divergence.RESIDUAL_LIMIT}


def measure_run(prior, x, task, overrides: Overrides) -> dict:
    """rho (max over steps and samples), q (max over samples) and PSNR of one run, the guards off."""
    from dps.metrics import psnr

    spec = resolve(task, overrides)
    job = Job.build(spec, prior)
    if job.why_not() is not None:
        return {}
    idx = list(range(len(x)))
    y = measure(job.op, job.noise, x, spec.seed, idx)
    worst: list = [None]
    original = divergence.DivergenceGuard.check

    def check(self, xi, i, t, advice):  # records rho; the limit is infinite
        rho = float(divergence.iterate_ratio(xi, self.radius).max())
        worst[0] = rho if worst[0] is None else max(worst[0], rho)
        self.limit = math.inf
        return original(self, xi, i, t, advice)

    divergence.DivergenceGuard.check = check
    t0 = time.time()
    try:
        r = reconstruct(job.method, prior, job.op, y, job.noise, job.settings,
                        sample_generators(spec.seed, idx, 1, "cpu"), 1)
    finally:
        divergence.DivergenceGuard.check = original
    q = divergence.residual_ratio(r.residual, y, job.noise)
    return {"rho": worst[0], "q": float(q.max()),
            "psnr": float(psnr(r.x[:, 0], x).mean()), "seconds": round(time.time() - t0, 1)}


def row(label: str, res: dict) -> str:
    def cell(key):
        v = res.get(key)
        if v is None:
            return "-"
        return f"**{v:.3g}**" if v > LIMITS[key] else f"{v:.3g}"
    return f"| {label} | {cell('rho')} | {cell('q')} | {res['psnr']:.2f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--budgets", default=None, help="comma-separated --nfe budgets: the few-step section only")
    args = ap.parse_args()
    if args.budgets:
        return budgets(args, [int(b) for b in args.budgets.split(",")])
    torch.manual_seed(0)
    divergence.RESIDUAL_LIMIT = math.inf  # reconstruct's final check off while measuring
    prior = load_model("default")
    x = digits_split("held_out")[0][: args.n]
    results: dict = {"correct": {}, "sweep": {}}
    lines = [f"Limits today: rho {LIMITS['rho']:g}, q {LIMITS['q']:g} (bold: beyond them). Embedded digits model, "
             f"{args.n} held-out digits, seed 0.\n", "## Correct runs\n",
             "| task / method | max rho | max q | PSNR (dB) |", "|---|---|---|---|"]
    for task in TASK_NAMES:
        for name in METHODS:
            res = measure_run(prior, x, task, Overrides(method=name))
            if res:
                results["correct"][f"{task}/{name}"] = res
                lines.append(row(f"{task} / {name}", res))
                print(lines[-1], flush=True)
    for variant, task in demo_tasks():
        res = measure_run(prior, x, task, Overrides())
        results["correct"][f"demo {variant.name}/dps"] = res
        lines.append(row(f"demo {variant.name} / dps ({task.dps['steps']} steps, zeta' {task.dps['zeta']:.3g})", res))
        print(lines[-1], flush=True)
    worst = {k: max(v[k] for v in results["correct"].values() if v.get(k) is not None) for k in LIMITS}
    lines += ["", f"Largest over correct runs: rho {worst['rho']:.3g}, q {worst['q']:.3g}.", "",
              "## DPS step-size sweep on super_resolution (1000 steps)\n",
              "| zeta' | max rho | max q | PSNR (dB) |", "|---|---|---|---|"]
    for zeta in (1.0, 3.0, 10.0, 30.0, 100.0, 1000.0):
        res = measure_run(prior, x, "super_resolution", Overrides(step_size=zeta))
        results["sweep"][str(zeta)] = res
        lines.append(row(f"{zeta:g}", res))
        print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))


def budgets(args, nfes: list[int]) -> None:
    """Every method with a budget at each of ``nfes`` evaluations on every task."""
    divergence.RESIDUAL_LIMIT = math.inf
    prior = load_model("default")
    x = digits_split("held_out")[0][: args.n]
    results = {}
    lines = [f"Limits today: rho {LIMITS['rho']:g}, q {LIMITS['q']:g} (bold: beyond them). Embedded digits model, "
             f"{args.n} held-out digits, seed 0, `--nfe N`.\n", "| task / method / nfe | max rho | max q | PSNR (dB) |",
             "|---|---|---|---|"]
    for nfe in nfes:
        for task in TASK_NAMES:
            for name, method in METHODS.items():
                if method.counter is None:
                    continue
                res = measure_run(prior, x, task, Overrides(method=name, nfe=nfe))
                if res:
                    results[f"{task}/{name}/{nfe}"] = res
                    lines.append(row(f"{task} / {name} / {nfe}", res))
                    print(lines[-1], flush=True)
    worst = {k: max(v[k] for v in results.values() if v.get(k) is not None) for k in LIMITS}
    lines += ["", f"Largest: rho {worst['rho']:.3g}, q {worst['q']:.3g}."]
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
