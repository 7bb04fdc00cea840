"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
the diffar chart installed with Helm, and the operator as a process under the chart's RBAC.

One module serves `make cluster` / `make cluster-down` (through `python -m testsupport.cluster`)
and the pytest session fixture of tests/cluster. The binaries come from scripts/k8s/build.sh
(built once per Kubernetes release into ~/.cache/diffar-k8s/<version>/bin); a missing binary is
an error, never a reason to skip.

Layout of a state directory (`.cluster/` for make, a temporary one for pytest):

    pki/            CA, the API server's serving cert, the service-account signing key
    tokens.csv      static tokens: the admin (system:masters) and the controller manager
    kubeconfig      admin credentials (what `make cluster` tells you to export)
    operator.kubeconfig  a TokenRequest token of the chart's ServiceAccount
    (etcd's data is on /dev/shm when there is one, else in etcd-<port>/ here)
    logs/           one log per process
    state.json      ports and process ids, read by `start` (to reuse) and `stop`
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from testsupport.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
CRDS_FROM_SHARED = [
    SHARED / "kubeflow" / "kubeflow.org_pytorchjobs.yaml",
    *sorted((SHARED / "kubeflow-trainer").glob("*.yaml")),
]
RELEASE, RELEASE_NS = "diffar", "diffar-system"
SERVICE_ACCOUNT = "diffar"  # the chart's full name for release "diffar"
CONTROLLERS = "garbagecollector,job,namespace,serviceaccount,serviceaccount-token"
TOOLS = ROOT / ".tools" / "bin"


class ClusterError(RuntimeError):
    """The control plane could not be started; the message says what to do."""


def k8s_version() -> str:
    for line in (ROOT / "scripts" / "k8s" / "go.mod").read_text().splitlines():
        parts = line.split()
        if parts[:2] == ["require", "k8s.io/kubernetes"]:
            return parts[2]
    raise ClusterError("scripts/k8s/go.mod pins no k8s.io/kubernetes release")


def bin_dir() -> Path:
    cache = Path(os.environ.get("DIFFAR_K8S_CACHE", Path.home() / ".cache" / "diffar-k8s"))
    return cache / k8s_version() / "bin"


def binary(name: str) -> str:
    path = bin_dir() / name
    if not os.access(path, os.X_OK):
        raise ClusterError(f"{path} is missing: run `bash scripts/k8s/build.sh` (make test does)")
    return str(path)


def tool(name: str) -> str:
    path = TOOLS / name
    if not os.access(path, os.X_OK):
        raise ClusterError(f"{path} is missing: run `make tools`")
    return str(path)


# -- credentials ----------------------------------------------------------------------------


def _write_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate (127.0.0.1, localhost) and the RSA key the
    API server signs service-account tokens with."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def pem_key(k) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    def name(cn: str):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("diffar-test-ca"))
        .issuer_name(name("diffar-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = key()
    server = (
        x509.CertificateBuilder()
        .subject_name(name("kube-apiserver"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = key()
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (pki / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (pki / "server.key").write_bytes(pem_key(server_key))
    (pki / "sa.key").write_bytes(pem_key(sa_key))
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for f in pki.iterdir():
        f.chmod(0o600)


def kubeconfig_text(server: str, ca: Path, user: str, token: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "diffar-test",
                    "cluster": {"server": server, "certificate-authority": str(ca)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {"name": user, "context": {"cluster": "diffar-test", "user": user}},
            ],
            "current-context": user,
        },
        indent=2,
    )


# -- processes ------------------------------------------------------------------------------


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child not yet reaped) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _spawn(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        # Its own session: `make cluster` returns while the process lives on, and a terminal's
        # Ctrl-C in the parent shell does not reach it.
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )


def _terminate(pid: int | None, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    if not _alive(pid):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # reap it when it is our child (the pytest fixture's case)
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        if not _alive(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        while _alive(pid):
            time.sleep(0.05)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@dataclass
class State:
    etcd_port: int = 0
    etcd_peer_port: int = 0
    apiserver_port: int = 0
    admin_token: str = ""
    pids: dict[str, int] = field(default_factory=dict)


@dataclass
class ControlPlane:
    """A started control plane; `root` is its state directory."""

    root: Path
    state: State
    operator_env: dict[str, str] = field(default_factory=dict)

    # where things are
    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.state.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.state.etcd_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def operator_kubeconfig(self) -> Path:
        return self.root / "operator.kubeconfig"

    @property
    def ca(self) -> Path:
        return self.root / "pki" / "ca.crt"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def save(self) -> None:
        (self.root / "state.json").write_text(json.dumps(asdict(self.state), indent=2))

    # tools
    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout=120):
        return self._run(
            [tool("kubectl"), f"--kubeconfig={self.kubeconfig}", *args], check, input, timeout
        )

    def helm(self, *args: str, check: bool = True, timeout=300):
        return self._run(
            [tool("helm"), f"--kubeconfig={self.kubeconfig}", *args], check, None, timeout
        )

    @staticmethod
    def _run(cmd: list[str], check: bool, input: str | None, timeout: float):
        proc = subprocess.run(
            cmd, capture_output=True, text=True, input=input, timeout=timeout, cwd=ROOT
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"{' '.join(cmd[:1] + cmd[2:])} failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
        return proc

    # health
    def healthy(self, timeout: float = 2.0) -> bool:
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.ca))
        req = urllib.request.Request(
            self.server + "/readyz", headers={"Authorization": f"Bearer {self.state.admin_token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, what: str, proc_name: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(self.state.pids.get(proc_name)):
                raise ClusterError(f"{proc_name} exited:\n{_tail(self.log(proc_name))}")
            if self.healthy():
                return
            time.sleep(0.2)
        raise ClusterError(f"{what} not ready after {timeout:.0f} s:\n{_tail(self.log(proc_name))}")

    # the pieces, each startable again (the fault tests restart them)
    @property
    def etcd_data(self) -> Path:
        # On tmpfs when there is one: etcd fsyncs every write, and a busy disk turns that into
        # API-server timeouts. It survives etcd's restarts, not the machine's.
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.root
        return base / f"diffar-etcd-{self.state.etcd_port}"

    def start_etcd(self) -> None:
        data = self.etcd_data
        peer = f"http://127.0.0.1:{self.state.etcd_peer_port}"
        proc = _spawn(
            [
                binary("etcd"),
                "--name=default",
                f"--data-dir={data}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-level=warn",
            ],
            self.log("etcd"),
        )
        self.state.pids["etcd"] = proc.pid
        self.save()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(f"etcd exited:\n{_tail(self.log('etcd'))}")
            try:
                with urllib.request.urlopen(self.etcd_url + "/health", timeout=1) as r:
                    if b'"true"' in r.read():
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise ClusterError(f"etcd not healthy after 30 s:\n{_tail(self.log('etcd'))}")

    def start_apiserver(self, wait: bool = True) -> None:
        pki = self.root / "pki"
        port = self.state.apiserver_port
        proc = _spawn(
            [
                binary("kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # No kubelet, no "kubernetes" Service endpoints to keep (and a loopback address
                # is refused for them).
                "--endpoint-reconciler-type=none",
                f"--secure-port={port}",
                f"--tls-cert-file={pki / 'server.crt'}",
                f"--tls-private-key-file={pki / 'server.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={self.root / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer=https://127.0.0.1:{port}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=false",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                f"--cert-dir={pki}",
                "-v=1",
            ],
            self.log("kube-apiserver"),
        )
        self.state.pids["kube-apiserver"] = proc.pid
        self.save()
        if wait:
            self.wait_healthy("kube-apiserver", "kube-apiserver")

    def start_controller_manager(self) -> None:
        pki = self.root / "pki"
        proc = _spawn(
            [
                binary("kube-controller-manager"),
                f"--kubeconfig={self.root / 'controller-manager.kubeconfig'}",
                f"--controllers={CONTROLLERS}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                # Each controller as its own ServiceAccount with its bootstrap role, as in a real
                # cluster (system:kube-controller-manager alone may not create pods).
                "--use-service-account-credentials",
                "--leader-elect=false",
                "--secure-port=0",
                "--profiling=false",
                # GC and the Job controller react at once; their default resyncs are minutes.
                "--concurrent-gc-syncs=5",
                "-v=1",
            ],
            self.log("kube-controller-manager"),
        )
        self.state.pids["kube-controller-manager"] = proc.pid
        self.save()

    def stop_process(self, name: str, sig: int = signal.SIGTERM) -> None:
        _terminate(self.state.pids.pop(name, None), sig=sig)
        self.save()

    # the operator, as the chart's ServiceAccount
    def operator_token(
        self, namespace: str = RELEASE_NS, account: str = SERVICE_ACCOUNT, seconds: int = 86400
    ) -> str:
        """A token of the ServiceAccount from the TokenRequest API (what a pod gets mounted)."""
        return self.kubectl(
            "-n", namespace, "create", "token", account, f"--duration={seconds}s"
        ).stdout.strip()

    def start_operator(
        self,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        account: tuple[str, str] = (RELEASE_NS, SERVICE_ACCOUNT),
    ):
        """`diffar operator --standalone` with a TokenRequest token of the chart's
        ServiceAccount: exactly the chart's RBAC applies."""
        token = self.operator_token(*account)
        self.operator_kubeconfig.write_text(
            kubeconfig_text(self.server, self.ca, "diffar-operator", token)
        )
        self.operator_kubeconfig.chmod(0o600)
        diffar = ROOT / ".venv" / "bin" / "diffar"
        full_env = {
            **os.environ,
            "KUBECONFIG": str(self.operator_kubeconfig),
            "PYTHONUNBUFFERED": "1",
            **self.operator_env,
            **(env or {}),
        }
        full_env.pop("KUBERNETES_SERVICE_HOST", None)  # never mistake this for in-cluster
        args = list(args or [])
        if "--metrics-port" not in args:  # the default, 9401, may be taken on a shared machine
            args += ["--metrics-port", str(free_port())]
        proc = _spawn(
            [str(diffar), "operator", "--standalone", *args],
            self.log("operator"),
            env=full_env,
        )
        self.state.pids["operator"] = proc.pid
        self.save()
        return proc

    def operator_alive(self) -> bool:
        return _alive(self.state.pids.get("operator"))

    def stop_operator(self, sig: int = signal.SIGTERM) -> None:
        self.stop_process("operator", sig=sig)

    def install_chart(self) -> None:
        self.helm(
            "upgrade",
            "--install",
            RELEASE,
            str(ROOT / "charts" / "diffar"),
            "--namespace",
            RELEASE_NS,
            "--create-namespace",
        )

    def apply_shared_crds(self) -> None:
        missing = [p for p in CRDS_FROM_SHARED if not p.exists()]
        if missing or len(CRDS_FROM_SHARED) < 4:
            raise ClusterError(f"CRDs missing under {SHARED}: {[str(p) for p in missing]}")
        args = ["apply", "--server-side", "--force-conflicts"]
        for p in CRDS_FROM_SHARED:
            args += ["-f", str(p)]
        self.kubectl(*args)
        self.wait_established(
            "pytorchjobs.kubeflow.org",
            "trainjobs.trainer.kubeflow.org",
            "diffusionruns.diffar.io",
            "arruns.diffar.io",
        )

    def wait_established(self, *crds: str, timeout: float = 60.0) -> None:
        # Not `kubectl wait`: it fails outright on a CRD whose status has no conditions yet.
        jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
        deadline = time.monotonic() + timeout
        pending = list(crds)
        while pending:
            got = self.kubectl("get", "crd", pending[0], "-o", f"jsonpath={jsonpath}", check=False)
            if got.stdout.strip() == "True":
                pending.pop(0)
            elif time.monotonic() > deadline:
                raise ClusterError(f"CRD {pending[0]} not Established after {timeout:.0f} s")
            else:
                time.sleep(0.2)


def _load(root: Path) -> ControlPlane | None:
    try:
        state = State(**json.loads((root / "state.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return ControlPlane(root=root, state=state)


def start(
    root: Path,
    *,
    operator: bool = True,
    operator_env: dict[str, str] | None = None,
    progress=print,
) -> ControlPlane:
    """Start (or find running) the control plane in `root`; idempotent."""
    root = root.resolve()
    started = time.monotonic()
    cp = _load(root)
    if cp is not None and cp.healthy() and _alive(cp.state.pids.get("kube-controller-manager")):
        cp.operator_env = dict(operator_env or {})
        progress(f"control plane already running at {cp.server}")
        if operator and not cp.operator_alive():
            cp.start_operator()
        return cp
    if cp is not None:
        stop(root, progress=lambda *_: None)
    for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
        binary(name)
    tool("kubectl"), tool("helm")
    root.mkdir(parents=True, exist_ok=True)
    _rm_tree(root / "logs")
    _write_pki(root / "pki")
    admin, cm = secrets.token_hex(24), secrets.token_hex(24)
    (root / "tokens.csv").write_text(
        f'{admin},admin,admin-uid,"system:masters"\n{cm},system:kube-controller-manager,kcm-uid\n'
    )
    (root / "tokens.csv").chmod(0o600)
    cp = ControlPlane(
        root=root,
        state=State(
            etcd_port=free_port(),
            etcd_peer_port=free_port(),
            apiserver_port=free_port(),
            admin_token=admin,
        ),
        operator_env=dict(operator_env or {}),
    )
    cp.kubeconfig.write_text(kubeconfig_text(cp.server, cp.ca, "admin", admin))
    (root / "controller-manager.kubeconfig").write_text(
        kubeconfig_text(cp.server, cp.ca, "system:kube-controller-manager", cm)
    )
    for f in (cp.kubeconfig, root / "controller-manager.kubeconfig"):
        f.chmod(0o600)
    try:
        progress("starting etcd")
        _rm_tree(cp.etcd_data)
        cp.start_etcd()
        progress("starting kube-apiserver")
        cp.start_apiserver()
        progress("starting kube-controller-manager")
        cp.start_controller_manager()
        progress("installing the chart and the Kubeflow CRDs")
        cp.install_chart()
        cp.apply_shared_crds()
        if operator:
            progress("starting the operator as the chart's ServiceAccount")
            cp.start_operator()
    except BaseException:
        stop(root, progress=lambda *_: None)
        raise
    progress(f"control plane up in {time.monotonic() - started:.1f} s at {cp.server}")
    return cp


def stop(root: Path, progress=print) -> None:
    """Stop every process `start` left in `root` (operator first, etcd last)."""
    cp = _load(root.resolve())
    if cp is None:
        progress("no control plane recorded in " + str(root))
        return
    for name in ("operator", "kube-controller-manager", "kube-apiserver", "etcd"):
        pid = cp.state.pids.get(name)
        if _alive(pid):
            progress(f"stopping {name} ({pid})")
        cp.stop_process(name)
    left = [n for n, pid in cp.state.pids.items() if _alive(pid)]
    if left:
        raise ClusterError(f"still running: {left}")
    _rm_tree(cp.etcd_data)
    (root / "state.json").unlink(missing_ok=True)


def _rm_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=ROOT / ".cluster")
    parser.add_argument("--no-operator", action="store_true", help="leave the operator out")
    args = parser.parse_args(argv)

    def say(msg: str) -> None:
        print(f"cluster: {msg}", file=sys.stderr, flush=True)

    try:
        if args.command == "up":
            cp = start(args.dir, operator=not args.no_operator, progress=say)
            say(f"logs in {cp.root / 'logs'}; stop with `make cluster-down`")
            print(f"export KUBECONFIG={cp.kubeconfig}")
        else:
            stop(args.dir, progress=say)
    except ClusterError as e:
        say(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
