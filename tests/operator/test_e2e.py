"""End to end: the real operator (kopf.testing.KopfRunner) against KMock's Kubernetes emulator.

The scenario of issue 5: apply a DiffusionRun -> the ConfigMap and PyTorchJob exist, owned and
valid; the PyTorchJob reports Running (progress read from a stand-in trainer /metrics) then
Succeeded -> the run follows and the evaluator Job appears; the Job completes -> results in
status; suspend/resume; the operator restarts mid-way -> no duplicate children; delete -> the
children are garbage-collected and the Pushgateway group is removed. Plus: schema/CEL rejection
at admission, operator-side validation failures, training failure.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable

import kmock  # noqa: F401  (a missing component fails the run)
import kubernetes_validate
import pytest
from kopf.testing import KopfRunner

from diffar.operator import schemacheck
from diffar.operator.kube import ApiError, Kube

from .harness import NS

K8S_VERSION = "1.33"


ARGS = ["run", "--standalone", "--verbose", "--all-namespaces", "-m", "diffar.operator.handlers"]


def operator() -> KopfRunner:
    return KopfRunner(ARGS, timeout=60)


def wait_for(what: str, check: Callable[[], object], timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (ApiError, KeyError, TypeError, IndexError) as e:
            last = e
            if isinstance(e, ApiError) and e.status >= 500:
                raise
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def phase_is(kube: Kube, kind: str, name: str, phase: str) -> Callable[[], dict | None]:
    def check():
        run = kube.get(kind, NS, name)
        return run if (run.get("status") or {}).get("phase") == phase else None

    return check


def set_conditions(kube: Kube, kind: str, name: str, *types: str) -> None:
    conds = [
        {
            "type": t,
            "status": "True",
            "reason": f"Job{t}",
            "message": f"{kind} {name} is {t.lower()}.",
            "lastTransitionTime": f"2026-01-01T00:00:0{i}Z",
        }
        for i, t in enumerate(types)
    ]
    kube.patch(kind, NS, name, {"status": {"conditions": conds}}, sub="status")


def owned_by(obj: dict, run: dict) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == [
        (run["kind"], run["metadata"]["name"], run["metadata"]["uid"], True)
    ]


def test_diffusion_run_end_to_end(
    operator_env, kube, cluster, services, manifest, pytorchjob_crd, run_crds
):
    emu = cluster.emulator
    name = manifest["metadata"]["name"]
    kube.create(manifest)
    run = kube.get("DiffusionRun", NS, name)
    assert run["spec"]["training"]["lr"] == 2e-4  # the CRD's defaults were applied at admission

    with operator() as runner:
        # 1. Children exist, owned by the run, and valid.
        cm = wait_for("ConfigMap", lambda: kube.get("ConfigMap", NS, f"{name}-config"))
        pj = wait_for("PyTorchJob", lambda: kube.get("PyTorchJob", NS, f"{name}-train"))
        assert owned_by(cm, run) and owned_by(pj, run)
        schema = schemacheck.crd_schema(pytorchjob_crd, "v1")
        clean = {k: v for k, v in pj.items() if k != "status"}
        assert schemacheck.structural_errors(schema, clean) == []
        kubernetes_validate.validate(
            {k: v for k, v in cm.items() if k != "metadata"} | {"metadata": {"name": "x"}},
            K8S_VERSION,
            strict=True,
        )
        assert json.loads(cm["data"]["train.json"])["objective"] == "mdm"
        assert "AWS_SECRET" not in json.dumps(cm)  # credentials only by secretKeyRef
        assert pj["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
        assert pj["spec"]["nprocPerNode"] == "4"
        run = wait_for("Pending", phase_is(kube, "DiffusionRun", name, "Pending"))
        assert run["status"]["children"]["trainJob"] == f"{name}-train"
        assert run["status"]["observedGeneration"] == 1

        # 2. Running: phase Training; progress from the trainer's metrics endpoint.
        services.set_progress(name, step=100, loss=7.25, tokens=409600, epoch=0.41)
        set_conditions(kube, "PyTorchJob", f"{name}-train", "Created", "Running")
        run = wait_for("Training", phase_is(kube, "DiffusionRun", name, "Training"))
        run = wait_for(
            "progress",
            lambda: (
                (r := kube.get("DiffusionRun", NS, name))["status"]["progress"]["step"] == 100 and r
            ),
        )
        progress = run["status"]["progress"]
        assert progress["loss"] == 7.25 and progress["tokensSeen"] == 409600
        assert progress["totalSteps"] == 976 and progress["summary"] == "100/976 (10%)"
        conds = {c["type"]: c for c in run["status"]["conditions"]}
        assert conds["Training"]["status"] == "True"
        assert conds["Training"]["reason"] == "TrainingRunning"
    assert runner.exception is None, runner.stdout

    # 3. The operator restarts mid-training: nothing is duplicated, the run carries on.
    with operator() as runner:
        services.set_progress(name, step=200, loss=6.5, tokens=819200, epoch=0.82)
        wait_for(
            "progress after restart",
            lambda: kube.get("DiffusionRun", NS, name)["status"]["progress"]["step"] == 200,
        )
        assert emu.created["pytorchjobs"] == 1 and emu.created["configmaps"] == 1

        # 4. Suspend and resume.
        kube.patch("DiffusionRun", NS, name, {"spec": {"suspend": True}})
        wait_for(
            "PyTorchJob suspended",
            lambda: kube.get("PyTorchJob", NS, f"{name}-train")["spec"]["runPolicy"]["suspend"],
        )
        set_conditions(kube, "PyTorchJob", f"{name}-train", "Created", "Suspended")
        run = wait_for("Suspended", phase_is(kube, "DiffusionRun", name, "Suspended"))
        assert run["status"]["observedGeneration"] == 2
        kube.patch("DiffusionRun", NS, name, {"spec": {"suspend": False}})
        wait_for(
            "PyTorchJob resumed",
            lambda: not kube.get("PyTorchJob", NS, f"{name}-train")["spec"]["runPolicy"]["suspend"],
        )
        set_conditions(kube, "PyTorchJob", f"{name}-train", "Created", "Running")
        wait_for("Training again", phase_is(kube, "DiffusionRun", name, "Training"))

        # 5. Training succeeds: the evaluator Job appears, owned and valid.
        set_conditions(kube, "PyTorchJob", f"{name}-train", "Created", "Succeeded")
        run = wait_for("Evaluating", phase_is(kube, "DiffusionRun", name, "Evaluating"))
        job = wait_for("eval Job", lambda: kube.get("Job", NS, f"{name}-eval"))
        assert owned_by(job, run)
        kubernetes_validate.validate(
            {k: v for k, v in job.items() if k not in ("status", "metadata")}
            | {"metadata": {"name": job["metadata"]["name"]}},
            K8S_VERSION,
            strict=True,
        )
        assert run["status"]["progress"]["summary"] == "976/976 (100%)"

        # 6. The evaluator finishes: its termination message becomes status.results.
        kube.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-eval-x7k2p",
                    "namespace": NS,
                    "labels": {"job-name": f"{name}-eval"},
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": f"{name}-eval",
                            "uid": job["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": {"containers": [{"name": "evaluator", "image": "x"}]},
            }
        )
        summary = {
            "loss": 3.55,
            "loss_estimator": "elbo",
            "tasks": {"arc_easy": {"acc": 0.3784}, "sciq": {"acc": 0.6867}},
            "results_uri": "s3://runs/mdm-small/ckpt/results.json",
        }
        kube.patch(
            "Pod",
            NS,
            f"{name}-eval-x7k2p",
            {
                "status": {
                    "containerStatuses": [
                        {
                            "name": "evaluator",
                            "state": {
                                "terminated": {"exitCode": 0, "message": json.dumps(summary)}
                            },
                        }
                    ]
                }
            },
            sub="status",
        )
        set_conditions(kube, "Job", f"{name}-eval", "Complete")
        run = wait_for("Succeeded", phase_is(kube, "DiffusionRun", name, "Succeeded"))
        assert run["status"]["results"] == {
            "valLoss": 3.55,
            "lossEstimator": "elbo",
            "tasks": {"arc_easy": 0.3784, "sciq": 0.6867},
            "resultsUri": "s3://runs/mdm-small/ckpt/results.json",
        }
        ready = {c["type"]: c for c in run["status"]["conditions"]}["Ready"]
        assert ready["status"] == "True" and ready["reason"] == "EvaluationSucceeded"

        # Events were posted for the run's transitions.
        events = [
            e
            for e in kube.list("Event", NS)
            if e["involvedObject"]["name"] == name and e["involvedObject"]["kind"] == "DiffusionRun"
        ]
        reasons = {e["reason"] for e in events}
        assert {"ChildrenCreated", "TrainingRunning", "EvaluationSucceeded"} <= reasons
        mine = next(e for e in events if e["reason"] == "EvaluationSucceeded")
        assert mine["involvedObject"]["uid"] == run["metadata"]["uid"]
        sent = {k: v for k, v in mine.items() if k != "metadata"}
        sent["metadata"] = {"name": mine["metadata"]["name"], "namespace": NS}
        kubernetes_validate.validate(sent, K8S_VERSION, strict=True)

        # 7. Delete: the run goes, its children are collected, its Pushgateway group removed.
        kube.delete("DiffusionRun", NS, name)
        wait_for("run gone", lambda: kube.get("DiffusionRun", NS, name) is None)
        for kind, child in (
            ("ConfigMap", "config"),
            ("PyTorchJob", "train"),
            ("Job", "eval"),
            ("Pod", "eval-x7k2p"),
        ):
            assert kube.get(kind, NS, f"{name}-{child}") is None, kind
        assert f"/metrics/job/diffar-eval/namespace/{NS}/run/{name}" in services.deleted
    assert runner.exception is None, runner.stdout
    assert emu.created["pytorchjobs"] == 1 and emu.created["jobs"] == 1
    assert emu.created["configmaps"] == 1


def test_admission_rejects_what_the_schema_and_cel_forbid(kube, manifest):
    bad = copy.deepcopy(manifest)
    bad["metadata"]["name"] = "Bad_Name"
    with pytest.raises(ApiError) as e:
        kube.create(bad)
    assert e.value.status == 422 and "DNS-1035" in e.value.body
    bad = copy.deepcopy(manifest)
    bad["spec"]["training"]["minLr"] = 1.0
    with pytest.raises(ApiError) as e:
        kube.create(bad)
    assert e.value.status == 422 and "minLr" in e.value.body
    # Immutability after creation (CEL transition rules).
    ok = copy.deepcopy(manifest)
    ok["metadata"]["name"] = "immutable-check"
    ok["spec"]["suspend"] = True
    kube.create(ok)
    with pytest.raises(ApiError) as e:
        kube.patch("DiffusionRun", NS, "immutable-check", {"spec": {"data": {"epochs": 8}}})
    assert e.value.status == 422 and "data is immutable" in e.value.body
    kube.patch("DiffusionRun", NS, "immutable-check", {"spec": {"resources": {"cpu": 4}}})
    kube.delete("DiffusionRun", NS, "immutable-check")


def test_operator_validation_failures_and_training_failure(operator_env, kube, cluster, manifest):
    emu = cluster.emulator
    before = emu.created["pytorchjobs"]
    unknown = copy.deepcopy(manifest)
    unknown["metadata"]["name"] = "unknown-preset"
    unknown["spec"]["model"]["preset"] = "7B"
    indivisible = copy.deepcopy(manifest)
    indivisible["metadata"]["name"] = "indivisible"
    indivisible["spec"]["resources"]["gpusPerNode"] = 3
    ar = copy.deepcopy(manifest)
    ar["kind"] = "ARRun"
    ar["metadata"]["name"] = "ar-fails"
    del ar["spec"]["checkpoint"]
    ar["spec"]["evaluation"] = {"enabled": False}
    for obj in (unknown, indivisible, ar):
        kube.create(obj)
    with operator() as runner:
        run = wait_for("InvalidSpec", phase_is(kube, "DiffusionRun", "unknown-preset", "Failed"))
        assert run["status"]["reason"] == "InvalidSpec"
        assert "'7B' is unknown" in run["status"]["message"]
        run = wait_for("InvalidSpec", phase_is(kube, "DiffusionRun", "indivisible", "Failed"))
        assert "not divisible by world size 6" in run["status"]["message"]
        warnings = [
            e
            for e in kube.list("Event", NS)
            if e["involvedObject"]["name"] == "indivisible" and e["type"] == "Warning"
        ]
        assert warnings and warnings[0]["reason"] == "InvalidSpec"
        assert kube.get("PyTorchJob", NS, "unknown-preset-train") is None
        assert kube.get("PyTorchJob", NS, "indivisible-train") is None

        wait_for("ARRun job", lambda: kube.get("PyTorchJob", NS, "ar-fails-train"))
        set_conditions(kube, "PyTorchJob", "ar-fails-train", "Created", "Running", "Failed")
        run = wait_for("Failed", phase_is(kube, "ARRun", "ar-fails", "Failed"))
        assert run["status"]["reason"] == "TrainingFailed"
        assert run["status"]["objective"] == "ar"
        assert "ar-fails-train is failed" in run["status"]["message"]
        assert kube.get("Job", NS, "ar-fails-eval") is None

        from diffar.operator import metrics

        counts = metrics.get().runs.counts()
        assert counts[("Failed", "mdm")] >= 2 and counts[("Failed", "ar")] >= 1
        doomed = (
            ("DiffusionRun", "unknown-preset"),
            ("DiffusionRun", "indivisible"),
            ("ARRun", "ar-fails"),
        )
        for kind, name in doomed:
            kube.delete(kind, NS, name)
        wait_for("deleted", lambda: all(kube.get(k, NS, n) is None for k, n in doomed))
        assert kube.get("PyTorchJob", NS, "ar-fails-train") is None  # garbage-collected
    assert runner.exception is None, runner.stdout
    assert emu.created["pytorchjobs"] == before + 1


def test_kueue_admission_is_left_to_kueue(operator_env, kube, manifest):
    """A Kueue run starts Queued with its PyTorchJob suspended; the operator never unsuspends
    it itself; Kueue's admission (unsuspend) leads to Training."""
    m = copy.deepcopy(manifest)
    m["metadata"]["name"] = "queued-run"
    m["spec"]["scheduling"] = {"kueue": {"queueName": "gpu-queue"}}
    kube.create(m)
    with operator() as runner:
        run = wait_for("Queued", phase_is(kube, "DiffusionRun", "queued-run", "Queued"))
        assert run["status"]["reason"] == "QueuedByKueue"
        pj = kube.get("PyTorchJob", NS, "queued-run-train")
        assert pj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        assert pj["spec"]["runPolicy"]["suspend"] is True
        set_conditions(kube, "PyTorchJob", "queued-run-train", "Created", "Suspended")
        time.sleep(1.0)  # a few timer ticks: the operator must leave the suspension alone
        assert kube.get("PyTorchJob", NS, "queued-run-train")["spec"]["runPolicy"]["suspend"]
        assert kube.get("DiffusionRun", NS, "queued-run")["status"]["phase"] == "Queued"
        # Kueue admits: unsuspends the job; the training operator runs it.
        kube.patch(
            "PyTorchJob", NS, "queued-run-train", {"spec": {"runPolicy": {"suspend": False}}}
        )
        set_conditions(kube, "PyTorchJob", "queued-run-train", "Created", "Running")
        wait_for("Training", phase_is(kube, "DiffusionRun", "queued-run", "Training"))
        kube.delete("DiffusionRun", NS, "queued-run")
        wait_for("deleted", lambda: kube.get("DiffusionRun", NS, "queued-run") is None)
    assert runner.exception is None, runner.stdout
