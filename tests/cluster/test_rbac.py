"""The operator runs with exactly the chart's RBAC (every other cluster test relies on it); here
one rule is taken away and the 403 must surface where a user looks, not vanish in retries."""

from __future__ import annotations

import json

import pytest
from testsupport import cluster

from .conftest import wait_for


@pytest.fixture()
def without_configmap_rule(control_plane):
    cp = control_plane
    role = json.loads(cp.kubectl("get", "clusterrole", "diffar", "-o", "json").stdout)
    original = json.loads(json.dumps(role))
    kept = [r for r in role["rules"] if "configmaps" not in r.get("resources", [])]
    assert len(kept) == len(role["rules"]) - 1
    role["rules"] = kept
    cp.kubectl("replace", "-f", "-", input=json.dumps(role))
    yield
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        original["metadata"].pop(key, None)
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
               input=json.dumps(original))  # fmt: skip


def test_the_operator_is_the_charts_service_account(control_plane):
    who = control_plane.kubectl(
        f"--kubeconfig={control_plane.operator_kubeconfig}", "auth", "whoami", "-o", "json"
    )
    user = json.loads(who.stdout)["status"]["userInfo"]["username"]
    assert user == f"system:serviceaccount:{cluster.RELEASE_NS}:{cluster.SERVICE_ACCOUNT}"
    can = control_plane.kubectl(
        f"--kubeconfig={control_plane.operator_kubeconfig}", "auth", "can-i", "get", "secrets",
        check=False,
    )  # fmt: skip
    assert can.stdout.strip() == "no"


def test_a_missing_rule_surfaces_as_a_403(
    control_plane, kube, ns, manifest, operator, without_configmap_rule
):
    name = manifest["metadata"]["name"]
    kube.create(manifest)
    needle = 'cannot create resource \\"configmaps\\"'

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
    assert needle.replace("\\", "") in operator.output() or needle in operator.output()
    assert kube.get("PyTorchJob", ns, f"{name}-train") is None
