#!/usr/bin/env bash
# The trainer image's entrypoint: `diffar-trainer train --config FILE` (any `diffar` command).
#
# Under a Kubeflow PyTorchJob (PET_NNODES is set by the training operator) a `train` command runs
# through torchrun with the job's rendezvous: PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
# PET_MASTER_ADDR, PET_MASTER_PORT. Anywhere else it runs `diffar` directly (one process), so
# `docker run IMAGE data inspect ...` works too. The operator's PyTorchJob sets the same torchrun
# command explicitly (diffar.operator.builders.trainer_command), so both paths agree.
set -euo pipefail

if [[ $# -eq 0 ]]; then
  set -- train --config /etc/diffar/train.json
fi

if [[ "$1" == "train" && -n "${PET_NNODES:-}" ]]; then
  for var in PET_NPROC_PER_NODE PET_NODE_RANK PET_MASTER_ADDR PET_MASTER_PORT; do
    if [[ -z "${!var:-}" ]]; then
      echo "diffar-trainer: PET_NNODES is set but $var is not (is this a PyTorchJob pod?)" >&2
      exit 2
    fi
  done
  exec torchrun \
    --nnodes="${PET_NNODES}" \
    --nproc-per-node="${PET_NPROC_PER_NODE}" \
    --node-rank="${PET_NODE_RANK}" \
    --master-addr="${PET_MASTER_ADDR}" \
    --master-port="${PET_MASTER_PORT}" \
    -m diffar.operator.cli "$@"
fi

exec diffar "$@"
