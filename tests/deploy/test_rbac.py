"""RBAC: the chart's ClusterRole (and namespaced Roles) grant exactly what the operator calls.

What the operator calls is recorded, not listed by hand:

1. diffar.operator's own client (kube.py): a recording stand-in for the kubernetes ApiClient
   serves an in-memory cluster, and `reconcile` drives an ARRun and a DiffusionRun through their
   whole life (create, train, suspend, resume, succeed, evaluate, results; a name conflict);
   every (method, path) is mapped to (API group, resource[/subresource], verb).
2. kopf, for the handlers diffar.operator.handlers registers (read from kopf's registry):
   list+watch of every resource with a handler; patch of the runs (finalizer, progress
   annotations) and of their status subresource (kopf's progress storage); create of Events
   (kopf posts handler errors); in cluster-wide mode list+watch of CRDs (kopf's resource
   observer).
3. ownerReferences with blockOwnerDeletion: true need update on the owner's finalizers
   subresource (the OwnerReferencesPermissionEnforcement admission plugin).
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import pytest
from kubernetes.client.exceptions import ApiException

from diffar.operator import reconcile as rec
from diffar.operator.api import GROUP, KINDS, VERSION
from diffar.operator.builders import render as render_children
from diffar.operator.kube import Kube
from diffar.operator.runs import Run, Settings

from .conftest import ALL_OPTIONS, ROOT, load_yaml

Triple = tuple[str, str, str]  # (apiGroup, resource, verb)


def group_of(prefix: str) -> str:
    return "" if prefix == "/api/v1" else prefix.split("/")[2]


class _Response:
    def __init__(self, data: bytes):
        self.data = data


def merge(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch."""
    out = copy.deepcopy(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class RecordingApi:
    """The part of kubernetes.client.ApiClient that diffar.operator.kube uses, in memory."""

    PATH = re.compile(
        r"^(?P<prefix>/api/v1|/apis/[^/]+/[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
        r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$"
    )

    def __init__(self):
        self.objects: dict[tuple[str, str, str], dict] = {}  # (plural, ns, name) -> object
        self.calls: list[tuple[str, str]] = []
        self.uid = 0

    def call_api(self, path, method, query_params=None, body=None, **_):
        self.calls.append((method, urlparse(path).path))
        m = self.PATH.match(path)
        assert m, path
        plural, ns, name, sub = m["plural"], m["ns"], m["name"], m["sub"]
        key = (plural, ns, name)
        if method == "GET" and name is None:
            selector = dict(query_params or []).get("labelSelector")
            items = [o for (p, n, _), o in self.objects.items() if p == plural and n == ns]
            if selector:
                k, v = selector.split("=")
                items = [o for o in items if (o["metadata"].get("labels") or {}).get(k) == v]
            return _Response(json.dumps({"items": items}).encode())
        if method == "GET":
            if key not in self.objects:
                raise ApiException(status=404, reason="Not Found")
            return _Response(json.dumps(self.objects[key]).encode())
        if method == "POST":
            key = (plural, ns, body["metadata"]["name"])
            if key in self.objects:
                raise ApiException(status=409, reason="Conflict")
            self.add(plural, body)
            return _Response(json.dumps(self.objects[key]).encode())
        if method == "PATCH":
            if key not in self.objects:
                raise ApiException(status=404, reason="Not Found")
            obj = self.objects[key]
            if sub == "status":
                obj["status"] = merge(obj.get("status") or {}, body.get("status") or {})
            else:
                self.objects[key] = merge(obj, body)
            return _Response(json.dumps(self.objects[key]).encode())
        if method == "DELETE":
            self.objects.pop(key, None)
            return _Response(b"{}")
        raise AssertionError(f"unexpected {method} {path}")

    def add(self, plural: str, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        self.uid += 1
        meta = obj["metadata"]
        meta.setdefault("uid", f"uid-{self.uid}")
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        self.objects[(plural, meta["namespace"], meta["name"])] = obj
        return obj

    def set(self, plural: str, ns: str, name: str, patch: dict) -> None:
        key = (plural, ns, name)
        self.objects[key] = merge(self.objects[key], patch)


def condition(type_: str) -> dict:
    return {"type": type_, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}


def drive_lifecycle(api: RecordingApi, manifest: dict) -> None:
    """One run from creation to results, with a suspension and a restart on the way."""
    kind = manifest["kind"]
    plural = KINDS[kind].plural
    ns = manifest["metadata"].setdefault("namespace", "research")
    name = manifest["metadata"]["name"]
    api.add(plural, manifest)
    kube = Kube(api)
    settings = Settings(metrics_url_template="http://127.0.0.1:9/{job}/metrics")
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def step(scrape: bool = False) -> None:
        nonlocal now
        now += timedelta(minutes=1)
        rec.reconcile(kube, kind, ns, name, settings, scrape=scrape, now=now)

    train, ev = f"{name}-train", f"{name}-eval"
    step()  # ConfigMap and PyTorchJob created
    assert ("pytorchjobs", ns, train) in api.objects
    api.set("pytorchjobs", ns, train, {"status": {"conditions": [condition("Running")]}})
    step(scrape=True)  # training; the progress read fails quietly (nothing on port 9)
    api.set(plural, ns, name, {"spec": {"suspend": True}})
    step()  # suspend: PyTorchJob patched
    api.set("pytorchjobs", ns, train, {"status": {"conditions": [condition("Suspended")]}})
    api.set(plural, ns, name, {"spec": {"suspend": False}})
    step()  # resume: PyTorchJob patched
    api.set("pytorchjobs", ns, train, {"status": {"conditions": [condition("Restarting")]}})
    step(scrape=True)
    # spec.evaluation edited while training: eval.json is patched before the evaluator starts.
    api.set(plural, ns, name, {"spec": {"evaluation": {"mcSamples": 7}}})
    api.set("pytorchjobs", ns, train, {"status": {"conditions": [condition("Succeeded")]}})
    step()  # eval.json patched, then the evaluator Job created
    calls = [c for c in api.calls if c[1].endswith((f"configmaps/{name}-config", "/jobs"))]
    assert [m for m, _ in calls if m in ("PATCH", "POST")][-2:] == ["PATCH", "POST"], calls
    assert ("jobs", ns, ev) in api.objects
    api.set(plural, ns, name, {"spec": {"suspend": True}})
    step()  # evaluator suspended
    api.set(plural, ns, name, {"spec": {"suspend": False}})
    step()
    api.set("jobs", ns, ev, {"status": {"conditions": [condition("Complete")]}})
    api.add(
        "pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{ev}-x", "namespace": ns, "labels": {"job-name": ev}},
            "status": {
                "containerStatuses": [
                    {
                        "name": "evaluator",
                        "state": {"terminated": {"message": json.dumps({"loss": 3.5})}},
                    }
                ]
            },
        },
    )
    step()
    run_obj = api.objects[(plural, ns, name)]
    assert run_obj["status"]["phase"] == "Succeeded", run_obj["status"]
    assert run_obj["status"]["results"]["valLoss"] == 3.5


