"""The smaller figures of this study's README and of the DPS parity test's tolerances, each from one command.

    python benchmarks/grids/checks.py [--before COMMIT]

1. ``sensitivity``: DPS, rule "paper", on the GMM problem (8, 2, 0) at 100 steps: the largest change of the output
   when the start noise x_T moves by one ulp (6 random sign patterns), with the code at COMMIT (default: the
   commit before the sigma contract) and with this checkout.
2. ``tds``: TDS on the GMM problem (8, 1, 0), 100 steps, 500 particles, with and without resampling: the largest
   difference between COMMIT's output and this checkout's.
3. ``batch``: DPS and DAPS at 20 evaluations on super-resolution of held-out digits, VP and EDM grids: the largest
   difference of the first image's result between a batch of one and a batch of two.
COMMIT's code runs from a temporary git worktree (``git worktree add``), removed afterwards.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SENSITIVITY = """
import torch
from dps.bench.gmm import gmm_problem
from dps.noise import GaussianNoise
from dps.solvers.dps import DPSConfig, dps_sample
pb = gmm_problem(8, 2, 0)
def run(x_T):
    gens = [torch.Generator().manual_seed(k) for k in range(4)]
    return dps_sample(pb.prior, lambda x: x @ pb.A.T, pb.y[None], GaussianNoise(pb.sigma_y),
                      DPSConfig(steps=100, zeta=0.5, step_rule="paper"), num_samples=4, generator=gens, x_T=x_T).x
x_T = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
a = run(x_T)
worst = 0.0
for s in range(6):
    sign = torch.randint(0, 2, x_T.shape, generator=torch.Generator().manual_seed(s)).double() * 2 - 1
    worst = max(worst, float((a - run(x_T * (1 + sign * 2.0 ** -52))).abs().max()))
print(worst)
"""

TDS = """
import sys, torch
from dps.bench.gmm import gmm_problem
from dps.noise import GaussianNoise
from dps.operators import MatrixOperator
from dps.solvers.methods import reconstruct
from dps.solvers.tds import TDSSettings
pb = gmm_problem(8, 1, 0)
out = {}
for thr in (0.0, 0.5):
    out[thr] = reconstruct("tds", pb.prior, MatrixOperator(pb.A), pb.y[None], GaussianNoise(pb.sigma_y),
                           TDSSettings(steps=100, ess_threshold=thr), torch.Generator().manual_seed(1),
                           num_samples=500).x[0]
torch.save(out, sys.argv[1])
"""


def _python(code: str, tree: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, env=env,
                          cwd=tree).stdout.strip()


def batch() -> list[str]:
    import torch

    from dps import load_model, reconstruct
    from dps.data.digits import digits_split
    from dps.noise import GaussianNoise
    from dps.runs.spec import Overrides, resolve
    from dps.tasks import build_operator

    prior = load_model("default")
    x = digits_split("held_out")[0][:2]
    op = build_operator({"name": "super_resolution", "factor": 4}, (1, 32, 32), 0)
    y = op(x) + 0.025 * torch.randn(op(x).shape, generator=torch.Generator().manual_seed(1))
    lines = []
    for method in ("dps", "daps"):
        for grid in ("vp", "edm"):
            s = resolve("super_resolution", Overrides(method=method, nfe=20, grid=grid)).method_settings()
            one = reconstruct(method, prior, op, y[:1], GaussianNoise(0.025), s, [torch.Generator().manual_seed(7)])
            two = reconstruct(method, prior, op, y, GaussianNoise(0.025), s,
                              [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)])
            lines.append(f"batch {method}@{grid}: {float((one.x[0] - two.x[0]).abs().max()):.2g}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="47e1130", help="the commit to compare with (default: before the sigma contract)")
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old), args.before], check=True)
        try:
            print(f"sensitivity (one-ulp change of x_T), {args.before}: {float(_python(SENSITIVITY, old)):.2g}; "
                  f"this checkout: {float(_python(SENSITIVITY, ROOT)):.2g}")
            _python(TDS, old, str(Path(tmp) / "old.pt"))
            _python(TDS, ROOT, str(Path(tmp) / "new.pt"))
            a, b = torch.load(Path(tmp) / "old.pt"), torch.load(Path(tmp) / "new.pt")
            print("tds, this checkout against " + args.before + ": " +
                  ", ".join(f"ess_threshold {t}: {float((a[t] - b[t]).abs().max()):.2g}" for t in a))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    print("\n".join(batch()))


if __name__ == "__main__":
    main()
