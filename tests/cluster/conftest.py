"""Fixtures of the cluster tests: one real control plane per pytest session
(tests/testsupport/cluster.py), a namespace per test, the operator per test as the chart's
ServiceAccount, a real Pushgateway, and a stand-in for the trainer's /metrics (the trainer is a
GPU pod that this control plane, having no kubelet, never runs)."""

from __future__ import annotations

import copy
import secrets
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kubernetes
import pytest
from testsupport import cluster
from testsupport.manifests import MINIMAL_DIFFUSION
from testsupport.servers import find_binary, free_port, wait_ready

from diffar.operator.kube import ApiError, Kube

ROOT = cluster.ROOT
PROGRESS_INTERVAL = "0.5"


class TrainerMetrics:
    """Each run's rank-0 /metrics, as the trainer exposes them, on one loopback port."""

    def __init__(self) -> None:
        self.metrics: dict[str, str] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                text = outer.metrics.get(self.path)
                self.send_response(200 if text is not None else 404)
                self.end_headers()
                self.wfile.write((text or "").encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.template = (
            f"http://127.0.0.1:{self.server.server_address[1]}/metrics/{{namespace}}/{{run}}"
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set_progress(self, ns: str, run: str, step: int, loss: float, tokens: int, epoch: float):
        self.metrics[f"/metrics/{ns}/{run}"] = (
            "# TYPE diffar_train_step gauge\n"
            f"diffar_train_step {step}\n"
            "# TYPE diffar_train_loss gauge\n"
            f"diffar_train_loss {loss}\n"
            "# TYPE diffar_train_tokens_seen counter\n"
            f"diffar_train_tokens_seen_total {tokens}\n"
            "# TYPE diffar_train_epoch gauge\n"
            f"diffar_train_epoch {epoch}\n"
        )


@pytest.fixture(scope="session")
def trainer_metrics() -> Iterator[TrainerMetrics]:
    t = TrainerMetrics()
    yield t
    t.server.shutdown()


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory) -> Iterator[str]:
    exe = find_binary(
        "prometheus-pushgateway",
        "pushgateway",
        hint="install the Debian package prometheus-pushgateway (make test does)",
    )
    root = tmp_path_factory.mktemp("pushgateway")
    port = free_port()
    log = root / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [exe, f"--web.listen-address=127.0.0.1:{port}", f"--persistence.file={root / 'db'}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/-/ready", proc, log)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory, trainer_metrics, pushgateway) -> Iterator[cluster.ControlPlane]:
    root = tmp_path_factory.mktemp("cluster")
    env = {
        "DIFFAR_PROGRESS_INTERVAL": PROGRESS_INTERVAL,
        "DIFFAR_METRICS_URL_TEMPLATE": trainer_metrics.template,
        "DIFFAR_PUSHGATEWAY_URL": pushgateway,
    }
    try:
        cp = cluster.start(root, operator=False, operator_env=env, progress=lambda _m: None)
    except cluster.ClusterError as e:
        pytest.fail(str(e), pytrace=False)
    yield cp
    cluster.stop(root, progress=lambda _m: None)


def admin_kube(cp: cluster.ControlPlane) -> Kube:
    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=cfg)
    return Kube(kubernetes.client.ApiClient(cfg), timeout=15)


@pytest.fixture()
def kube(control_plane) -> Kube:
    return admin_kube(control_plane)


@pytest.fixture()
def ns(control_plane) -> Iterator[str]:
    """A fresh namespace; deleted (without waiting) after the test."""
    name = f"t-{secrets.token_hex(4)}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    # The runs carry the operator's finalizer and the operator may be gone: release them, or
    # they (and the namespace) would linger, and the next test's operator would keep their
    # progress timers busy.
    kube = admin_kube(control_plane)
    for kind in ("DiffusionRun", "ARRun", "ScalingStudy"):
        for run in kube.list(kind, name):
            kube.patch(kind, name, run["metadata"]["name"], {"metadata": {"finalizers": None}})
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


class Operator:
    """`diffar operator` as the chart's ServiceAccount; restartable, its log kept per test."""

    def __init__(self, cp: cluster.ControlPlane, log: Path):
        self.cp = cp
        self.log_path = log
        self.offset = 0

    def start(self, *args: str, account: tuple[str, str] | None = None) -> None:
        log = self.cp.log("operator")
        self.offset = log.stat().st_size if log.exists() else 0
        self.cp.start_operator(
            args=list(args), account=account or (cluster.RELEASE_NS, cluster.SERVICE_ACCOUNT)
        )

    def stop(self, sig: int = 15) -> None:
        self.cp.stop_operator(sig=sig)

    def output(self) -> str:
        try:
            return self.cp.log("operator").read_text(errors="replace")[self.offset :]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.cp.operator_alive()


@pytest.fixture()
def operator(control_plane, ns, tmp_path) -> Iterator[Operator]:
    # Needs `ns` so that it stops before the namespace goes (no creates into a terminating one).
    op = Operator(control_plane, tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()
    (tmp_path / "operator.log").write_text(op.output())


# The garbage collector rereads the API's resources every 30 s: a kind whose CRD was installed
# since its last sync (TrainJobs early in a session) is collected only after the next one.
GC_TIMEOUT = 90.0


def wait_for(what: str, check: Callable[[], object], timeout: float = 30.0, log=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (ApiError, KeyError, TypeError, IndexError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.1)
    tail = f"\noperator log:\n{log()[-3000:]}" if log else ""
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}{tail}")


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def pytest_configure(config):
    # kubernetes 36 on urllib3 1.26 warns on every error response; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:HTTPResponse.getheaders:DeprecationWarning")


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture()
def manifest(ns) -> dict:
    """A small valid DiffusionRun in the test's namespace; tests mutate their own copy."""
    m = copy.deepcopy(MINIMAL_DIFFUSION)
    m["metadata"]["namespace"] = ns
    return m
