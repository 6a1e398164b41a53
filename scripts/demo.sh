#!/usr/bin/env bash
# Set up, then run the main job: `dps demo` on the embedded digits model (writes out/demo/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/dps demo --out out/demo "$@"
