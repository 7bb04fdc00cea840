"""Manifests the tests share: one small valid DiffusionRun that tests and corpora mutate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MINIMAL_DIFFUSION: dict[str, Any] = {
    "apiVersion": "diffar.io/v1alpha1",
    "kind": "DiffusionRun",
    "metadata": {"name": "mdm-small", "namespace": "research"},
    "spec": {
        "model": {"preset": "tiny", "seqLen": 128},
        "data": {
            "trainUri": "s3://data/train",
            "valUri": "s3://data/val",
            "uniqueTokens": 1_000_000,
            "epochs": 4,
        },
        "training": {"globalBatch": 32, "microBatch": 4},
        "resources": {"nodes": 2, "gpusPerNode": 4},
        "checkpoint": {"uri": "s3://runs/mdm-small/ckpt"},
        "s3": {"endpoint": "http://s3.local:8333", "credentialsSecret": "s3-keys"},
    },
}


def run_examples(root: Path) -> list[Path]:
    """The cluster examples that are runs (ARRun, DiffusionRun): `examples/*.yaml` less the
    ScalingStudies (`study-*.yaml`), which have tests of their own."""
    return sorted(p for p in (root / "examples").glob("*.yaml") if not p.name.startswith("study-"))
