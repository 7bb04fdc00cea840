"""The operator as shipped: `diffar operator` in a subprocess (namespaced, liveness endpoint,
Prometheus metrics), `diffar render` errors, and the trainer's real metrics read as progress."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
import urllib.request

import yaml
from testsupport.servers import free_port

from diffar.operator import progress
from diffar.trainer.metrics import StepReport, TrainMetrics

from .conftest import ROOT
from .harness import NS


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


def test_diffar_operator_namespaced_with_liveness_and_metrics(kube, kubeconfig, manifest, tmp_path):
    live, prom = free_port(), free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "DIFFAR_PROGRESS_INTERVAL": "0.5",
    }
    other = copy.deepcopy(manifest)
    other["metadata"].update(name="elsewhere", namespace="other")
    mine = copy.deepcopy(manifest)
    mine["metadata"]["name"] = "cli-run"
    kube.create(other)
    kube.create(mine)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "diffar.operator.cli",
            "operator",
            "--namespace",
            NS,
            "--standalone",
            "--liveness",
            f"http://127.0.0.1:{live}/healthz",
            "--metrics-port",
            str(prom),
        ],
        env=env,
        cwd=ROOT,
        stdout=(log := (tmp_path / "operator.log").open("w")),
        stderr=subprocess.STDOUT,
    )

    def output() -> str:
        return (tmp_path / "operator.log").read_text()[-5000:]

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and kube.get("PyTorchJob", NS, "cli-run-train") is None:
            assert proc.poll() is None, output()
            time.sleep(0.1)
        assert kube.get("PyTorchJob", NS, "cli-run-train") is not None, output()
        with urllib.request.urlopen(f"http://127.0.0.1:{live}/healthz", timeout=5) as r:
            assert r.status == 200
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline and 'phase="Pending"} 1.0' not in text:
            with urllib.request.urlopen(f"http://127.0.0.1:{prom}/metrics", timeout=5) as r:
                text = r.read().decode()
            time.sleep(0.1)
        assert 'diffar_operator_runs{objective="mdm",phase="Pending"} 1.0' in text
        assert 'diffar_operator_reconcile_seconds_count{kind="DiffusionRun"}' in text
        assert 'diffar_operator_children_created_total{kind="PyTorchJob"} 1.0' in text
        # Namespaced: the run in another namespace is not touched.
        assert "status" not in kube.get("DiffusionRun", "other", "elsewhere")
        assert kube.get("PyTorchJob", "other", "elsewhere-train") is None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    kube.delete("DiffusionRun", "other", "elsewhere")
