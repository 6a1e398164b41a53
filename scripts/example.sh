#!/usr/bin/env bash
# Set up, then run the end-to-end example (writes out/example/figure.png and metrics).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/dps example --out out/example "$@"
