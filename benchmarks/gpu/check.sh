#!/usr/bin/env bash
# The GPU check (README.md beside this file): every command once on CUDA, then the FFHQ step's speed.
#   bash benchmarks/gpu/check.sh OUT [--device cuda:1] [--quick]
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:?usage: bash benchmarks/gpu/check.sh OUT [--device DEVICE] [--quick]}"
shift
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" benchmarks/gpu/check.py --out "$out" "$@"
