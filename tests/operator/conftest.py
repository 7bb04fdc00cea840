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
from testsupport.manifests import MINIMAL_DIFFUSION, run_examples

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# The real PyTorchJob CRD lives in the shared folder beside the checkout (CI lays it there too);
# its README asks that it be read from there, not copied into the project.
PYTORCHJOB_CRD = ROOT.parent / "shared" / "kubeflow" / "kubeflow.org_pytorchjobs.yaml"
# Run manifests; ScalingStudies (study-*.yaml) have their own tests (tests/operator/test_study.py).
EXAMPLES = run_examples(ROOT)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="session")
def pytorchjob_crd() -> dict:
    return load_yaml(PYTORCHJOB_CRD)


@pytest.fixture(scope="session")
def run_crds() -> dict[str, dict]:
    from diffar.operator import crdgen

    return {crd["spec"]["names"]["kind"]: crd for crd in crdgen.crds()}


@pytest.fixture()
def manifest() -> dict:
    """A small valid DiffusionRun manifest; tests mutate their own copy."""
    return copy.deepcopy(MINIMAL_DIFFUSION)


def pytest_configure(config):
    # kubernetes 36 on urllib3 1.26 warns on every error response; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:HTTPResponse.getheaders:DeprecationWarning")
