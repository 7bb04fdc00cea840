"""The user's path with the real kubectl and helm: every cluster example applied and turned into
a PyTorchJob; `kubectl get` shows the printer columns; `kubectl explain` documents the fields;
`helm upgrade` and the documented uninstall order (docs/install.md) complete."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from testsupport import cluster
from testsupport.manifests import run_examples

from .conftest import GC_TIMEOUT, wait_for

EXAMPLES = run_examples(cluster.ROOT)


def test_there_are_cluster_examples():
    assert len(EXAMPLES) >= 8
    assert all(p.parent.name == "examples" for p in EXAMPLES)  # examples/local/ is not for us


def test_every_example_is_applied_and_gets_its_pytorchjob(control_plane, kube, ns, operator):
    names = []
    for path in EXAMPLES:
        doc = yaml.safe_load(path.read_text())
        out = control_plane.kubectl("-n", ns, "apply", "-f", str(path)).stdout
        assert "created" in out, out
        names.append((doc["kind"], doc["metadata"]["name"]))
    for kind, name in names:
        pj = wait_for(
            f"PyTorchJob of {name}",
            lambda name=name: kube.get("PyTorchJob", ns, f"{name}-train"),
            log=operator.output,
        )
        assert pj["metadata"]["labels"]["diffar.io/run"] == name
        # Pending, or Queued for the examples that name a Kueue queue.
        wait_for(
            f"{name} Pending or Queued",
            lambda kind=kind, name=name: (
                (kube.get(kind, ns, name).get("status") or {}).get("phase") in ("Pending", "Queued")
            ),
        )
    # Printer columns of both kinds, through kubectl.
    out = control_plane.kubectl("-n", ns, "get", "arruns,diffusionruns").stdout
    header = [line for line in out.splitlines() if line.startswith("NAME")]
    assert len(header) == 2, out
    crd = yaml.safe_load(
        (cluster.ROOT / "charts/diffar/crds/diffusionruns.diffar.io.yaml").read_text()
    )
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    shown = [c["name"].upper() for c in columns if not c.get("priority")]
    assert "PHASE" in shown and "PROGRESS" in shown
    if "AGE" not in shown:
        shown.append("AGE")
    for h in header:
        assert h.split() == ["NAME", *shown], h
    for _, name in names:
        assert name in out
    rows = [line for line in out.splitlines() if line and not line.startswith("NAME")]
    assert len(rows) == len(names) and all(r.split()[1] in ("Pending", "Queued") for r in rows)
    assert len(kube.list("PyTorchJob", ns)) == len(names)
    # Applying the same files again changes nothing.
    for path in EXAMPLES:
        out = control_plane.kubectl("-n", ns, "apply", "-f", str(path)).stdout
        assert "unchanged" in out, out


@pytest.mark.parametrize("kind", ["diffusionrun", "arrun"])
def test_kubectl_explain_documents_the_fields(control_plane, kind):
    out = control_plane.kubectl("explain", f"{kind}.spec.data").stdout
    for field in ("trainUri", "valUri", "uniqueTokens", "epochs"):
        assert field in out, out
    assert "DESCRIPTION" in out and "Unique tokens and epochs" in out, out
    assert "trainUri\t<string> -required-" in out, out


def test_helm_upgrade_then_the_documented_uninstall(control_plane, kube, ns, manifest, operator):
    cp = control_plane
    chart = str(cluster.ROOT / "charts" / "diffar")
    # Upgrade in place: a changed value, the same objects, revision 2 (or later).
    cp.helm("upgrade", cluster.RELEASE, chart, "-n", cluster.RELEASE_NS,
            "--set", "operator.progressInterval=7")  # fmt: skip
    history = cp.helm("history", cluster.RELEASE, "-n", cluster.RELEASE_NS, "-o", "yaml").stdout
    assert yaml.safe_load(history)[-1]["status"] == "deployed"
    deploy = cp.kubectl("-n", cluster.RELEASE_NS, "get", "deploy", "diffar", "-o", "yaml").stdout
    assert 'value: "7"' in deploy

    kube.create(manifest)
    name = manifest["metadata"]["name"]
    wait_for("PyTorchJob", lambda: kube.get("PyTorchJob", ns, f"{name}-train"), log=operator.output)

    # docs/install.md's order: runs first, while the operator still runs to release its
    # finalizer; then the release; then the CRDs. Each step must finish, none may hang.
    cp.kubectl("delete", "diffusionruns,arruns", "--all", "--all-namespaces", "--timeout=60s")
    wait_for(
        "children collected",
        lambda: kube.get("PyTorchJob", ns, f"{name}-train") is None,
        timeout=GC_TIMEOUT,
    )
    cp.helm("uninstall", cluster.RELEASE, "-n", cluster.RELEASE_NS, "--wait", "--timeout=60s")
    cp.kubectl("delete", "crd", "diffusionruns.diffar.io", "arruns.diffar.io", "--timeout=60s")
    assert cp.kubectl("get", "crd", "diffusionruns.diffar.io", check=False).returncode != 0
    # What the uninstall removed: the operator's identity and permissions.
    sa = cp.kubectl("-n", cluster.RELEASE_NS, "get", "sa", cluster.SERVICE_ACCOUNT, check=False)
    assert sa.returncode != 0
    assert cp.kubectl("get", "clusterrole", "diffar", check=False).returncode != 0

    # Reinstall for the tests that follow: the CRDs come back with the chart.
    operator.stop()
    cp.install_chart()
    cp.wait_established("diffusionruns.diffar.io", "arruns.diffar.io")


def test_make_cluster_cli_is_idempotent_and_leaves_nothing(tmp_path: Path):
    """`python -m testsupport.cluster up` twice (the second finds it running), then `down`: no
    process left. This is what `make cluster` / `make cluster-down` run."""
    import subprocess
    import sys

    env_cmd = [sys.executable, "-m", "testsupport.cluster"]
    cwd = cluster.ROOT / "tests"
    root = tmp_path / "c"
    up = subprocess.run([*env_cmd, "up", "--dir", str(root), "--no-operator"],
                        capture_output=True, text=True, cwd=cwd, timeout=180)  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == f"export KUBECONFIG={root / 'kubeconfig'}"
    state = cluster._load(root)
    pids = dict(state.state.pids)
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
    again = subprocess.run([*env_cmd, "up", "--dir", str(root), "--no-operator"],
                           capture_output=True, text=True, cwd=cwd, timeout=60)  # fmt: skip
    assert again.returncode == 0 and "already running" in again.stderr, again.stderr
    assert cluster._load(root).state.pids == pids
    down = subprocess.run([*env_cmd, "down", "--dir", str(root)],
                          capture_output=True, text=True, cwd=cwd, timeout=60)  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert [p for p in pids.values() if cluster._alive(p)] == []
