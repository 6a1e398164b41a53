#!/usr/bin/env bash
# The CPU speed figures of the README's "Speed and memory" section, about 25 minutes on 2 idle cores;
# nothing else may run meanwhile:
#
#     bash benchmarks/speed_cpu/speed_cpu.sh OUT
#
# Writes OUT/*.md and OUT/*.json, one pair per measurement:
#   digits        the embedded model, K = 1 and 8: DPS step / floor, DPS memory / floor, per-sample time
#   precision     the embedded model, fp32 / bf16 / fp16 (speed; kept in benchmarks/precision/speed_cpu.md,
#                 beside the PSNR change of benchmarks/precision/precision.py)
#   compile       the embedded model, torch.compile off / on (compilation is paid in the warm-up)
#   ffhq256       the FFHQ architecture at 256 px, K = 1: DPS step / floor
#   memory256     the FFHQ architecture at 256 px, K = 1, 2, 4, checkpointing off / on: the DPS step's peak
#   concurrency/  two processes at once (benchmarks/speed_cpu/concurrency.py)
set -euo pipefail
out=${1:?usage: bash benchmarks/speed_cpu/speed_cpu.sh OUT}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
py=${PYTHON:-python3}
run() {  # name, options...
  local name=$1; shift
  echo "== $name" >&2
  "$py" -m dps bench speed "$@" --json "$out/$name.json" | tee "$out/$name.md"
}
run digits --samples 1,8 --repeats 9 --steps 3
run precision --samples 1 --precision fp32,bf16,fp16 --repeats 3 --steps 2
run compile --samples 1 --compile off,on --repeats 9 --steps 3
run ffhq256 --arch ffhq256 --samples 1 --measure floor,dps_step --repeats 2 --steps 2
run memory256 --arch ffhq256 --samples 1,2,4 --checkpointing off,on --measure dps_step --repeats 1 --steps 1
"$py" "$here/concurrency.py" --out "$out/concurrency" -- --repeats 15 --steps 3
