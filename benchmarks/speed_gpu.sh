#!/usr/bin/env bash
# The GPU speed check (issue 13), ready to run on any CUDA machine with this repository installed:
#
#     bash benchmarks/speed_gpu.sh OUT
#
# For the ffhq256 and imagenet256 guided-diffusion architectures (random weights: their speed and memory
# without the checkpoint files), batch 1 and K = 4 samples, fp32 and bf16, torch.compile off and on, it runs
# `dps bench speed` and writes OUT/speed_gpu.md (one table per architecture, the GPU named in each) plus the
# JSON reports; OUT/speed_gpu.md ends with the implied time of a 1000-step FFHQ run per image. Aimed at
# under 5 minutes on one H200-class GPU; compile rows pay their compilation in the warm-up, not the timing.
#
# Overrides (for a smoke test on a CPU): ARCHS="ffhq256" SIZE=32 DEVICE=cpu COMPILE=off PRECISION=fp32.
set -euo pipefail
out=${1:?usage: bash benchmarks/speed_gpu.sh OUT}
mkdir -p "$out"
archs=${ARCHS:-"ffhq256 imagenet256"}
device=${DEVICE:-cuda}
compile=${COMPILE:-off,on}
precision=${PRECISION:-fp32,bf16}
size_opt=()
if [[ -n "${SIZE:-}" ]]; then size_opt=(--image-size "$SIZE"); fi
py=${PYTHON:-python3}

: > "$out/speed_gpu.md"
for arch in $archs; do
  echo "== $arch" >&2
  "$py" -m dps bench speed --arch "$arch" "${size_opt[@]}" --device "$device" --batch 1 --samples 4 \
      --precision "$precision" --compile "$compile" --steps 3 --repeats 3 --json "$out/speed_$arch.json" \
      | tee "$out/speed_$arch.md"
  { echo "### $arch"; echo; cat "$out/speed_$arch.md"; echo; } >> "$out/speed_gpu.md"
done

"$py" - "$out" <<'EOF' >> "$out/speed_gpu.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
path = out / "speed_ffhq256.json"
if path.is_file():
    rows = json.loads(path.read_text())["rows"]
    print("Implied FFHQ run of 1000 DPS steps (K = 4 samples per image, batch 1):")
    print()
    for r in rows:
        print(f"- {r['precision']}, compile {'on' if r['compile'] else 'off'}: {1000 * r['dps_step_s']:.1f} s per "
              f"image ({1000 * r['dps_step_per_sample_s']:.1f} s per sample)")
EOF
cat "$out/speed_gpu.md"