def drive_conflict(api: RecordingApi, manifest: dict) -> None:
    """A child of the same name created in between: create answers 409 and the client reads it."""
    kind = manifest["kind"]
    manifest = copy.deepcopy(manifest)
    manifest["metadata"].setdefault("namespace", "research")
    manifest["metadata"]["name"] += "-c"
    api.add(KINDS[kind].plural, manifest)
    kube = Kube(api)
    run = Run.from_body(manifest)
    for obj in render_children(run, Settings()):
        kube.create(obj)
        _, created = kube.create(obj)
        assert not created


def drive_study(api: RecordingApi) -> None:
    """A ScalingStudy from creation to its fit: children created, finished, the fit Job."""
    from diffar.operator import study as study_mod
    from diffar.operator.study_reconcile import reconcile_study

    body = load_yaml(ROOT / "examples" / "study-paper-100m.yaml")
    body["metadata"]["namespace"] = "research"
    body["spec"]["maxConcurrent"] = 64
    body["spec"]["template"].pop("scheduling", None)
    api.add("scalingstudies", body)
    kube = Kube(api)
    ns, name = "research", body["metadata"]["name"]
    reconcile_study(kube, ns, name)  # children created
    study = study_mod.Study.from_body(api.objects[("scalingstudies", ns, name)])
    for i, c in enumerate(study_mod.plan(study)):
        plural = KINDS[c.kind].plural
        api.set(plural, ns, c.name, {"status": {"phase": "Succeeded",
                                                "results": {"valLoss": 3.0 + i / 100}}})  # fmt: skip
    decision = reconcile_study(kube, ns, name)  # the fit's ConfigMap and Job
    job = next(o for o in decision.create if o["kind"] == "Job")["metadata"]["name"]
    api.set("jobs", ns, job, {"status": {"conditions": [condition("Complete")]}})
    api.add("pods", {"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"{job}-x", "namespace": ns, "labels": {"job-name": job}},
                     "status": {"containerStatuses": [{"name": "fit", "state": {"terminated": {
                         "message": json.dumps({"ar": {"values": {"E": 1.0}}})}}}]}})  # fmt: skip
    reconcile_study(kube, ns, name)
    assert api.objects[("scalingstudies", ns, name)]["status"]["phase"] == "Succeeded"


