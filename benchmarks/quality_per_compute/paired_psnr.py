"""Paired comparison of two `dps bench images` folders on the images both finished: mean PSNR of each, the
mean per-image difference and its 95% interval (1.96 standard errors of the differences).

    python benchmarks/quality_per_compute/paired_psnr.py A_FOLDER B_FOLDER --task inpainting_random [--method dps] [--method-b dps]

Each folder is a `dps bench images` output (results/<method>/<task>/<image>.json); the same image under the
same seed has the same measurement in both, so the difference removes the spread between images, which on
small image sets dominates the mean (e.g. 92% random inpainting of one digit).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def per_image(folder: Path, method: str, task: str) -> dict[str, float]:
    d = folder / "results" / method / task
    if not d.is_dir():
        raise SystemExit(f"error: {d} does not exist; is {folder} a `dps bench images` folder with {method} on {task}?")
    return {p.stem: json.loads(p.read_text())["psnr"] for p in sorted(d.glob("*.json"))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--task", required=True)
    ap.add_argument("--method", default="dps")
    ap.add_argument("--method-b", default=None, help="method in B (default: --method)")
    args = ap.parse_args()
    a = per_image(args.a, args.method, args.task)
    b = per_image(args.b, args.method_b or args.method, args.task)
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        raise SystemExit(f"error: {len(common)} image(s) in both folders; need at least 2")
    diff = [b[k] - a[k] for k in common]
    n = len(diff)
    mean = sum(diff) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in diff) / (n - 1))
    half = 1.96 * sd / math.sqrt(n)
    print(f"{n} images: A {sum(a[k] for k in common) / n:.2f} dB, B {sum(b[k] for k in common) / n:.2f} dB, "
          f"B - A {mean:+.2f} dB (95% interval {mean - half:+.2f} to {mean + half:+.2f}); "
          f"B ahead on {sum(x > 0 for x in diff)} of {n}")


if __name__ == "__main__":
    main()
