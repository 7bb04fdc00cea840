"""Launching `diffar` in subprocesses for the trainer tests (a module name no other folder uses)."""

import os
import subprocess
import sys
from pathlib import Path

from testsupport.servers import free_port


def diffar_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "diffar.operator.cli", *args]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "-m",
        "diffar.operator.cli",
        *args,
    ]


def run(cmd: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # torchx runs `torchrun` by name: the virtualenv's, activated or not (as in CI).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)
