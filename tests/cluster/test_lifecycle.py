"""A run's life against the real API server, with the operator under exactly the chart's RBAC:
children created and owned; the PyTorchJob's status driven Created -> Running -> Succeeded (and
Failed) as the Kubeflow controller writes it; progress from the trainer's metrics; suspend and
resume; a spec.evaluation edit reaching eval.json; the evaluator Job's pod (made by the real Job
controller) finishing with its summary; events; deletion cascading through the real garbage
collector; the run's Pushgateway group removed."""

from __future__ import annotations

import copy
import json
import urllib.request

from .conftest import GC_TIMEOUT, http_get, wait_for
from .kubeflow import pod_terminated, pytorchjob_status


def phase(kube, ns, kind, name, want):
    def check():
        run = kube.get(kind, ns, name)
        return run if (run.get("status") or {}).get("phase") == want else None

    return check


def owned_by(obj: dict, run: dict) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == [
        (run["kind"], run["metadata"]["name"], run["metadata"]["uid"], True)
    ]


def run_events(kube, ns, kind, name) -> list[dict]:
    return [
        e
        for e in kube.list("Event", ns)
        if e["involvedObject"]["name"] == name and e["involvedObject"]["kind"] == kind
    ]


def test_diffusion_run_lifecycle(
    control_plane, kube, ns, manifest, operator, trainer_metrics, pushgateway
):
    name = manifest["metadata"]["name"]
    log = operator.output
    kube.create(manifest)
    run = kube.get("DiffusionRun", ns, name)
    assert run["spec"]["training"]["lr"] == 2e-4  # the CRD's defaults, applied at admission

    # 1. Children: created, owned by the run, admitted by the real CRDs and built-in schemas.
    cm = wait_for("ConfigMap", lambda: kube.get("ConfigMap", ns, f"{name}-config"), log=log)
    pj = wait_for("PyTorchJob", lambda: kube.get("PyTorchJob", ns, f"{name}-train"), log=log)
    assert owned_by(cm, run) and owned_by(pj, run)
    assert json.loads(cm["data"]["train.json"])["objective"] == "mdm"
    assert "AWS_SECRET" not in json.dumps(cm)
    assert pj["spec"]["nprocPerNode"] == "4"
    run = wait_for("Pending", phase(kube, ns, "DiffusionRun", name, "Pending"), log=log)
    assert run["status"]["children"]["trainJob"] == f"{name}-train"
    assert run["metadata"]["finalizers"] == ["diffar.io/finalizer"]

    # 2. The training operator starts the job; progress comes from rank 0's metrics.
    pytorchjob_status(kube, ns, f"{name}-train", "Created")
    trainer_metrics.set_progress(ns, name, step=100, loss=7.25, tokens=409600, epoch=0.41)
    pytorchjob_status(kube, ns, f"{name}-train", "Running")
    run = wait_for(
        "progress",
        lambda: (
            (r := kube.get("DiffusionRun", ns, name))["status"]["progress"]["step"] == 100 and r
        ),
        log=log,
    )
    assert run["status"]["phase"] == "Training"
    assert run["status"]["progress"]["summary"] == "100/976 (10%)"
    conds = {c["type"]: c for c in run["status"]["conditions"]}
    assert conds["Training"]["status"] == "True"
    assert conds["Training"]["reason"] == "TrainingRunning"
    out = control_plane.kubectl("-n", ns, "get", "diffusionrun", name).stdout
    assert "Training" in out and "100/976 (10%)" in out

    # 3. Suspend and resume, through kubectl as a user would.
    control_plane.kubectl(
        "-n", ns, "patch", "diffusionrun", name, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    wait_for(
        "PyTorchJob suspended",
        lambda: kube.get("PyTorchJob", ns, f"{name}-train")["spec"]["runPolicy"]["suspend"],
        log=log,
    )
    pytorchjob_status(kube, ns, f"{name}-train", "Suspended")
    run = wait_for("Suspended", phase(kube, ns, "DiffusionRun", name, "Suspended"), log=log)
    assert run["status"]["observedGeneration"] == 2
    control_plane.kubectl(
        "-n", ns, "patch", "diffusionrun", name, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    wait_for(
        "PyTorchJob resumed",
        lambda: not kube.get("PyTorchJob", ns, f"{name}-train")["spec"]["runPolicy"]["suspend"],
        log=log,
    )
    pytorchjob_status(kube, ns, f"{name}-train", "Running")
    wait_for("Training again", phase(kube, ns, "DiffusionRun", name, "Training"), log=log)

    # 4. spec.evaluation is editable until the evaluator starts: the edit reaches eval.json.
    control_plane.kubectl(
        "-n", ns, "patch", "diffusionrun", name, "--type=merge",
        "-p", '{"spec":{"evaluation":{"mcSamples":8,"tasks":["piqa"]}}}',
    )  # fmt: skip

    # 5. Training succeeds: the evaluator Job, whose pod the real Job controller creates.
    pytorchjob_status(kube, ns, f"{name}-train", "Succeeded")
    run = wait_for("Evaluating", phase(kube, ns, "DiffusionRun", name, "Evaluating"), log=log)
    job = wait_for("eval Job", lambda: kube.get("Job", ns, f"{name}-eval"), log=log)
    assert owned_by(job, run)
    assert run["status"]["progress"]["summary"] == "976/976 (100%)"
    eval_json = json.loads(kube.get("ConfigMap", ns, f"{name}-config")["data"]["eval.json"])
    assert eval_json["samples"] == 8 and eval_json["tasks"] == ["piqa"]
    pod = wait_for(
        "evaluator pod from the Job controller",
        lambda: kube.list("Pod", ns, label_selector=f"job-name={name}-eval"),
    )[0]
    assert pod["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]

    # 6. The kubelet reports the evaluator done; the Job controller completes the Job.
    summary = {
        "loss": 3.55,
        "loss_estimator": "elbo",
        "tasks": {"piqa": {"acc": 0.6072}},
        "results_uri": "s3://runs/mdm-small/ckpt/results.json",
    }
    pod_terminated(kube, ns, pod, 0, json.dumps(summary))
    run = wait_for("Succeeded", phase(kube, ns, "DiffusionRun", name, "Succeeded"), log=log)
    results = run["status"]["results"]
    assert {k: v for k, v in results.items() if k != "validation"} == {
        "valLoss": 3.55,
        "lossEstimator": "elbo",
        "tasks": {"piqa": 0.6072},
        "resultsUri": "s3://runs/mdm-small/ckpt/results.json",
    }
    ready = {c["type"]: c for c in run["status"]["conditions"]}["Ready"]
    assert ready["status"] == "True" and ready["reason"] == "EvaluationSucceeded"
    reasons = {e["reason"] for e in run_events(kube, ns, "DiffusionRun", name)}
    assert {"ChildrenCreated", "TrainingRunning", "EvaluationSucceeded"} <= reasons

    # 7. Delete: the finalizer lets the operator clear the Pushgateway group; the garbage
    # collector removes the children (and the Job's pod).
    # The evaluator's group (diffar.evaluator.pushgateway's grouping key), pushed as it would.
    group = f"{pushgateway}/metrics/job/diffar-eval/namespace/{ns}/run/{name}"
    req = urllib.request.Request(group, data=b"diffar_eval_loss 3.55\n", method="PUT")
    urllib.request.urlopen(req, timeout=5).close()
    assert f'namespace="{ns}",run="{name}"' in http_get(pushgateway + "/metrics")
    control_plane.kubectl("-n", ns, "delete", "diffusionrun", name, "--timeout=60s")
    for kind, child in (("ConfigMap", "config"), ("PyTorchJob", "train"), ("Job", "eval")):
        wait_for(
            f"{kind} collected",
            lambda kind=kind, child=child: kube.get(kind, ns, f"{name}-{child}") is None,
            timeout=GC_TIMEOUT,
        )
    wait_for(
        "pods collected",
        lambda: kube.list("Pod", ns, label_selector=f"job-name={name}-eval") == [],
        timeout=GC_TIMEOUT,
    )
    assert f'namespace="{ns}",run="{name}"' not in http_get(pushgateway + "/metrics")


def test_training_failure_and_no_evaluation(control_plane, kube, ns, manifest, operator):
    ar = copy.deepcopy(manifest)
    ar["kind"] = "ARRun"
    ar["metadata"]["name"] = "ar-fails"
    del ar["spec"]["checkpoint"]
    ar["spec"]["evaluation"] = {"enabled": False}
    kube.create(ar)
    log = operator.output
    wait_for("PyTorchJob", lambda: kube.get("PyTorchJob", ns, "ar-fails-train"), log=log)
    pytorchjob_status(kube, ns, "ar-fails-train", "Running")
    wait_for("Training", phase(kube, ns, "ARRun", "ar-fails", "Training"), log=log)
    pytorchjob_status(kube, ns, "ar-fails-train", "Failed")
    run = wait_for("Failed", phase(kube, ns, "ARRun", "ar-fails", "Failed"), log=log)
    assert run["status"]["reason"] == "TrainingFailed"
    assert run["status"]["objective"] == "ar"
    assert "1 Master replica(s) failed" in run["status"]["message"]
    assert kube.get("Job", ns, "ar-fails-eval") is None
    warnings = [e for e in run_events(kube, ns, "ARRun", "ar-fails") if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["TrainingFailed"]
    out = control_plane.kubectl("-n", ns, "get", "arruns").stdout
    assert "ar-fails" in out and "Failed" in out


def test_evaluator_failure(control_plane, kube, ns, manifest, operator):
    name = manifest["metadata"]["name"]
    kube.create(manifest)
    log = operator.output
    wait_for("PyTorchJob", lambda: kube.get("PyTorchJob", ns, f"{name}-train"), log=log)
    pytorchjob_status(kube, ns, f"{name}-train", "Succeeded")
    wait_for("eval Job", lambda: kube.get("Job", ns, f"{name}-eval"), log=log)
    # backoffLimit pods fail one after another; the Job controller gives up and fails the Job.
    job = kube.get("Job", ns, f"{name}-eval")
    for _ in range((job["spec"].get("backoffLimit") or 0) + 1):
        pod = wait_for(
            "a running evaluator pod",
            lambda: [
                p
                for p in kube.list("Pod", ns, label_selector=f"job-name={name}-eval")
                if (p.get("status") or {}).get("phase") not in ("Failed", "Succeeded")
            ],
        )[0]
        pod_terminated(kube, ns, pod, 1, "CUDA out of memory in the evaluator")
        if kube.get("Job", ns, f"{name}-eval").get("status", {}).get("failed", 0) > (
            job["spec"].get("backoffLimit") or 0
        ):
            break
    run = wait_for("Failed", phase(kube, ns, "DiffusionRun", name, "Failed"), log=log)
    assert run["status"]["reason"] == "EvaluationFailed"
    assert "CUDA out of memory" in run["status"]["message"]


def test_kueue_admission_is_left_to_kueue(kube, ns, manifest, operator):
    m = copy.deepcopy(manifest)
    m["metadata"]["name"] = "queued-run"
    m["spec"]["scheduling"] = {"kueue": {"queueName": "gpu-queue"}}
    kube.create(m)
    log = operator.output
    run = wait_for("Queued", phase(kube, ns, "DiffusionRun", "queued-run", "Queued"), log=log)
    assert run["status"]["reason"] == "QueuedByKueue"
    pj = kube.get("PyTorchJob", ns, "queued-run-train")
    assert pj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert pj["spec"]["runPolicy"]["suspend"] is True
    pytorchjob_status(kube, ns, "queued-run-train", "Suspended")
    # Kueue admits: it unsuspends the job, and the training operator runs it.
    kube.patch("PyTorchJob", ns, "queued-run-train", {"spec": {"runPolicy": {"suspend": False}}})
    pytorchjob_status(kube, ns, "queued-run-train", "Running")
    wait_for("Training", phase(kube, ns, "DiffusionRun", "queued-run", "Training"), log=log)
    assert kube.get("PyTorchJob", ns, "queued-run-train")["spec"]["runPolicy"]["suspend"] is False
