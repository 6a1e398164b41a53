"""Choose a method's settings on TRAINING digits (never the held-out ones the benchmarks report on).

    python benchmarks/method_tuning/tune_methods.py --method diffpir --nfe 100 --grid "lam=1,7;zeta=0.3,1" \
        [--n 8] [--tasks ...]

For every combination of the grid (``name=v1,v2;name2=...``), prints per demo task the mean PSNR of one
sample over n training digits at the method's budget of ``--nfe`` network evaluations (its
``Method.at_budget``; the grid's settings override the budget's), and the best combination per task and
overall (by mean PSNR over the tasks the method applies to). Every name is a field of the method's own
settings dataclass (``METHODS[name].settings``: ``DPSConfig`` for DPS with ``zeta``, ``step_rule``,
``sampler``, ``eta``, ...; DiffPIR's ``lam`` and ``zeta``; DAPS's ``tau``, ``levels``, ``ode_steps``; ...), set
with ``dataclasses.replace``. Values that are not numbers stay strings, e.g. ``--method dps --grid
"step_rule=paper,variance;sampler=ddpm,ddim"``. ``zeta_scale`` = m runs DPS (or MCG) with m times the task's
zeta' at every step, with no step-count scaling, e.g. ``--method dps --nfe 50 --grid
"zeta_scale=1,2.24,5,10"`` (benchmarks/step_scaling/README.md). Methods that follow the task (DPS, MCG,
Score-SDE) start from the task's ``dps`` block, the others from their defaults; methods without a network
ignore ``--nfe``.
``--bench-tasks`` tunes on the shipped tasks that ``dps bench images`` runs (their own noise, steps and
preset zeta') instead of the demo's, e.g. ``--bench-tasks --tasks inpainting_random``.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools

import torch

from dps.data.digits import digits_split
from dps.runs.demo import demo_tasks
from dps.errors import Diverged, DPSError
from dps.metrics import psnr
from dps.models.loading import load_model
from dps.solvers.methods import get_method, reconstruct
from dps.tasks import build_operator, load_task


def _value(text: str):
    try:
        v = float(text)
    except ValueError:
        return text
    return int(v) if v.is_integer() and "." not in text else v


def _grid(text: str) -> list[dict]:
    axes = []
    for part in filter(None, text.split(";")):
        name, _, values = part.partition("=")
        axes.append([(name.strip(), _value(v)) for v in values.split(",")])
    return [dict(c) for c in itertools.product(*axes)] if axes else [{}]


def _apply(settings, combo: dict):
    """``settings`` with one grid combination applied (``zeta_scale``: m times zeta' per step, unscaled)."""
    combo = dict(combo)
    if "zeta_scale" in combo:
        scale = combo.pop("zeta_scale")
        if not hasattr(settings, "reference_steps"):
            raise DPSError(f"zeta_scale needs a method with DPS's step size (dps, mcg), not {type(settings).__name__}")
        settings = dataclasses.replace(settings, zeta=settings.zeta * scale, reference_steps=None)
    names = {f.name for f in dataclasses.fields(settings)}
    unknown = sorted(set(combo) - names)
    if unknown:
        raise DPSError(f"{', '.join(unknown)}: not a setting of {type(settings).__name__} ({', '.join(sorted(names))})")
    return dataclasses.replace(settings, **combo)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", required=True)
    ap.add_argument("--nfe", type=int, default=100)
    ap.add_argument("--grid", default="")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--model", default="default")
    ap.add_argument("--tasks", default=None, help="comma-separated demo task names (default: all)")
    ap.add_argument("--bench-tasks", action="store_true",
                    help="--tasks name the shipped tasks of `dps bench images` (their noise, steps, preset zeta')")
    args = ap.parse_args()
    method = get_method(args.method)
    prior = load_model(args.model)
    x, _ = digits_split("train")
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[: args.n]]
    table: dict[str, dict[str, float]] = {}
    # the demo's tasks at the 250 steps their zeta' were chosen at; a budget of N keeps that meaning (at_steps)
    names = args.tasks.split(",") if args.tasks else None
    if args.bench_tasks:
        if not names:
            raise SystemExit("error: --bench-tasks needs --tasks (shipped task names)")
        tasks = [(n, load_task(n)) for n in names]
    else:
        tasks = [(variant.name, task) for variant, task in demo_tasks(250, names)]
    for name, task in tasks:
        op = build_operator(task.operator, tuple(prior.event_shape), 0)
        noise = task.noise_model()
        if method.why_not(op, noise):
            continue
        y = noise(op(x), torch.Generator().manual_seed(0))
        base = method.default_settings(task.dps_config(method.step_size) if method.from_task else None)
        base = method.run_settings(base, args.nfe if method.counter is not None else None)
        for combo in _grid(args.grid):
            settings = _apply(base, combo)
            gens = [torch.Generator().manual_seed(100 + k) for k in range(args.n)]
            try:
                score = float(psnr(reconstruct(method, prior, op, y, noise, settings, gens).x[:, 0], x).mean())
            except Diverged:
                score = float("nan")
            key = ",".join(f"{k}={v}" for k, v in combo.items()) or "defaults"
            table.setdefault(key, {})[name] = score
            print(f"{name:24s} {args.method} {key:30s} PSNR {score:.2f}", flush=True)
    means = {k: sum(v.values()) / len(v) for k, v in table.items()}
    print("mean PSNR over tasks:", {k: round(v, 2) for k, v in means.items()})
    print("best overall:", max(means, key=lambda k: means[k] if means[k] == means[k] else -1e9))


if __name__ == "__main__":
    try:
        main()
    except DPSError as exc:  # a bad grid name or value: one line, as the CLI says it
        raise SystemExit(f"error: {exc}") from None
