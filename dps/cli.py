"""The ``dps`` command line. Names become objects here and nowhere else."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .solvers.dps import STEP_RULES, DPSConfig


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not items or any(v <= 0 for v in items):
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return items


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Diffusion Posterior Sampling (Chung et al., ICLR 2023) for noisy inverse problems."""


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/example"),
              help="folder for figure.png, metrics.json and metrics.md")
@click.option("--steps", type=click.IntRange(1, 1000), default=200, help="DPS steps per task")
@click.option("--samples", type=click.IntRange(1, 16), default=3, help="posterior samples per task")
@click.option("--seed", type=int, default=0)
def example(out: Path, steps: int, samples: int, seed: int) -> None:
    """End-to-end DPS on every measurement model of the paper, with an exact (pattern-mixture) prior."""
    from .example import run_example

    summary = run_example(out, steps=steps, samples=samples, seed=seed)
    click.echo((out / "metrics.md").read_text())
    click.echo(f"wrote {out / 'figure.png'}, {out / 'metrics.json'} ({summary['steps']} steps per task)")


@main.group()
def bench() -> None:
    """Benchmarks."""


@bench.command("gmm")
@click.option("--dim", "dims", default="8", callback=_int_list, help="dimension(s) d (even), comma-separated")
@click.option("--obs-dim", "obs_dims", default="1,2,4", callback=_int_list, help="observation dimension(s) d_y")
@click.option("--steps", "steps_list", default="100", callback=_int_list, help="sampling step count(s)")
@click.option("--problems", type=click.IntRange(1), default=5, help="problems (seeds) per cell")
@click.option("--first-seed", type=click.IntRange(0), default=0, help="seed of the first problem")
@click.option("--samples", type=click.IntRange(2), default=2000, help="samples per problem")
@click.option("--step-size", "zeta", type=click.FloatRange(0), default=None,
              help="zeta' (default: the documented GMM default of the step rule)")
@click.option("--step-rule", type=click.Choice(STEP_RULES), default="paper")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def bench_gmm(dims, obs_dims, steps_list, problems, first_seed, samples, zeta, step_rule, as_json) -> None:
    """Sliced Wasserstein distance of DPS to the exact Gaussian-mixture posterior (shared/GMM_BENCHMARK.md).

    Per cell: DPS, prior samples ("knows nothing about y") and a second exact sample set (the floor).
    """
    from .bench.gmm import GMM_DEFAULT_ZETA, run_cell

    if any(d % 2 for d in dims):
        raise click.BadParameter("the benchmark's dimension must be even", param_hint="--dim")
    zeta = GMM_DEFAULT_ZETA[step_rule] if zeta is None else zeta
    seeds = list(range(first_seed, first_seed + problems))
    cells = []
    for d in dims:
        for d_y in obs_dims:
            if d_y > d:
                raise click.BadParameter(f"--obs-dim {d_y} exceeds --dim {d}")
            for n in steps_list:
                cfg = DPSConfig(steps=n, zeta=zeta, step_rule=step_rule)
                res = run_cell(d, d_y, cfg, seeds, n_samples=samples).summary()
                cells.append({"dim": d, "obs_dim": d_y, "steps": n, **res})
                if not as_json:
                    click.echo(f"  done d={d} d_y={d_y} steps={n}", err=True)
    report = {"problems": seeds, "samples": samples, "step_rule": step_rule, "zeta": zeta, "cells": cells}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"GMM posterior benchmark: sliced W1 to exact posterior samples, mean over problems {seeds} "
               f"(+-95% interval), {samples} samples, step rule {step_rule!r}, zeta'={zeta}")
    click.echo("| d | d_y | steps | DPS | prior | floor |")
    click.echo("|---|---|---|---|---|---|")
    for c in cells:
        cell = " | ".join(f"{c[k]['mean']:.3f}" + ("" if c[k]["ci95"] is None else f" +- {c[k]['ci95']:.3f}")
                          for k in ("dps", "prior", "floor"))
        click.echo(f"| {c['dim']} | {c['obs_dim']} | {c['steps']} | {cell} |")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
