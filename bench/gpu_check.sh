#!/usr/bin/env bash
# The one-GPU check (issue 8): correctness, measured bf16 peak, tokens/s and MFU for 140M AR and
# 425M MDM at L=2048, ours vs transformers' Llama, torch.compile off and on. Under 8 minutes on
# an H100/H200; installs nothing from the network.
#
# On the GPU machine, from the repository root:
#     bash bench/gpu_check.sh                 # the paper sizes
#     bash bench/gpu_check.sh --size tiny     # nano/tiny shapes, seconds (also: --device cpu)
#
# Needs there: torch with CUDA (the image has it), transformers for the reference (the image has
# 5.17.0; without it only our rows are measured) and pydantic, which the image lacks: carry it as
# wheels in .whl/ (made here by `bash bench/gpu_wheels.sh`, for the device's Python 3.12); this
# script installs whatever .whl/ holds with pip --no-index into a scratch folder. DeepSpeed is
# not needed: the check drives our model, objective and fused AdamW directly.
#
# Output: the log on stdout, JSON in $OUT/gpu.json when $OUT is set (the device tool's folder),
# else bench/results/gpu.json.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-bench/results}
mkdir -p "$out"
# 470 s for the Python part keeps the whole script under 8 minutes with a cold start.
timeout 470 "$PY" bench/gpu_bench.py --budget-s 400 --out "$out/gpu.json" "$@"
rc=$?
[ $rc -eq 124 ] && echo "gpu_bench.py hit its 470 s limit; rows measured so far are in $out/gpu.json"
exit $rc
