"""torchx component for the trainer.

    torchx run -s local_cwd trainer/components.py:train --config run.yaml --nproc 2

launches `diffar train --config run.yaml` on 2 local processes through torchrun; other
schedulers (kubernetes, slurm) take the same component with an `--image`.
"""

# No `from __future__ import annotations`: torchx decodes CLI args by the real annotation types.
import torchx
from torchx import specs
from torchx.components import dist


def train(
    *overrides: str,
    config: str,
    nproc: int = 1,
    nnodes: int = 1,
    image: str = torchx.IMAGE,
    name: str = "diffar-train",
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 4096,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """Train an AR or MDM model with `diffar train` under torchrun.

    Args:
        overrides: config overrides as KEY=VALUE, passed to `diffar train --set`
        config: TrainConfig file (YAML or JSON), relative to the working directory
        nproc: processes (GPUs) per node
        nnodes: nodes
        image: container image (ignored by local_cwd)
        name: job name
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: memory per node in MB
        rdzv_port: rendezvous port on the first node (multi-node only)
    """
    args = ["train", "--config", config]
    for override in overrides:
        args += ["--set", override]
    return dist.ddp(
        *args,
        m="diffar.operator.cli",
        image=image,
        name=name,
        j=f"{nnodes}x{nproc}",
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        rdzv_port=rdzv_port,
    )
