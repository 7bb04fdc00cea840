"""The operator runs with exactly the chart's RBAC (every other cluster test relies on it); here
one rule is taken away and the 403 must surface where a user looks, not vanish in retries."""

from __future__ import annotations

import copy
import json

import pytest
from testsupport import cluster

from .conftest import wait_for


@pytest.fixture()
def without_configmap_rule(control_plane):
    """The chart's ClusterRole less its ConfigMap rule; the fixture's value puts it back."""
    cp = control_plane
    role = json.loads(cp.kubectl("get", "clusterrole", "diffar", "-o", "json").stdout)
    original = copy.deepcopy(role)
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        original["metadata"].pop(key, None)
    kept = [r for r in role["rules"] if "configmaps" not in r.get("resources", [])]
    assert len(kept) == len(role["rules"]) - 1
    role["rules"] = kept
    cp.kubectl("replace", "-f", "-", input=json.dumps(role))

    def restore():
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                   input=json.dumps(original))  # fmt: skip

    yield restore
    restore()


def test_the_operator_is_the_charts_service_account(control_plane, operator):
    def as_operator(*args: str):
        cmd = [cluster.tool("kubectl"), f"--kubeconfig={control_plane.operator_kubeconfig}"]
        return control_plane._run([*cmd, *args], False, None, 60)

    user = json.loads(as_operator("auth", "whoami", "-o", "json").stdout)
    username = user["status"]["userInfo"]["username"]
    assert username == f"system:serviceaccount:{cluster.RELEASE_NS}:{cluster.SERVICE_ACCOUNT}"
    assert as_operator("auth", "can-i", "get", "secrets", "-A").stdout.strip() == "no"
    assert (
        as_operator("auth", "can-i", "create", "pytorchjobs.kubeflow.org").stdout.strip() == "yes"
    )
    assert operator.alive()


def test_a_missing_rule_surfaces_as_a_403(
    control_plane, kube, ns, manifest, operator, without_configmap_rule
):
    name = manifest["metadata"]["name"]
    kube.create(manifest)

    def surfaced():
        st = kube.get("DiffusionRun", ns, name).get("status") or {}
        events = [
            e
            for e in kube.list("Event", ns)
            if e["involvedObject"]["name"] == name and e["type"] != "Normal"
        ]
        return st, events

    st, events = wait_for(
        "the 403 in the run's status and events",
        lambda: (got := surfaced()) and got[0].get("reason") == "Forbidden" and got[1] and got,
        log=operator.output,
    )
    assert "403" in st["message"] and "configmaps" in st["message"], st
    assert any("configmaps" in e["message"] for e in events), events
    assert "lacks a permission (HTTP 403): configmaps" in operator.output()
    assert 'User "system:serviceaccount:diffar-system:diffar" cannot' in st["message"]
    assert kube.get("PyTorchJob", ns, f"{name}-train") is None
    # One Warning per distinct message, not one per retry.
    forbidden = [e for e in events if e["reason"] == "Forbidden"]
    assert len({e["message"] for e in forbidden}) == len(forbidden)

    # Granting the rule again is enough: the retries pick the run up.
    without_configmap_rule()
    run = wait_for(
        "the run recovered",
        lambda: (r := kube.get("DiffusionRun", ns, name))["status"].get("phase") == "Pending" and r,
        log=operator.output,
    )
    assert run["status"]["reason"] in ("ChildrenCreated", "PodsPending")
    assert "Forbidden" not in json.dumps(run["status"]["conditions"])
    assert kube.get("PyTorchJob", ns, f"{name}-train") is not None
