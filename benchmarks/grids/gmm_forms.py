"""The GMM exact-posterior benchmark in every form of the prior: DPS, DAPS and TDS with the analytic prior as a
VP epsilon network, a VE score network and an EDM-preconditioned network (each on its own grid; DAPS on its
EDM grid), beside the same command's figures from an earlier version of the library.

    python benchmarks/grids/gmm_forms.py --runs DIR [--before before.json]

runs ``dps bench gmm --dim 8 --obs-dim 1,2,4 --steps 100,1000 --problems 5 --methods dps,daps,tds --json
--parameterization FORM`` for each form (resumable: a form whose JSON is in DIR is not run again), and writes
``gmm_forms.md`` (one table: per cell and method, the sliced W1 in each form, and ``before``'s VP figure when
given: the JSON of the same command run at another commit) and ``gmm_forms.json`` next to this script.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

FORMS = ("vp", "ve", "edm")
METHODS = ("dps", "daps", "tds")
ARGS = ["bench", "gmm", "--dim", "8", "--obs-dim", "1,2,4", "--steps", "100,1000", "--problems", "5",
        "--methods", ",".join(METHODS), "--json"]


def run(runs: Path) -> dict:
    reports = {}
    for form in FORMS:
        path = runs / f"gmm_{form}.json"
        if not path.exists() or not path.read_text().strip():
            out = subprocess.run([sys.executable, "-m", "dps", *ARGS, "--parameterization", form], check=True,
                                 capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
            tmp = path.with_suffix(".tmp")
            tmp.write_text(out)
            tmp.replace(path)
        reports[form] = json.loads(path.read_text())
    return reports


def table(reports: dict, before: dict | None) -> str:
    def key(c):
        return c["dim"], c["obs_dim"], c["steps"]

    cells = {form: {key(c): c for c in r["cells"]} for form, r in reports.items()}
    old = {key(c): c for c in before["cells"]} if before else {}
    head = ["d_y", "steps"]
    for m in METHODS:
        head += ([f"{m} before (vp)"] if before else []) + [f"{m} {f}" for f in FORMS]
    head += ["prior", "floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in sorted(cells["vp"]):
        row = [str(k[1]), str(k[2])]
        for m in METHODS:
            if before:
                row.append(f"{old[k][m]['mean']:.3f}" if k in old and m in old[k] else "-")
            row += [f"{cells[f][k][m]['mean']:.3f}" for f in FORMS]
        row += [f"{cells['vp'][k]['prior']['mean']:.3f}", f"{cells['vp'][k]['floor']['mean']:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=Path, required=True, help="folder of the per-form JSON reports")
    ap.add_argument("--before", type=Path, default=None, help="the same command's JSON at an earlier commit")
    args = ap.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    reports = run(args.runs)
    before = json.loads(args.before.read_text()) if args.before else None
    here = Path(__file__).resolve().parent
    (here / "gmm_forms.json").write_text(json.dumps({"forms": reports, "before": before}, indent=1))
    text = table(reports, before)
    (here / "gmm_forms.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