def to_triple(method: str, path: str) -> Triple:
    m = RecordingApi.PATH.match(path)
    plural = m["plural"]
    group = group_of(m["prefix"])
    resource = f"{plural}/{m['sub']}" if m["sub"] else plural
    verb = {
        "GET": "get" if m["name"] else "list",
        "POST": "create",
        "PATCH": "patch",
        "PUT": "update",
        "DELETE": "delete",
    }[method]
    return group, resource, verb


@pytest.fixture(scope="module")
def client_calls() -> set[Triple]:
    api = RecordingApi()
    for example in ("ar-100m.yaml", "diffusion-100m.yaml"):
        manifest = load_yaml(ROOT / "examples" / example)
        manifest["spec"].pop("scheduling", None)  # Kueue admission is not part of this story
        drive_lifecycle(api, copy.deepcopy(manifest))
        drive_conflict(api, copy.deepcopy(manifest))
    drive_study(api)
    return {to_triple(m, p) for m, p in api.calls}


def kopf_calls(clusterwide: bool) -> set[Triple]:
    import kopf

    import diffar.operator.handlers  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    out: set[Triple] = set()
    changing = set()
    for sub in (registry._watching, registry._changing, registry._spawning):
        for h in sub.get_all_handlers():
            sel = h.selector
            plural = sel.plural or sel.any_name
            assert plural, vars(sel)
            out |= {(sel.group, plural, "list"), (sel.group, plural, "watch")}
            if sub is registry._changing:
                changing.add((sel.group, plural))
    for group, plural in changing:
        # finalizers and kopf's annotations on the object, its progress in status.kopf
        out |= {(group, plural, "patch"), (group, f"{plural}/status", "patch")}
    out.add(("", "events", "create"))
    if clusterwide:
        out |= {
            ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
            ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        }
    return out


def owner_calls() -> set[Triple]:
    out = set()
    for example in ("ar-100m.yaml", "diffusion-100m.yaml"):
        run = Run.from_body(load_yaml(ROOT / "examples" / example))
        for obj in render_children(run, Settings()):
            for ref in obj["metadata"].get("ownerReferences") or []:
                if ref.get("blockOwnerDeletion"):
                    assert ref["apiVersion"] == f"{GROUP}/{VERSION}"
                    out.add((GROUP, f"{KINDS[ref['kind']].plural}/finalizers", "update"))
    from diffar.operator.study import render_study

    for body in render_study(load_yaml(ROOT / "examples" / "study-paper-100m.yaml")):
        for ref in body["metadata"]["ownerReferences"]:
            if ref.get("blockOwnerDeletion"):
                out.add((GROUP, "scalingstudies/finalizers", "update"))
    return out


def granted(rules: list[dict]) -> set[Triple]:
    out = set()
    for rule in rules:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), rule
                    out.add((group, resource, verb))
    return out


def needed(client_calls: set[Triple], clusterwide: bool) -> set[Triple]:
    return client_calls | kopf_calls(clusterwide) | owner_calls()


