"""The GPU check: every command once on the device with the embedded model, then the speed of a DPS step of the
FFHQ architecture at fp32 and bf16 and the implied time of a 1000-step FFHQ image; a latent solve on the embedded
latent model and the speed and peak memory of a latent DPS step of Stable Diffusion 1.5's architecture at 512 px.

    python benchmarks/gpu/check.py --out OUT                      # on a machine with a GPU (a few minutes)
    python benchmarks/gpu/check.py --out OUT --device cpu --quick  # the same checks on the CPU, small sizes

Every command runs as a user runs it (`python -m dps ...`, --device given), under a time limit; the check
asserts that its outputs exist and that the run records the device, and writes OUT/gpu_check.md (a table: step,
seconds, result) and OUT/speed.json. It exits 1 when a step fails (the others still run).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def dps(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dps", *args], capture_output=True, text=True, timeout=timeout)


def on_device(record: dict, device: str) -> None:
    got = record.get("execution", record).get("device", "")
    assert got.split(":")[0] == device.split(":")[0], f"the run records device {got!r}, not {device!r}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="few steps and small sizes (a dry run on the CPU)")
    args = ap.parse_args()
    out, dev, quick = args.out, args.device, args.quick
    out.mkdir(parents=True, exist_ok=True)
    steps = "3" if quick else "100"
    digits = out / "digits"
    digits.mkdir(exist_ok=True)
    from dps.data.digits import digits_split
    from dps.images import save_image

    x, _ = digits_split("held_out")
    for i in range(4):
        save_image(x[i], digits / f"d{i}.png")

    def solve() -> str:
        r = dps("solve", "--task", "inpainting_box", "--input", str(digits), "--out", str(out / "solve"), "--steps", steps,
                "--samples", "2", "--progress-frames", "3", "--device", dev, timeout=300)
        assert r.returncode == 0, r.stderr[-500:]
        record = json.loads((out / "solve" / "run.json").read_text())
        on_device(record, dev)
        assert len(record["images"]) == 4 and all(v["device"].startswith(dev.split(":")[0]) for v in record["images"].values())
        assert all((out / "solve" / "recon" / f"d{i}.png").exists() for i in range(4))
        r = dps("figure", str(out / "solve"), timeout=120)
        assert r.returncode == 0 and (out / "solve" / "figure_progress.png").exists(), r.stderr[-500:]
        return f"4 images, {record['execution']['device_name']}"

    def demo() -> str:
        r = dps("demo", "--tasks", "super_resolution,phase_retrieval", "--out", str(out / "demo"), "--steps", steps,
                "--device", dev, timeout=300)
        assert r.returncode == 0, r.stderr[-500:]
        on_device(json.loads((out / "demo" / "demo.json").read_text()), dev)
        metrics = json.loads((out / "demo" / "metrics.json").read_text())
        assert (out / "demo" / "figure.png").exists() and metrics["device"].startswith(dev.split(":")[0])
        return ", ".join(f"{k} {v['psnr']:.1f} dB" for k, v in metrics["tasks"].items())

    def example() -> str:
        r = dps("example", "--out", str(out / "example"), "--steps", "20" if quick else "200", "--device", dev,
                timeout=300)
        assert r.returncode == 0, r.stderr[-500:]
        on_device(json.loads((out / "example" / "example.json").read_text()), dev)
        return "figure and metrics written"

    def sample() -> str:
        r = dps("sample", "--n", "16", "--steps", steps, "--out", str(out / "samples.png"), "--device", dev, timeout=300)
        assert r.returncode == 0 and (out / "samples.pt").exists(), r.stderr[-500:]
        assert f", {dev}" in r.stdout or f", {dev}:" in r.stdout, r.stdout
        return r.stdout.strip()

    def train() -> str:
        r = dps("train", "--out", str(out / "train"), "--steps", "5" if quick else "50", "--checkpoint-every", "25",
                "--device", dev, timeout=300)
        assert r.returncode == 0, r.stderr[-500:]
        from safetensors import safe_open

        with safe_open(str(out / "train" / "model.safetensors"), "pt") as f:
            meta = f.metadata()
        assert meta["train_device"].startswith(dev.split(":")[0]), meta
        r = dps("train-classifier", "--out", str(out / "classifier.safetensors"), "--epochs", "1", "--device", dev,
                timeout=300)
        assert r.returncode == 0, r.stderr[-500:]
        return f"{meta['train_steps']} steps on {meta['train_device']}; classifier: {r.stdout.strip()[-40:]}"

    def bench_images() -> str:
        r = dps("bench", "images", "--methods", "dps,ddrm,pigdm,daps,hio", "--tasks", "super_resolution,phase_retrieval",
                "--n", "2", "--nfe", "5" if quick else "20", "--out", str(out / "bench"), "--device", dev, timeout=300)
        assert r.returncode == 0, r.stderr[-500:]
        table = json.loads((out / "bench" / "table.json").read_text())
        assert table["device"].startswith(dev.split(":")[0])
        rows = [row for row in table["rows"] if row.get("psnr") is not None]
        return f"{len(rows)} method-task pairs with results"

    def bench_prior() -> str:
        r = dps("bench", "prior", "--n", "32", "--steps", steps, "--json", "--device", dev, timeout=300)
        assert r.returncode == 0, r.stderr[-500:]
        return f"confidence {json.loads(r.stdout)['confidence']:.2f}"

    def bench_gmm() -> str:
        r = dps("bench", "gmm", "--dim", "8", "--latent-dim", "4", "--obs-dim", "2", "--steps", "20" if quick else "100",
                "--problems", "1", "--samples", "200", "--methods", "pigdm,latent_dps,latent_daps", "--json", "--device",
                dev, timeout=300)
        assert r.returncode == 0, r.stderr[-500:]
        report = json.loads(r.stdout)
        on_device(report, dev)
        cell = report["cells"][0]
        return "sliced W1: " + ", ".join(f"{k} {v['mean']:.2f}" for k, v in cell.items()
                                          if isinstance(v, dict) and "mean" in v)

    def speed() -> str:
        size = ["--image-size", "64"] if quick else []
        r = dps("bench", "speed", "--arch", "ffhq256", *size, "--precision", "fp32,bf16", "--measure", "floor,dps_step",
                "--repeats", "1" if quick else "3", "--steps", "1" if quick else "5", "--json", str(out / "speed.json"),
                "--device", dev, timeout=480)
        assert r.returncode == 0, r.stderr[-500:]
        (out / "speed.md").write_text(r.stdout)
        rows = json.loads((out / "speed.json").read_text())["rows"]
        # one DPS step (batch 1, K = 1) of dps_step_s seconds: a 1000-step image takes 1000 times that
        return "; ".join(f"{row['precision']}: DPS step {1e3 * row['dps_step_s']:.1f} ms, so "
                         f"{1e3 * row['dps_step_s']:.0f} s per 1000-step image" for row in rows)

    def latent() -> str:
        r = dps("solve", "--task", "inpainting_box", "--input", str(digits), "--out", str(out / "latent"), "--model",
                "digits-latent", "--method", "psld", "--nfe", "5" if quick else "50", "--device", dev, timeout=300)
        assert r.returncode == 0, r.stderr[-500:]
        record = json.loads((out / "latent" / "run.json").read_text())
        on_device(record, dev)
        scores = [v["psnr"] for v in record["images"].values()]
        return f"psld on digits-latent, {len(scores)} images: mean PSNR {sum(scores) / len(scores):.2f} dB"

    def speed_sd15() -> str:
        size = ["--image-size", "64"] if quick else []  # default 512 px
        r = dps("bench", "speed", "--arch", "sd15", *size, "--precision", "fp32" if quick else "fp32,fp16",
                "--measure", "floor,dps_step",
                "--repeats", "1" if quick else "3", "--steps", "1" if quick else "3", "--json",
                str(out / "speed_sd15.json"), "--device", dev, timeout=480)
        assert r.returncode == 0, r.stderr[-500:]
        (out / "speed_sd15.md").write_text(r.stdout)
        rows = json.loads((out / "speed_sd15.json").read_text())["rows"]
        return "; ".join(f"{row['precision']}: latent DPS step {1e3 * row['dps_step_s']:.0f} ms ("
                         f"{row['dps_step_s'] * 1000:.0f} s per 1000-step image), peak "
                         f"{(row['dps_mem_bytes'] or 0) / 2**30:.1f} GiB" for row in rows)

    checks: list[tuple[str, Callable[[], str]]] = [
        ("dps solve + dps figure", solve), ("dps demo (2 tasks)", demo), ("dps example", example),
        ("dps sample", sample), ("dps train + train-classifier", train), ("dps bench images", bench_images),
        ("dps bench prior", bench_prior), ("dps bench gmm, latent problems", bench_gmm),
        ("dps bench speed, ffhq256, fp32 and bf16", speed),
        ("dps solve, latent (digits-latent, psld)", latent), ("dps bench speed, sd15 at 512 px, fp32 and fp16", speed_sd15)]
    lines = [f"GPU check on {dev}{' (quick)' if quick else ''}", "", "| step | seconds | result |", "|---|---|---|"]
    failed = 0
    for name, check in checks:
        t0 = time.time()
        try:
            result = check()
        except Exception as exc:  # a failed step is reported, and the others still run
            failed += 1
            result = f"FAILED: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        lines.append(f"| {name} | {time.time() - t0:.0f} | {result} |")
        print(lines[-1], flush=True)
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'gpu_check.md'}" + (f"; {failed} step(s) failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
