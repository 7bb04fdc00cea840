"""The test-side API server (kmock 0.8 + `kube_emulator.Emulator`): each gap it fills, checked."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from diffar.operator.kube import ApiError

from .harness import NS


def http(cluster, method: str, path: str, body=None, content_type="application/json"):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(cluster.url + path, data=data, method=method)
    req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def configmap(name: str, labels: dict | None = None, owner_uid: str | None = None) -> dict:
    meta: dict = {"name": name, "namespace": NS, "labels": labels or {}}
    if owner_uid:
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": owner_uid}
        ]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


CM = f"/api/v1/namespaces/{NS}/configmaps"


def test_create_fills_metadata_and_answers_201(cluster):
    code, obj = http(cluster, "POST", CM, configmap("emu-meta"))
    assert code == 201
    meta = obj["metadata"]
    assert meta["uid"] and meta["resourceVersion"].isdigit() and meta["creationTimestamp"]
    assert meta["generation"] == 1
    code, _ = http(cluster, "POST", CM, configmap("emu-meta"))
    assert code == 409


def test_json_patch_test_failure_is_422_and_resource_version_moves(cluster):
    _, obj = http(cluster, "POST", CM, configmap("emu-patch"))
    rv = obj["metadata"]["resourceVersion"]
    stale = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
        {"op": "add", "path": "/data/x", "value": "1"},
    ]
    code, _ = http(cluster, "PATCH", f"{CM}/emu-patch", stale, "application/json-patch+json")
    assert code == 422
    fresh = [{**stale[0], "value": rv}, stale[1]]
    code, obj = http(cluster, "PATCH", f"{CM}/emu-patch", fresh, "application/json-patch+json")
    assert code == 200 and obj["data"]["x"] == "1"
    assert int(obj["metadata"]["resourceVersion"]) > int(rv)


def test_label_selectors(cluster, kube):
    kube.create(configmap("emu-a", {"app": "diffar", "tier": "x"}))
    kube.create(configmap("emu-b", {"app": "diffar"}))
    kube.create(configmap("emu-c", {"app": "other"}))

    def names(selector: str) -> set[str]:
        return {o["metadata"]["name"] for o in kube.list("ConfigMap", NS, selector)} & {
            "emu-a",
            "emu-b",
            "emu-c",
        }

    assert names("app=diffar") == {"emu-a", "emu-b"}
    assert names("app!=diffar") == {"emu-c"}
    assert names("app in (diffar,other),tier") == {"emu-a"}
    assert names("!tier,app notin (other)") == {"emu-b"}


def test_status_subresource(kube, manifest):
    m = dict(manifest, metadata={"name": "emu-status", "namespace": NS})
    m["status"] = {"phase": "Succeeded"}
    created, _ = kube.create(m)
    assert "status" not in created  # ignored on create
    kube.patch("DiffusionRun", NS, "emu-status", {"status": {"phase": "Pending"}}, sub="status")
    kube.patch("DiffusionRun", NS, "emu-status", {"status": {"phase": "Failed"}})  # ignored
    kube.patch("DiffusionRun", NS, "emu-status", {"spec": {"suspend": True}})
    obj = kube.get("DiffusionRun", NS, "emu-status")
    assert obj["status"] == {"phase": "Pending"}
    assert obj["spec"]["suspend"] is True and obj["metadata"]["generation"] == 2
    kube.patch("DiffusionRun", NS, "emu-status", {"status": {"phase": "Queued"}}, sub="status")
    assert kube.get("DiffusionRun", NS, "emu-status")["metadata"]["generation"] == 2
    kube.delete("DiffusionRun", NS, "emu-status")


def test_garbage_collection_and_finalizers(kube):
    owner, _ = kube.create(configmap("emu-owner"))
    kube.create(configmap("emu-dependent", owner_uid=owner["metadata"]["uid"]))
    held = configmap("emu-held", owner_uid=owner["metadata"]["uid"])
    held["metadata"]["finalizers"] = ["example.com/hold"]
    kube.create(held)
    kube.delete("ConfigMap", NS, "emu-owner")
    assert kube.get("ConfigMap", NS, "emu-dependent") is None
    blocked = kube.get("ConfigMap", NS, "emu-held")
    assert blocked["metadata"]["deletionTimestamp"]
    kube.patch("ConfigMap", NS, "emu-held", {"metadata": {"finalizers": None}})
    assert kube.get("ConfigMap", NS, "emu-held") is None


def test_watch_replays_from_a_resource_version(cluster, kube):
    first, _ = kube.create(configmap("emu-w1"))
    since = first["metadata"]["resourceVersion"]
    kube.create(configmap("emu-w2"))
    kube.patch("ConfigMap", NS, "emu-w1", {"data": {"k": "2"}})
    req = urllib.request.Request(
        f"{cluster.url}{CM}?watch=true&resourceVersion={since}&timeoutSeconds=1"
    )
    events = []
    with urllib.request.urlopen(req, timeout=10) as r:
        while len(events) < 2:
            line = r.readline()
            if line.strip():
                events.append(json.loads(line))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "emu-w2"),
        ("MODIFIED", "emu-w1"),
    ]


def test_admission_uses_the_crd(kube, manifest):
    bad = dict(manifest, metadata={"name": "emu-bad", "namespace": NS})
    bad["spec"] = dict(manifest["spec"], maxRestarts=-1)
    with pytest.raises(ApiError) as e:
        kube.create(bad)
    assert e.value.status == 422 and "maxRestarts" in e.value.body
