"""Fixtures for the evaluator's tests: the helper module, and real Prometheus + Pushgateway.

The helper models live in evalhelpers.py beside this file; it is registered in sys.modules
(not put on sys.path, where another test folder's conftest could be shadowed).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "evalhelpers", Path(__file__).with_name("evalhelpers.py")
)
evalhelpers = importlib.util.module_from_spec(_spec)
sys.modules["evalhelpers"] = evalhelpers
_spec.loader.exec_module(evalhelpers)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} not ready after {timeout:.0f}s:\n{log.read_text()[-2000:]}")


def _binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
        )
        if path:
            return path
    pytest.fail(
        f"{' or '.join(names)} not found: the Prometheus integration test needs the Debian packages "
        "prometheus and prometheus-pushgateway (apt-get install -y prometheus prometheus-pushgateway)"
    )


@dataclass
class PromStack:
    pushgateway_url: str
    prometheus_url: str

    def query(self, promql: str) -> list[dict]:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, promql: str, timeout: float = 60.0) -> list[dict]:
        """Poll until the query returns series (Prometheus scrapes every second)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result:
                return result
            time.sleep(0.5)
        pytest.fail(f"Prometheus returned nothing for {promql} within {timeout:.0f}s")


@pytest.fixture(scope="session")
def prometheus_stack(tmp_path_factory):
    """Real prometheus-pushgateway and prometheus on free loopback ports, scraping every 1s."""
    prometheus = _binary("prometheus")
    pushgateway = _binary("prometheus-pushgateway", "pushgateway")
    root = tmp_path_factory.mktemp("prometheus")
    pg_port, prom_port = free_port(), free_port()
    (root / "data").mkdir()
    config = root / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{pg_port}']\n"
    )
    procs = []
    try:
        pg_log = root / "pushgateway.log"
        with open(pg_log, "w") as log:
            procs.append(
                subprocess.Popen(
                    [pushgateway, f"--web.listen-address=127.0.0.1:{pg_port}"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        _wait_ready(f"http://127.0.0.1:{pg_port}/-/ready", procs[-1], pg_log)
        prom_log = root / "prometheus.log"
        with open(prom_log, "w") as log:
            procs.append(
                subprocess.Popen(
                    [
                        prometheus,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={root / 'data'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        _wait_ready(f"http://127.0.0.1:{prom_port}/-/ready", procs[-1], prom_log)
        yield PromStack(f"http://127.0.0.1:{pg_port}", f"http://127.0.0.1:{prom_port}")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
