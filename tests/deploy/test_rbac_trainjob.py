"""RBAC with `backend: trainjob`: the chart grants exactly what the operator then calls, and no
PyTorchJob permission at all (and the default backend none on TrainJobs).

The calls are recorded as in test_rbac.py: diffar's client drives runs through their whole life
against the recording API, with TrainJobs reporting as Trainer v2.3 does; kopf's watches are
read from its registry in a fresh interpreter with DIFFAR_BACKEND=trainjob, because the handlers
module registers its child watch when it is imported.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from diffar.operator import reconcile as rec
from diffar.operator.api import KINDS
from diffar.operator.kube import Kube
from diffar.operator.runs import Settings

from .conftest import ROOT, load_yaml
from .test_rbac import (
    RecordingApi,
    condition,
    drive_study,
    granted,
    owner_calls,
    to_triple,
)

SETTINGS = Settings(backend="trainjob", metrics_url_template="http://127.0.0.1:9/{job}/metrics")
TRAINJOBS = ("trainer.kubeflow.org", "trainjobs")
PYTORCHJOBS = ("kubeflow.org", "pytorchjobs")


def drive_lifecycle(api: RecordingApi, manifest: dict) -> None:
    kind = manifest["kind"]
    plural = KINDS[kind].plural
    ns = manifest["metadata"].setdefault("namespace", "research")
    name = manifest["metadata"]["name"]
    api.add(plural, manifest)
    kube = Kube(api)
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def step(scrape: bool = False) -> None:
        nonlocal now
        now += timedelta(minutes=1)
        rec.reconcile(kube, kind, ns, name, SETTINGS, scrape=scrape, now=now)

    train, ev = f"{name}-train", f"{name}-eval"
    step()  # ConfigMap and TrainJob created
    assert ("trainjobs", ns, train) in api.objects
    ready = {"jobsStatus": [{"name": "node", "active": 1, "ready": 1}]}
    api.set("trainjobs", ns, train, {"status": ready})
    step(scrape=True)  # training; the progress read fails quietly (nothing on port 9)
    api.set(plural, ns, name, {"spec": {"suspend": True}})
    step()  # suspend: TrainJob patched
    assert api.objects[("trainjobs", ns, train)]["spec"]["suspend"] is True
    api.set("trainjobs", ns, train, {"status": {"conditions": [condition("Suspended")]}})
    api.set(plural, ns, name, {"spec": {"suspend": False}})
    step()  # resume: TrainJob patched
    api.set(plural, ns, name, {"spec": {"evaluation": {"limit": 100}}})
    step()  # spec.evaluation is mutable until the evaluator starts
    api.set("trainjobs", ns, train, {"status": {"conditions": [condition("Complete")]}})
    step()  # eval.json patched in the ConfigMap, evaluator Job created
    assert ("jobs", ns, ev) in api.objects
    api.set(plural, ns, name, {"spec": {"suspend": True}})
    step()  # evaluator suspended
    api.set(plural, ns, name, {"spec": {"suspend": False}})
    step()
    api.set("jobs", ns, ev, {"status": {"conditions": [condition("Complete")]}})
    step()
    run_obj = api.objects[(plural, ns, name)]
    assert run_obj["status"]["phase"] == "Succeeded", run_obj["status"]


@pytest.fixture(scope="module")
def client_calls() -> set[tuple[str, str, str]]:
    api = RecordingApi()
    for example in ("ar-100m.yaml", "diffusion-100m.yaml"):
        manifest = load_yaml(ROOT / "examples" / example)
        manifest["spec"].pop("scheduling", None)
        drive_lifecycle(api, copy.deepcopy(manifest))
    drive_study(api)  # a ScalingStudy's calls do not depend on the backend
    return {to_triple(m, p) for m, p in api.calls}


KOPF_CALLS = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.deploy.test_rbac import kopf_calls
print(json.dumps(sorted(kopf_calls(sys.argv[2] == "cluster"))))
"""


def kopf_calls(clusterwide: bool) -> set[tuple[str, str, str]]:
    import os

    env = {**os.environ, "DIFFAR_BACKEND": "trainjob"}
    proc = subprocess.run(
        [sys.executable, "-c", KOPF_CALLS, str(ROOT), "cluster" if clusterwide else "ns"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return {tuple(t) for t in json.loads(proc.stdout)}


def test_the_recording_saw_trainjobs_only(client_calls):
    resources = {(g, r) for g, r, _ in client_calls}
    assert TRAINJOBS in resources and PYTORCHJOBS not in resources
    assert {v for g, r, v in client_calls if (g, r) == TRAINJOBS} == {"get", "create", "patch"}


@pytest.mark.parametrize("clusterwide", [True, False], ids=["cluster", "namespaced"])
def test_roles_are_exactly_what_the_trainjob_operator_calls(render, client_calls, clusterwide):
    sets = ["backend=trainjob"] + ([] if clusterwide else ["operator.watchNamespaces={a,b}"])
    kind = "ClusterRole" if clusterwide else "Role"
    roles = [o for o in render(None, *sets) if o["kind"] == kind]
    assert roles
    calls = kopf_calls(clusterwide)
    assert (*TRAINJOBS, "watch") in calls and (*PYTORCHJOBS, "watch") not in calls
    want = client_calls | calls | owner_calls()
    for role in roles:
        have = granted(role["rules"])
        assert have - want == set(), "granted but never used"
        assert want - have == set(), "used but not granted"


def test_default_backend_grants_nothing_on_trainjobs(render):
    (role,) = [o for o in render() if o["kind"] == "ClusterRole"]
    resources = {(g, r) for g, r, _ in granted(role["rules"])}
    assert PYTORCHJOBS in resources and TRAINJOBS not in resources
