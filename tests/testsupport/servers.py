"""Real servers for integration tests, started on loopback ports: Prometheus and its Pushgateway.

A missing binary fails the test (never skips it): CI installs the Debian packages
`prometheus` and `prometheus-pushgateway` through `make test`.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary(*names: str, hint: str) -> str:
    for name in names:
        path = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
        )
        if path:
            return path
    pytest.fail(f"{' or '.join(names)} not found: {hint}", pytrace=False)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
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


@dataclass
class PromStack:
    pushgateway_url: str
    prometheus_url: str

    def query(self, promql: str) -> list[dict]:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = yaml.safe_load(r.read())
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


@contextlib.contextmanager
def prometheus_stack(root: Path, scrape_configs: list[dict] | None = None) -> Iterator[PromStack]:
    """A Pushgateway and a Prometheus scraping it (plus `scrape_configs`) every second."""
    hint = "install the Debian packages prometheus and prometheus-pushgateway (make test does)"
    prometheus = find_binary("prometheus", hint=hint)
    pushgateway = find_binary("prometheus-pushgateway", "pushgateway", hint=hint)
    pg_port, prom_port = free_port(), free_port()
    (root / "data").mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            *(scrape_configs or []),
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{pg_port}"]}],
            },
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    commands = [
        (
            [
                pushgateway,
                f"--web.listen-address=127.0.0.1:{pg_port}",
                # Debian's default persists to /var/lib/prometheus, shared with every other
                # Pushgateway on the machine: keep this one's state to itself.
                f"--persistence.file={root / 'pushgateway.data'}",
            ],
            f"http://127.0.0.1:{pg_port}/-/ready",
            root / "pushgateway.log",
        ),
        (
            [
                prometheus,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            f"http://127.0.0.1:{prom_port}/-/ready",
            root / "prometheus.log",
        ),
    ]
    procs: list[subprocess.Popen] = []
    try:
        for cmd, ready, log_path in commands:
            with open(log_path, "w") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            wait_ready(ready, procs[-1], log_path)
        yield PromStack(f"http://127.0.0.1:{pg_port}", f"http://127.0.0.1:{prom_port}")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
