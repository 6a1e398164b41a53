"""Merge quality-per-compute runs (on several grids, or of several models) into one report.

    python benchmarks/grids/merge_qpc.py [--into DIR] RUN_DIR [RUN_DIR ...]

Each RUN_DIR is the ``--out`` of ``benchmarks/quality_per_compute/quality_per_compute.py ... --grid G`` (its
``rows.json``, rows labelled METHOD@G); writes ``quality_per_compute.md``, ``quality_per_compute.png`` and
``quality_per_compute_rows.json`` next to this script (or into DIR), with the first run's machine note.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "quality_per_compute"))

from quality_per_compute import plot, report  # noqa: E402


def main() -> None:
    args = sys.argv[1:]
    into = HERE
    if args[:1] == ["--into"]:
        into, args = Path(args[1]), args[2:]
    runs = [Path(a) for a in args]
    if not runs:
        raise SystemExit(__doc__)
    rows = [r for run in runs for r in json.loads((run / "rows.json").read_text())]
    first = (runs[0] / "quality_per_compute.md").read_text().splitlines()[0]
    note = first.split("second table. ", 1)[-1] if "second table. " in first else first.split("per image). ", 1)[-1]
    budgets = sorted({r["budget"] for r in rows})
    (into / "quality_per_compute_rows.json").write_text(json.dumps(rows, indent=1))
    (into / "quality_per_compute.md").write_text(report(rows, budgets, note))
    plot(rows, into / "quality_per_compute.png")
    print((into / "quality_per_compute.md").read_text())


if __name__ == "__main__":
    main()
