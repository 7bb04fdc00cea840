"""Fixtures of the operator tests.

The contract tests need real components (jsonschema, cel-python, kubernetes-validate): they are
imported at module level in the tests that use them, so a missing one fails the test run instead
of skipping it. The operator against a real API server is tested in tests/cluster.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# The real PyTorchJob CRD lives in the shared folder beside the checkout (CI lays it there too);
# its README asks that it be read from there, not copied into the project.
PYTORCHJOB_CRD = ROOT.parent / "shared" / "kubeflow" / "kubeflow.org_pytorchjobs.yaml"
# Run manifests; ScalingStudies (study-*.yaml) have their own tests (tests/operator/test_study.py).
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if not p.name.startswith("study-"))


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="session")
def pytorchjob_crd() -> dict:
    return load_yaml(PYTORCHJOB_CRD)


@pytest.fixture(scope="session")
def run_crds() -> dict[str, dict]:
    from diffar.operator import crdgen

    return {crd["spec"]["names"]["kind"]: crd for crd in crdgen.crds()}


MINIMAL_DIFFUSION = {
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


@pytest.fixture()
def manifest() -> dict:
    """A small valid DiffusionRun manifest; tests mutate their own copy."""
    return copy.deepcopy(MINIMAL_DIFFUSION)


def pytest_configure(config):
    # kubernetes 36 on urllib3 1.26 warns on every error response; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:HTTPResponse.getheaders:DeprecationWarning")
