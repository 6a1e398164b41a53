#!/usr/bin/env bash
# The GPU speed check, ready to run on any CUDA machine with this repository installed:
#
#     bash benchmarks/speed_gpu/speed_gpu.sh OUT
#
# For the ffhq256 and imagenet256 guided-diffusion architectures (random weights: their speed and memory
# without the checkpoint files), batch 1 and K = 4 samples, fp32 and bf16, torch.compile off and then on, it
# runs `dps bench speed` and writes OUT/speed_gpu.md (one table per architecture and compile setting, the GPU
# named in each) plus the JSON reports, and ends with the implied time of a 1000-step FFHQ run per image.
# Every run has a time limit (NOCOMPILE_LIMIT, COMPILE_LIMIT seconds; compilation is paid in the warm-up):
# a run stopped at its limit keeps the rows it measured (the JSON is rewritten after every row), so the
# whole check stays under 5 minutes.
#
# Overrides (e.g. a smoke test on a CPU): ARCHS="ffhq256" SIZE=64 DEVICE=cpu COMPILE=off PRECISION=fp32.
set -uo pipefail
out=${1:?usage: bash benchmarks/speed_gpu/speed_gpu.sh OUT}
mkdir -p "$out"
archs=${ARCHS:-"ffhq256 imagenet256"}
device=${DEVICE:-cuda}
compiles=${COMPILE:-"off on"}
precision=${PRECISION:-fp32,bf16}
py=${PYTHON:-python3}
size_opt=()
if [[ -n "${SIZE:-}" ]]; then size_opt=(--image-size "$SIZE"); fi

for arch in $archs; do
  for compile in $compiles; do
    limit=${NOCOMPILE_LIMIT:-60}
    if [[ $compile == on ]]; then limit=${COMPILE_LIMIT:-90}; fi
    echo "== $arch, compile $compile (limit $limit s)" >&2
    timeout "$limit" "$py" -m dps bench speed --arch "$arch" "${size_opt[@]}" --device "$device" --batch 1 \
        --samples 4 --precision "$precision" --compile "$compile" --steps 3 --repeats 3 \
        --json "$out/speed_${arch}_compile_$compile.json" > /dev/null
    echo "   exit status $?" >&2
  done
done

"$py" - "$out" <<'EOF' > "$out/speed_gpu.md"
import json, sys
from pathlib import Path
from dps.bench.speed import speed_markdown

out = Path(sys.argv[1])
ffhq = []
for path in sorted(out.glob("speed_*_compile_*.json")):
    report = json.loads(path.read_text())
    print(f"### {path.stem}\n")
    print(speed_markdown(report))
    if path.stem.startswith("speed_ffhq256"):
        ffhq += report["rows"]
if ffhq:
    print("Implied FFHQ run of 1000 DPS steps (K = 4 samples per image, batch 1):\n")
    for r in ffhq:
        print(f"- {r['precision']}, compile {'on' if r['compile'] else 'off'}: {1000 * r['dps_step_s']:.1f} s per "
              f"image ({1000 * r['dps_step_per_sample_s']:.1f} s per sample)")
EOF
cat "$out/speed_gpu.md"
