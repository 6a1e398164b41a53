"""PSNR of DPS with the network in reduced precision against float32, on the demo's tasks.

    python benchmarks/precision/precision.py --out out/precision [--precisions fp32,bf16] [--n 8] [--steps 250]
        [--tasks super_resolution,...] [--device cuda]

Every task of the demo (`dps.runs.demo.DEMO_VARIANTS`) on the first n held-out digits, one sample each with
the same seeds in every precision (so the difference is paired), the network run in the given precision
(`execution=dps.execution.Execution(precision=...)`). The column ``fp32-reseed`` is the control: float32
with other seeds, i.e. how far two draws of the same posterior lie apart; on multimodal tasks (box
inpainting) any perturbation, a reduced precision included, can move a sample to another mode, and only a
difference beyond this control is one that precision causes. Writes
OUT/precision.md and OUT/precision.json (rewritten after every run; a rerun computes only missing runs):
mean PSNR per task and column, the difference to the first column and the mean absolute per-image
difference, and the seconds per task.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dps.data.digits import digits_split
from dps.execution import Execution
from dps.runs.demo import demo_tasks
from dps.metrics import psnr
from dps.models.loading import load_model
from dps.solvers.methods import reconstruct
from dps.tasks import build_operator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--tasks", default=None, help="comma-separated demo task names (default: all)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    prior = load_model("default").to(device)
    x, _ = digits_split("held_out")
    x = x[: args.n].to(device)
    precisions = args.precisions.split(",")
    store = args.out / "precision.json"
    results: dict[str, dict[str, dict]] = json.loads(store.read_text()) if store.is_file() else {}
    for variant, task in demo_tasks(args.steps, args.tasks.split(",") if args.tasks else None):
        op = build_operator(task.operator, tuple(prior.event_shape), 0).to(device)
        noise = task.noise_model()
        y = noise(op(x), torch.Generator(device=device).manual_seed(0))
        for p in precisions:
            if p in results.get(variant.name, {}) and len(results[variant.name][p]["psnr"]) == len(x):
                continue
            execution = Execution(device=str(device), precision=p.removesuffix("-reseed"))
            offset = 1000 if p.endswith("-reseed") else 0
            gens = [torch.Generator(device=device).manual_seed(100 + offset + k) for k in range(len(x))]
            start = time.perf_counter()
            rec = reconstruct("dps", prior, op, y, noise, task.dps_config(), gens, execution=execution)
            seconds = time.perf_counter() - start
            scores = psnr(rec.x[:, 0], x).cpu()
            results.setdefault(variant.name, {})[p] = {"psnr": scores.tolist(), "seconds": seconds}
            print(f"{variant.name:24s} {p}: {float(scores.mean()):.2f} dB ({seconds:.1f} s)", flush=True)
            store.write_text(json.dumps(results, indent=1))

    ref = precisions[0]
    lines = [f"DPS on the demo tasks, {args.n} held-out digits, {args.steps} steps, one sample each, paired seeds; "
             f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}). "
             f"Mean PSNR (dB); difference and mean |per-image difference| against {ref}; seconds per task.", "",
             "| task | " + " | ".join(precisions) + " | " +
             " | ".join(f"{p} - {ref} | mean abs diff {p}" for p in precisions[1:]) + " | seconds |",
             "|---|" + "---|" * (len(precisions) + 2 * (len(precisions) - 1) + 1)]
    for task, r in results.items():
        if not all(p in r for p in precisions):
            continue
        mean = {p: sum(r[p]["psnr"]) / len(r[p]["psnr"]) for p in precisions}
        cells = [f"{mean[p]:.2f}" for p in precisions]
        for p in precisions[1:]:
            absdiff = sum(abs(a - b) for a, b in zip(r[p]["psnr"], r[ref]["psnr"])) / len(r[ref]["psnr"])
            cells += [f"{mean[p] - mean[ref]:+.2f}", f"{absdiff:.2f}"]
        cells.append(" / ".join(f"{r[p]['seconds']:.0f}" for p in precisions))
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    (args.out / "precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
