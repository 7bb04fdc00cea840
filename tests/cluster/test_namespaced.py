"""`diffar operator --namespace` as the chart installs it with operator.watchNamespaces: a Role
and RoleBinding in the watched namespace and nothing cluster-scoped; liveness and Prometheus
metrics served; a run in another namespace left alone."""

from __future__ import annotations

import copy
import urllib.request

from testsupport import cluster
from testsupport.servers import free_port

from .conftest import Operator, http_get, wait_for


def test_namespaced_release_with_liveness_and_metrics(control_plane, kube, ns, manifest, tmp_path):
    cp = control_plane
    release = f"{ns}-diffar"  # contains "diffar": the release name is the full name
    cp.helm(
        "install", release, str(cluster.ROOT / "charts" / "diffar"), "-n", ns,
        "--set-json", f'operator.watchNamespaces=["{ns}"]',
        "--skip-crds",
    )  # fmt: skip
    rendered = cp.helm("get", "manifest", release, "-n", ns).stdout
    assert "kind: ClusterRole" not in rendered and "kind: Role" in rendered
    other = f"{ns}-other"
    cp.kubectl("create", "namespace", other)
    elsewhere = copy.deepcopy(manifest)
    elsewhere["metadata"].update(name="elsewhere", namespace=other)
    kube.create(elsewhere)
    kube.create(manifest)
    name = manifest["metadata"]["name"]

    live, prom = free_port(), free_port()
    op = Operator(cp, tmp_path / "operator.log")
    op.start(
        "--namespace", ns, "--liveness", f"http://127.0.0.1:{live}/healthz",
        "--metrics-port", str(prom), account=(ns, release),
    )  # fmt: skip
    try:
        wait_for("PyTorchJob", lambda: kube.get("PyTorchJob", ns, f"{name}-train"), log=op.output)
        with urllib.request.urlopen(f"http://127.0.0.1:{live}/healthz", timeout=5) as r:
            assert r.status == 200
        text = wait_for(
            "metrics",
            lambda: (
                (t := http_get(f"http://127.0.0.1:{prom}/metrics"))
                and 'phase="Pending"} 1.0' in t
                and t
            ),
        )
        assert 'diffar_operator_runs{objective="mdm",phase="Pending"} 1.0' in text
        assert 'diffar_operator_children_created_total{kind="PyTorchJob"} 1.0' in text
        # Namespaced: the run in the other namespace is not touched (nor could it be).
        assert "status" not in kube.get("DiffusionRun", other, "elsewhere")
        assert kube.get("PyTorchJob", other, "elsewhere-train") is None
        # A refusal reads "(403)" and "Forbidden"; a bare "403" also matches log timestamps' ms.
        assert "Forbidden" not in op.output() and "(403)" not in op.output()
    finally:
        op.stop()
        cp.kubectl("delete", "namespace", other, "--wait=false", check=False)
        cp.helm("uninstall", release, "-n", ns, check=False)
