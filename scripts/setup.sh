#!/usr/bin/env bash
# Create .venv (if needed) and install dps with its test, diffusers, latent and docs extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Install the pinned torch first (the CPU wheel where pip is configured to find one); a bare `torch`
# requirement with no torch installed would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,diffusers,latent,docs]"
