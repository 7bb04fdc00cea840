"""The operator image, assembled without Docker: what its Dockerfile stage does, in a virtualenv.

The build context is made from .dockerignore's rules; the `wheel` stage's `pip wheel --no-deps
--no-build-isolation .` runs on it; a fresh virtualenv gets `images/operator/requirements.txt`
with --no-deps (so the lock must be complete by itself) and the diffar wheel, then `pip check`
and the image's command must work: `diffar operator --help`, the kopf handlers import, and
`diffar render` of an example. Needs PyPI (as the image build does).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv

import pytest

from .conftest import ROOT, run
from .test_images import _dockerignore_allows

pytestmark = pytest.mark.slow


def build_context(dest) -> None:
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith((".git/", ".venv/", ".tools/")) or not path.is_file():
            continue
        if _dockerignore_allows(rel):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def test_operator_image_installs_and_runs(tmp_path):
    context = tmp_path / "context"
    build_context(context)
    assert (context / "pyproject.toml").is_file() and (context / "operator" / "cli.py").is_file()
    assert not (context / "tests").exists() and not (context / "examples").exists()
    dist = tmp_path / "dist"
    wheel_cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    run([*wheel_cmd, "--wheel-dir", str(dist), str(context)], cwd=tmp_path)
    (wheel,) = dist.glob("diffar-*.whl")

    env_dir = tmp_path / "image"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check"]
    # Run from outside the repository: its operator/ folder would shadow the standard library's.
    reqs = str(ROOT / "images" / "operator" / "requirements.txt")
    run([*pip, "-r", reqs], cwd=tmp_path, timeout=600)
    run([*pip, str(wheel)], cwd=tmp_path)
    # Every installed package has its dependencies, but diffar's own (installed --no-deps: the
    # operator image leaves out torch and the rest of the trainer's stack on purpose).
    check = subprocess.run([py, "-m", "pip", "check"], capture_output=True, text=True, cwd=tmp_path)
    problems = [ln for ln in check.stdout.splitlines() if not ln.startswith("diffar ")]
    assert problems == []
    diffar = str(env_dir / "bin" / "diffar")
    assert "--standalone" in run([diffar, "operator", "--help"], cwd=tmp_path).stdout
    run([py, "-c", "import diffar.operator.handlers"], cwd=tmp_path)
    example = str(ROOT / "examples" / "ar-100m.yaml")
    assert "kind: PyTorchJob" in run([diffar, "render", example], cwd=tmp_path).stdout
    # No torch in the operator image.
    proc = subprocess.run([py, "-c", "import torch"], capture_output=True, cwd=tmp_path)
    assert proc.returncode != 0
