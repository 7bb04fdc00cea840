"""The end-to-end harness: the emulator on loopback, a kubeconfig for it, an API client, and
stand-ins for the trainer's /metrics and the Pushgateway. conftest.py exposes these fixtures."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kubernetes
import pytest

from diffar.operator.kube import Kube

from .kube_emulator import EmulatorServer

NS = "research"


class FakeServices:
    """A trainer's /metrics (per run) and a Pushgateway that records DELETEs, on loopback."""

    def __init__(self) -> None:
        self.metrics: dict[str, str] = {}
        self.deleted: list[str] = []
        services = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                text = services.metrics.get(self.path)
                self.send_response(200 if text is not None else 404)
                self.end_headers()
                self.wfile.write((text or "").encode())

            def do_DELETE(self):
                services.deleted.append(self.path)
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set_progress(self, run: str, step: int, loss: float, tokens: int, epoch: float) -> None:
        self.metrics[f"/metrics/{NS}/{run}"] = (
            "# TYPE diffar_train_step gauge\n"
            f"diffar_train_step {step}\n"
            "# TYPE diffar_train_loss gauge\n"
            f"diffar_train_loss {loss}\n"
            "# TYPE diffar_train_tokens_seen counter\n"
            f"diffar_train_tokens_seen_total {tokens}\n"
            "# TYPE diffar_train_epoch gauge\n"
            f"diffar_train_epoch {epoch}\n"
        )

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def services() -> Iterator[FakeServices]:
    s = FakeServices()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def cluster(run_crds) -> Iterator[EmulatorServer]:
    server = EmulatorServer(list(run_crds.values())).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kubeconfig(cluster, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": cluster.url}}],
                "users": [{"name": "test", "user": {"token": "test"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
                "current-context": "kmock",
            }
        )
    )
    return path


@pytest.fixture()
def kube(cluster) -> Kube:
    cfg = kubernetes.client.Configuration(host=cluster.url)
    return Kube(kubernetes.client.ApiClient(cfg), timeout=10)


@pytest.fixture()
def operator_env(monkeypatch, kubeconfig, services):
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # kopf's login reads the kubernetes package's default path, fixed when it was imported.
    monkeypatch.setattr(
        kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig)
    )
    monkeypatch.setenv("DIFFAR_METRICS_URL_TEMPLATE", services.url + "/metrics/{namespace}/{run}")
    monkeypatch.setenv("DIFFAR_PUSHGATEWAY_URL", services.url)
