"""Two processes on one machine: does each keep its single-process speed? (`dps bench speed` in each.)

    python benchmarks/speed_cpu/concurrency.py --out out/concurrency [--procs 2] [-- extra `dps bench speed` options]

Runs `dps bench speed` (the embedded model by default) three ways and writes OUT/concurrency.md:

1. alone, with cores / procs threads (what each concurrent process gets);
2. ``procs`` copies at once, each with ``--threads cores / procs`` (what `dps` does under torchrun);
3. ``procs`` copies at once with torch's default thread pool (every process takes every core).

Reported per way: the floor (forward + VJP) and the DPS step of each process, and their ratio to (1). Nothing
else may run on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def speed(out: Path, name: str, threads: int | None, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dps"] + (["--threads", str(threads)] if threads else []) + \
        ["bench", "speed", "--json", str(out / f"{name}.json"), *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            sys.exit(f"dps bench speed failed: {err.strip().splitlines()[-1] if err.strip() else p.returncode}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("extra", nargs="*", help="options passed to `dps bench speed` (after --)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    share = max(1, cores // args.procs)
    extra = args.extra or ["--repeats", "7", "--steps", "3"]

    wait([speed(args.out, "alone", share, extra)])
    wait([speed(args.out, f"split{i}", share, extra) for i in range(args.procs)])
    wait([speed(args.out, f"default{i}", None, extra) for i in range(args.procs)])

    def row(name: str) -> dict:
        return json.loads((args.out / f"{name}.json").read_text())["rows"][0]

    alone = row("alone")
    lines = [f"{cores} cores; alone with {share} thread(s): floor {1e3 * alone['floor_s']:.1f} ms, DPS step "
             f"{1e3 * alone['dps_step_s']:.1f} ms. Concurrent processes, each against that:", "",
             "| way | process | threads | floor ms | DPS step ms | floor / alone | DPS step / alone |",
             "|---|---|---|---|---|---|---|"]
    for way, threads in (("split", share), ("default", "torch default")):
        for i in range(args.procs):
            r = row(f"{way}{i}")
            lines.append(f"| {way} | {i} | {threads} | {1e3 * r['floor_s']:.1f} | {1e3 * r['dps_step_s']:.1f} | "
                         f"{r['floor_s'] / alone['floor_s']:.2f} | {r['dps_step_s'] / alone['dps_step_s']:.2f} |")
    text = "\n".join(lines) + "\n"
    (args.out / "concurrency.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
