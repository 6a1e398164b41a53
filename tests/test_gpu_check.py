"""The GPU check script runs (on the CPU, with small sizes), so that a machine with a GPU finds it working."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "check.py"), "--out", str(tmp_path),
                        "--device", "cpu", "--quick"], capture_output=True, text=True, env=env, timeout=600)
    report = (tmp_path / "gpu_check.md").read_text()
    assert r.returncode == 0, report + r.stderr[-2000:]
    assert report.count("FAILED") == 0 and report.count("\n| dps ") == 11  # every step of the check, latent included
    assert "s per 1000-step image" in report and (tmp_path / "speed.json").exists()
    assert "psld on digits-latent" in report and (tmp_path / "speed_sd15.json").exists()
