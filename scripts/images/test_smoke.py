"""Smoke tests of the images that scripts/images/build.sh built (`make images-test` runs both).

Each image runs here through buildah (`buildah run --isolation chroot`), or, for the operator's
read-only root filesystem, from its mounted rootfs in a mount namespace of its own (buildah run
cannot make the root read-only). Nothing is mocked: the operator image reconciles against a real
control plane (etcd + kube-apiserver + kube-controller-manager, tests/testsupport/cluster.py, the
chart installed with Helm) and authenticates as the chart's ServiceAccount.

Not collected by `make test` (it lives outside tests/): it needs root, buildah and the built
images, and fails (never skips) without them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The control plane and the evaluator fixtures of the test suite.
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "evaluator")]

TARGETS = ("operator", "trainer", "evaluator")
UID = "10001"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def image(target: str) -> str:
    return f"localhost/diffar-test/diffar-{target}:latest"


def buildah(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)}: rc={proc.returncode}\n{proc.stderr}")
    return proc


def inspect(target: str) -> dict:
    return json.loads(buildah("inspect", "--type", "image", image(target)).stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Container:
    """A working container of an image; `run` executes in it as the image's USER."""

    def __init__(self, target: str):
        self.target = target
        self.name = buildah("from", "--pull=never", image(target)).stdout.strip()

    def run(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        volumes: dict[str, str] | None = None,
        check: bool = True,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess:
        args = ["run", "--isolation", "chroot"]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        for src, dst in (volumes or {}).items():
            args += ["--volume", f"{src}:{dst}"]
        proc = buildah(*args, self.name, "--", *argv, check=False, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{self.target}: {' '.join(argv)}: rc={proc.returncode}\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def remove(self) -> None:
        buildah("rm", self.name, check=False)


class Containers(dict):
    """One working container per image, made when first used."""

    def __missing__(self, target: str) -> Container:
        self[target] = Container(target)
        return self[target]


@pytest.fixture(scope="module")
def containers() -> Iterator[Containers]:
    made = Containers()
    yield made
    for c in made.values():
        c.remove()


def entrypoint(target: str) -> list[str]:
    return inspect(target)["OCIv1"]["config"]["Entrypoint"]


# --- every image ----------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_runs_as_non_root(containers, target):
    assert inspect(target)["OCIv1"]["config"]["User"] == f"{UID}:0"
    out = containers[target].run("id", "-u").stdout.strip()
    assert out == UID
    assert containers[target].run("id", "-g").stdout.strip() == "0"


@pytest.mark.parametrize("target", TARGETS)
def test_entrypoint_help(containers, target):
    out = containers[target].run(*entrypoint(target), "--help").stdout
    assert "usage: diffar" in out and "operator" in out and "train" in out


@pytest.mark.parametrize("target", TARGETS)
def test_pip_check(containers, target):
    """Every installed package has its dependencies, but diffar's own: it is installed --no-deps
    over the image's pinned requirements, which leave out what the image does not run."""
    proc = containers[target].run("pip", "check", check=False)
    problems = [ln for ln in proc.stdout.splitlines() if not ln.startswith("diffar ")]
    assert problems == [], proc.stdout


@pytest.mark.parametrize("target", TARGETS)
def test_image_has_the_current_source(containers, target):
    """The layer cache never serves a stale diffar: the installed code is the checkout's."""
    code = (
        "import hashlib, diffar.operator.cli as m; "
        "print(hashlib.sha256(open(m.__file__, 'rb').read()).hexdigest())"
    )
    out = containers[target].run("python", "-c", code).stdout.strip()
    assert out == hashlib.sha256((ROOT / "operator" / "cli.py").read_bytes()).hexdigest()


IMPORTS = {
    "operator": "import kopf, kubernetes, prometheus_client, diffar.operator.handlers",
    "trainer": "import torch, deepspeed, tiktoken, boto3, diffar.trainer.train, "
    "diffar.trainer.distributed",
    "evaluator": "import torch, scipy, matplotlib, pyarrow, boto3, diffar.evaluator.run",
}
ABSENT = {
    "operator": ("torch", "numpy", "deepspeed", "boto3"),
    "trainer": (),
    "evaluator": ("deepspeed",),
}


@pytest.mark.parametrize("target", TARGETS)
def test_imports(containers, target):
    containers[target].run("python", "-c", IMPORTS[target])
    for module in ABSENT[target]:
        proc = containers[target].run("python", "-c", f"import {module}", check=False)
        assert proc.returncode != 0, f"{module} is in the {target} image"


@pytest.mark.parametrize("target", TARGETS)
def test_no_wheel_or_requirements_left_in_any_layer(target):
    """Build output: the layers the Dockerfile adds (not the base's) hold no wheel and nothing in
    /tmp; files deleted by a later layer would still be in an earlier layer's diff."""
    found = []
    for diff in added_layer_dirs(target):
        for path in diff.rglob("*"):
            rel = path.relative_to(diff).as_posix()
            if rel.endswith(".whl") or (rel.startswith("tmp/") and not path.is_char_device()):
                found.append(rel)
    assert found == []


def added_layer_dirs(target: str) -> list[Path]:
    """The overlay diff folders of the layers an image has above its stand-in base, read from
    buildah's storage (containers/storage: overlay-images/images.json, overlay-layers/)."""
    info = json.loads(buildah("info").stdout)
    storage = Path(info["store"]["GraphRoot"])
    images = json.loads((storage / "overlay-images" / "images.json").read_text())
    layers = {
        layer["id"]: layer
        for layer in json.loads((storage / "overlay-layers" / "layers.json").read_text())
    }
    (top,) = [i["layer"] for i in images if image(target) in (i.get("names") or [])]
    bases = {
        i["layer"]
        for i in images
        if any(n.startswith("localhost/diffar-standin/") for n in i.get("names") or [])
    }
    own = []
    while top not in bases:
        assert top, f"{target}: no stand-in base under its layers"
        own.append(top)
        top = layers[top].get("parent", "")
    assert own, f"{target}: no layers of its own?"
    return [storage / "overlay" / layer / "diff" for layer in own]


# --- docker format: SHELL survives -----------------------------------------------------------


@pytest.mark.parametrize("target", ("trainer", "evaluator"))
def test_shell_is_kept_by_the_docker_format(target):
    info = inspect(target)
    assert info["Docker"]["config"].get("Shell") == ["/bin/bash", "-o", "pipefail", "-c"]


# --- operator: /healthz and /metrics with a read-only root ------------------------------------


@contextlib.contextmanager
def readonly_root(target: str) -> Iterator[Path]:
    """The image's rootfs, mounted: run() in it chroots with / read-only, as the chart runs it."""
    name = buildah("from", "--pull=never", image(target)).stdout.strip()
    try:
        yield Path(buildah("mount", name).stdout.strip())
    finally:
        buildah("umount", name, check=False)
        buildah("rm", name, check=False)


def readonly_command(root: Path, binds: dict[str, str], argv: list[str], env: dict) -> list[str]:
    """unshare + chroot: / read-only, /tmp an empty tmpfs (the chart's emptyDir), /proc and /dev,
    host folders bound read-only, then argv as uid 10001 with only env."""
    lines = [
        "set -e",
        f"r={root}",
        'mount --bind "$r" "$r"',
        'mount -o remount,bind,ro "$r"',
        'mount -t proc proc "$r/proc"',
        'mount --rbind /dev "$r/dev"',
        'mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"',
    ]
    for src, dst in binds.items():
        lines += [f'mount --bind {src} "$r{dst}"', f'mount -o remount,bind,ro "$r{dst}"']
    env_args = " ".join(f"{k}={v}" for k, v in env.items())
    lines.append(
        f'exec chroot --userspec={UID}:0 "$r" /usr/bin/env -i PATH={PATH} {env_args} '
        + " ".join(argv)
    )
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "sh",
        "-c",
        "\n".join(lines),
    ]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory) -> Iterator:
    """A control plane of its own, without the venv's operator: the image's operator must be the
    only one reconciling, and a `make cluster` left running (or another session's) is neither
    needed nor touched. Warm, it starts in well under 30 s."""
    from testsupport import cluster

    root = tmp_path_factory.mktemp("cluster")
    try:
        cp = cluster.start(root, operator=False, progress=lambda _m: None)
    except cluster.ClusterError as e:
        pytest.fail(str(e), pytrace=False)
    yield cp
    cluster.stop(root, progress=lambda _m: None)


