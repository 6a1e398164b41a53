"""Merge quality-per-compute runs on several grids into one report here.

    python benchmarks/grids/merge_qpc.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR is the ``--out`` of ``benchmarks/quality_per_compute/quality_per_compute.py ... --grid G`` (its
``rows.json``, rows labelled METHOD@G); writes ``quality_per_compute.md``, ``quality_per_compute.png`` and
``quality_per_compute_rows.json`` next to this script, with the first run's machine note.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "quality_per_compute"))

from quality_per_compute import plot, report  # noqa: E402


def main() -> None:
    runs = [Path(a) for a in sys.argv[1:]]
    if not runs:
        raise SystemExit(__doc__)
    rows = [r for run in runs for r in json.loads((run / "rows.json").read_text())]
    note = (runs[0] / "quality_per_compute.md").read_text().splitlines()[0].split("second table. ", 1)[-1]
    budgets = sorted({r["budget"] for r in rows})
    (HERE / "quality_per_compute_rows.json").write_text(json.dumps(rows, indent=1))
    (HERE / "quality_per_compute.md").write_text(report(rows, budgets, note))
    plot(rows, HERE / "quality_per_compute.png")
    print((HERE / "quality_per_compute.md").read_text())


if __name__ == "__main__":
    main()
