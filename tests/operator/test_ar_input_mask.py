"""`spec.ar.inputMaskRate` (issue 15): an ARRun renders it into the trainer's config, a
DiffusionRun refuses it, and out-of-range rates are refused, through `diffar render` itself."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import yaml

from .conftest import ROOT


def _render(tmp_path, manifest: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", "render", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def _train_config(rendered: str) -> dict:
    for doc in yaml.safe_load_all(rendered):
        if doc and doc.get("kind") == "ConfigMap":
            for value in doc["data"].values():
                if '"objective"' in value:
                    return json.loads(value)
    raise AssertionError("no TrainConfig in the rendered ConfigMap")


def test_render_accepts_input_mask_rate_on_arrun_and_refuses_it_on_diffusionrun(tmp_path, manifest):
    ar = copy.deepcopy(manifest)
    ar["kind"] = "ARRun"
    ar["spec"]["ar"] = {"inputMaskRate": 0.25}
    proc = _render(tmp_path, ar)
    assert proc.returncode == 0, proc.stderr
    assert _train_config(proc.stdout)["ar"]["input_mask_rate"] == 0.25

    plain = copy.deepcopy(manifest)
    plain["kind"] = "ARRun"
    proc = _render(tmp_path, plain)
    assert proc.returncode == 0 and _train_config(proc.stdout)["ar"]["input_mask_rate"] == 0.0

    mdm = copy.deepcopy(manifest)
    mdm["spec"]["ar"] = {"inputMaskRate": 0.25}
    proc = _render(tmp_path, mdm)
    assert proc.returncode == 2 and "spec.ar" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr

    for bad in (1.0, -0.1, "0.2; rm -rf /"):
        ar["spec"]["ar"] = {"inputMaskRate": bad}
        proc = _render(tmp_path, ar)
        assert proc.returncode == 2 and "inputMaskRate" in proc.stderr, (bad, proc.stderr)
