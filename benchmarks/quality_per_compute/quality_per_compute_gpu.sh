#!/usr/bin/env bash
# The quality-per-compute benchmark on a CUDA machine (about 5-8 minutes on one H200), 8 held-out digits.
# Usage: bash benchmarks/quality_per_compute/quality_per_compute_gpu.sh OUTDIR
#            [extra args for benchmarks/quality_per_compute/quality_per_compute.py]
# torchmetrics is hidden (FID/LPIPS would try to download weights; the digits' own metrics are used).
set -u
out=${1:?usage: quality_per_compute_gpu.sh OUTDIR}; shift
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$(cd "$here/../.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU')")
python3 - "$here/quality_per_compute.py" "$out" "$gpu" "$@" <<'PY'
import runpy, sys
sys.modules["torchmetrics"] = None  # offline: no FID/LPIPS weights
script, out, gpu, *rest = sys.argv[1:]
sys.argv = ["quality_per_compute.py", "--out", out, "--n", "8", "--device-note", f"Device: {gpu}.", *rest]
runpy.run_path(script, run_name="__main__")
PY