def test_the_recording_saw_the_whole_story(client_calls):
    verbs = {(r, v) for _, r, v in client_calls}
    for expected in (
        ("configmaps", "create"),
        ("pytorchjobs", "patch"),
        ("jobs", "patch"),
        ("pods", "list"),
        ("events", "create"),
        ("diffusionruns/status", "patch"),
        ("arruns/status", "patch"),
        ("configmaps", "get"),
        ("configmaps", "patch"),
    ):
        assert expected in verbs, expected


def test_clusterrole_is_exactly_what_the_operator_calls(render, client_calls):
    objs = render()
    (role,) = [o for o in objs if o["kind"] == "ClusterRole"]
    have = granted(role["rules"])
    want = needed(client_calls, clusterwide=True)
    assert have - want == set(), "granted but never used"
    assert want - have == set(), "used but not granted"


def test_namespaced_roles_are_exactly_what_the_operator_calls(render, client_calls):
    roles = [o for o in render(ALL_OPTIONS) if o["kind"] == "Role"]
    assert len(roles) == 2
    want = needed(client_calls, clusterwide=False)
    for role in roles:
        assert granted(role["rules"]) == want


def test_no_secrets_and_no_cluster_wide_writes(render):
    (role,) = [o for o in render() if o["kind"] == "ClusterRole"]
    for _group, resource, _verb in granted(role["rules"]):
        assert resource != "secrets"
        assert not resource.startswith(("services", "nodes", "namespaces"))


def test_bindings_bind_the_operators_service_account(render):
    objs = render()
    (sa,) = [o for o in objs if o["kind"] == "ServiceAccount"]
    (binding,) = [o for o in objs if o["kind"] == "ClusterRoleBinding"]
    (role,) = [o for o in objs if o["kind"] == "ClusterRole"]
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": sa["metadata"]["name"],
            "namespace": sa["metadata"]["namespace"],
        }
    ]
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_rbac_can_be_left_out(render):
    kinds = {o["kind"] for o in render(None, "rbac.create=false")}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def test_no_evaluator_job_before_its_config_patch_succeeded(client_calls):
    """A refused ConfigMap patch (say, RBAC without it) stops the reconcile before the Job."""
    api = RecordingApi()
    manifest = load_yaml(ROOT / "examples" / "ar-100m.yaml")
    manifest["spec"].pop("scheduling", None)
    manifest["metadata"]["namespace"] = ns = "research"
    name = manifest["metadata"]["name"]
    plural = KINDS[manifest["kind"]].plural
    api.add(plural, manifest)
    kube = Kube(api)
    settings = Settings()
    rec.reconcile(kube, manifest["kind"], ns, name, settings)
    api.set(plural, ns, name, {"spec": {"evaluation": {"mcSamples": 7}}})
    api.set(
        "pytorchjobs", ns, f"{name}-train", {"status": {"conditions": [condition("Succeeded")]}}
    )
    real = api.call_api

    def forbid_configmap_patch(path, method, *args, **kw):
        if method == "PATCH" and "/configmaps/" in path:
            raise ApiException(status=403, reason="Forbidden")
        return real(path, method, *args, **kw)

    api.call_api = forbid_configmap_patch
    with pytest.raises(Exception, match="403"):
        rec.reconcile(kube, manifest["kind"], ns, name, settings)
    assert ("jobs", ns, f"{name}-eval") not in api.objects


def test_docs_list_exactly_the_chart_rbac(render):
    """docs/operator.md's RBAC table equals the ClusterRole's rules."""
    text = (ROOT / "docs" / "operator.md").read_text()
    table = text.split("<!-- rbac-table -->")[1].split("<!-- /rbac-table -->")[0]
    documented: set[Triple] = set()
    for line in table.strip().splitlines()[2:]:
        group, resources, verbs = (c.strip() for c in line.strip("|").split("|")[:3])
        group = "" if group == "core" else group.strip("`")
        for resource in resources.split(","):
            for verb in verbs.split(","):
                documented.add((group, resource.strip().strip("`"), verb.strip()))
    (role,) = [o for o in render() if o["kind"] == "ClusterRole"]
    assert documented == granted(role["rules"])
