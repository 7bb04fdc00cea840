"""Process-group setup for one process, torchrun, or a PyTorchJob (which sets torchrun's env)."""

from __future__ import annotations

import importlib
import logging
import os
import socket
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> DistEnv:
    """Join (or, alone, create) the process group through DeepSpeed's comm layer."""
    if "WORLD_SIZE" not in os.environ:
        # A plain `diffar train`: a world of one, so the same code path serves every launch.
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ["WORLD_SIZE"])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    else:
        os.environ.setdefault(
            "DS_ACCELERATOR", "cpu"
        )  # said, so DeepSpeed need not warn it guessed
        # DeepSpeed's CPU backend otherwise JIT-compiles a shared-memory allreduce op on first
        # use (2-4 minutes of C++ on every fresh machine); gloo does the job for CPU runs.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)  # its INFO lines would drown the run's own progress
    if not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=device)
