"""`diffar render` errors, and the trainer's real metrics read as progress. `diffar operator` as a
process (namespaced, liveness, Prometheus metrics) runs against a real API server in
tests/cluster/test_namespaced.py."""

from __future__ import annotations

import copy
import subprocess
import sys

import yaml
from testsupport.servers import free_port

from diffar.operator import progress
from diffar.trainer.metrics import StepReport, TrainMetrics

from .conftest import ROOT


def test_progress_reads_the_trainers_own_metrics_endpoint():
    metrics = TrainMetrics("mdm-small", "mdm", port=0)
    report = StepReport(
        step=120,
        total_steps=976,
        epoch=0.49,
        loss=6.75,
        lr=2e-4,
        grad_norm=1.1,
        tokens_seen=491520,
        tokens_per_second=1e5,
        mfu=0.4,
        eta_seconds=60,
    )
    metrics.update(report, new_tokens=491520)
    sample = progress.scrape(f"http://127.0.0.1:{metrics.port}/metrics")
    assert sample == {"step": 120, "loss": 6.75, "epoch": 0.49, "tokens_seen": 491520}
    assert progress.scrape(f"http://127.0.0.1:{free_port()}/metrics", timeout=1) is None


def test_render_reports_user_errors_in_one_line(tmp_path, manifest):
    bad = copy.deepcopy(manifest)
    bad["spec"]["model"]["preset"] = "7B"
    bad["spec"]["training"]["precision"] = "fp16"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    for args, text in (
        ([str(path)], "precision"),
        ([str(tmp_path / "missing.yaml")], "cannot read"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "diffar.operator.cli", "render", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and text in proc.stderr
        assert "Traceback" not in proc.stderr
    bad["spec"]["training"]["precision"] = "bf16"
    path.write_text(yaml.safe_dump(bad))
    proc = subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", "render", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "'7B' is unknown" in proc.stderr
