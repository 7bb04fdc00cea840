#!/usr/bin/env bash
# Wheels that bench/gpu_check.sh needs on the GPU machine and its image lacks (pydantic and its
# own dependencies), for that machine's Python 3.12 on x86-64, into .whl/ (ignored by git: add
# `/.whl/` to .git/info/exclude). Run here, where PyPI is reachable; then carry `.whl` to the
# device and run `bash bench/gpu_check.sh` there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
ls -la .whl