def test_operator_read_only_root_healthz_and_metrics(tmp_path, control_plane):
    import kubernetes
    from testsupport import cluster

    from diffar.operator.kube import Kube

    cp = control_plane
    manifest = yaml.safe_load((ROOT / "examples" / "diffusion-tiny-1gpu.yaml").read_text())
    namespace = "research"
    manifest["metadata"]["namespace"] = namespace
    cp.kubectl("create", "namespace", namespace)
    # What a pod of the chart's Deployment gets mounted: a TokenRequest token of its
    # ServiceAccount and the cluster's CA, so exactly the chart's RBAC applies.
    kube_dir = tmp_path / "kube"
    kube_dir.mkdir()
    (kube_dir / "ca.crt").write_bytes(cp.ca.read_bytes())
    (kube_dir / "config").write_text(
        cluster.kubeconfig_text(
            cp.server, Path("/mnt/ca.crt"), "diffar-operator", cp.operator_token()
        )
    )
    kube_dir.chmod(0o755)
    for f in kube_dir.iterdir():
        f.chmod(0o644)
    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=cfg)
    kube = Kube(kubernetes.client.ApiClient(cfg), timeout=15)
    kube.create(manifest)
    live, prom = free_port(), free_port()
    log = tmp_path / "operator.log"
    with readonly_root("operator") as root:
        # The root really is read-only for the operator's user, and /tmp is writable.
        probe = subprocess.run(
            readonly_command(
                root, {}, ["sh", "-c", "'touch /probe || touch /tmp/ok && echo tmp-ok'"], {}
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Read-only file system" in probe.stderr and "tmp-ok" in probe.stdout, probe
        argv = [
            *entrypoint("operator"),
            "operator",
            "--standalone",
            "--namespace",
            namespace,
            "--liveness",
            f"http://127.0.0.1:{live}/healthz",
            "--metrics-port",
            str(prom),
        ]
        env = {"HOME": "/nonexistent", "KUBECONFIG": "/mnt/config", "PYTHONUNBUFFERED": "1"}
        with log.open("w") as out:
            proc = subprocess.Popen(
                readonly_command(root, {str(kube_dir): "/mnt"}, argv, env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            child = f"{manifest['metadata']['name']}-train"
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and kube.get("PyTorchJob", namespace, child) is None:
                assert proc.poll() is None, log.read_text()[-4000:]
                time.sleep(0.5)
            assert kube.get("PyTorchJob", namespace, child) is not None, log.read_text()[-4000:]
            status, _ = http_get(f"http://127.0.0.1:{live}/healthz")
            assert status == 200, log.read_text()[-4000:]
            status, text = http_get(f"http://127.0.0.1:{prom}/metrics")
            assert status == 200 and "diffar_operator_reconcile_seconds_count" in text, text
            assert 'diffar_operator_children_created_total{kind="PyTorchJob"} 1.0' in text
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


# --- trainer: torchrun from PET_*, dry run of a rendered example ------------------------------


def rendered_train_config(dest: Path) -> Path:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffar.operator.cli",
            "render",
            str(ROOT / "examples" / "ar-100m.yaml"),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=dest,
    ).stdout
    (config_map,) = [d for d in yaml.safe_load_all(out) if d["kind"] == "ConfigMap"]
    dest.chmod(0o755)
    (dest / "train.json").write_text(config_map["data"]["train.json"])
    (dest / "train.json").chmod(0o644)
    return dest / "train.json"


def dry_runs(stdout: str) -> list[dict]:
    """The JSON objects `train --dry-run --json` printed (one per process)."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while (i := stdout.find("{", i)) != -1:
        obj, end = decoder.raw_decode(stdout, i)
        out.append(obj)
        i = end
    return out


def test_trainer_entrypoint_torchrun_dry_run(containers, tmp_path):
    config = rendered_train_config(tmp_path)
    expected = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "diffar.operator.cli",
                "train",
                "--config",
                str(config),
                "--dry-run",
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        ).stdout
    )
    trainer = containers["trainer"]
    cmd = [
        *entrypoint("trainer"),
        "train",
        "--config",
        "/etc/diffar/train.json",
        "--dry-run",
        "--json",
    ]
    volumes = {str(tmp_path): "/etc/diffar:ro"}
    # Outside a PyTorchJob: one process.
    single = dry_runs(trainer.run(*cmd, volumes=volumes).stdout)
    assert single == [expected]
    # With the PyTorchJob's PET_* rendezvous: torchrun starts nproc-per-node workers.
    pet = {
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "2",
        "PET_NODE_RANK": "0",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(free_port()),
    }
    proc = trainer.run(*cmd, env=pet, volumes=volumes)
    assert dry_runs(proc.stdout) == [expected, expected], proc.stdout + proc.stderr
    # A half-set rendezvous is refused in one line.
    del pet["PET_NODE_RANK"]
    proc = trainer.run(*cmd, env=pet, volumes=volumes, check=False)
    assert proc.returncode == 2 and "PET_NODE_RANK" in proc.stderr


def test_trainer_has_the_flash_attn_wheel_of_its_own_stage(containers):
    code = "from importlib.metadata import version; print(version('flash-attn'))"
    assert containers["trainer"].run("python", "-c", code).stdout.strip() == "2.8.3"


# --- evaluator: a tiny exported model -------------------------------------------------------


def test_evaluator_scores_a_tiny_exported_model(containers, tmp_path):
    from evalhelpers import save_byte_model, write_byte_dataset

    work = tmp_path / "work"
    data = write_byte_dataset(work / "val")
    save_byte_model(work / "ckpt", "mdm", data)
    out = work / "out"
    out.mkdir()
    for path in [work, *work.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o644)
    proc = containers["evaluator"].run(
        *entrypoint("evaluator"),
        "eval",
        "--model",
        "/work/ckpt",
        "--data",
        "/work/val",
        "--tasks",
        "none",
        "--samples",
        "2",
        "--val-sequences",
        "4",
        "--device",
        "cpu",
        "--output",
        "/work/out/results.json",
        "--no-progress",
        volumes={str(work): "/work"},
        env={"DIFFAR_CACHE_DIR": "/tmp/cache"},
    )
    results = json.loads((out / "results.json").read_text())
    assert results["results_uri"] == "/work/out/results.json", proc.stdout
    assert "elbo" in results["validation"]
    # A random nano model over 257 byte values: about log(257) = 5.5 nats per token.
    assert 3.0 < results["loss"] < 10.0, results
