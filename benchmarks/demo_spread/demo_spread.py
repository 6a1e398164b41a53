"""The spread of `dps demo`'s figures over seeds: the README's demo table.

    dps demo --out out/demo --seed 0; dps demo --out out/demo_seed1 --seed 1; dps demo --out out/demo_seed2 --seed 2
    python benchmarks/demo_spread/demo_spread.py out/demo out/demo_seed1 out/demo_seed2

A seed changes the operator's random draws, the noise and the samples (dps.seeds); the digits are the
same. Floating-point sums also differ with the number of threads, so one run's figure is one draw from
this spread, not a constant; the table gives mean +- standard deviation over the runs.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

KEYS = (("psnr", "PSNR DPS (dB)", ".2f"), ("ssim", "SSIM", ".3f"), ("classifier_acc", "classifier acc. DPS", ".2f"),
        ("classifier_acc_naive", "classifier acc. naive inverse", ".2f"), ("psnr_naive", "PSNR naive (dB)", ".2f"))


def main(folders: list[str]) -> None:
    reports = [json.loads((Path(f) / "metrics.json").read_text()) for f in folders]
    seeds = [r["seed"] for r in reports]
    settings = {(r["model"], r["n"], r["samples"], r["steps"]) for r in reports}
    if len(settings) != 1:
        sys.exit(f"Error: the runs differ in more than the seed: {sorted(settings)}")
    print(f"seeds {seeds}; mean +- standard deviation over the {len(reports)} runs\n")
    print("| task | " + " | ".join(k[1] for k in KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    for task in reports[0]["tasks"]:
        cells = []
        for key, _, fmt in KEYS:
            values = [r["tasks"][task][key] for r in reports]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):{fmt}} +- {sd:{fmt}}")
        print(f"| {task} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
