#!/usr/bin/env bash
# The paper's settings (1000 DDPM steps, preset paper-ffhq, the paper's noise) on the embedded digits model:
# the README's reproduction tables (Table 6 and Tables 1-4 layout). About 37 + 10 min on 2 cores.
# Usage: bash benchmarks/paper_settings_digits/paper_settings_digits.sh (writes out/paper_settings_digits*/)
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/dps bench images --preset paper-ffhq --n 8 --out out/paper_settings_digits \
  --methods dps,ddrm,mcg,score_sde,pnp_admm,admm_tv,hio,er,oss \
  --tasks super_resolution,inpainting_box,inpainting_random,gaussian_blur,motion_blur,phase_retrieval,nonlinear_blur "$@"
# phase retrieval as the paper scores it: the best of 4 samples by measurement residual, for every method
.venv/bin/dps bench images --preset paper-ffhq --n 8 --samples 4 --out out/paper_settings_digits_pr \
  --methods dps,hio,er,oss --tasks phase_retrieval
