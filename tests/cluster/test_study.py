"""A ScalingStudy against the real API server, with the operator under exactly the chart's RBAC.

Applied with kubectl; its children appear owned by it, never more than maxConcurrent unfinished;
each child is driven as the training operator and the kubelet would (PyTorchJob Succeeded, the
evaluator pod the real Job controller made terminated with its summary), one child fails and is
reported, not retried; the operator is restarted mid-way and creates nothing twice; when every
child is done the fit's Job appears, its own command (`diffar study-fit`) runs here on its
ConfigMap, its pod terminates with the result, and the study's status holds the fitted law and
each child's best loss; deleting the study deletes its children (the real garbage collector).
"""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from diffar.operator.study import LABEL_STUDY

from .conftest import GC_TIMEOUT, wait_for
from .kubeflow import pod_terminated, pytorchjob_status

NAME = "sweep"
MAX_CONCURRENT = 3


def study_manifest(ns: str) -> dict:
    return {
        "apiVersion": "diffar.io/v1alpha1",
        "kind": "ScalingStudy",
        "metadata": {"name": NAME, "namespace": ns},
        "spec": {
            "maxConcurrent": MAX_CONCURRENT,
            "grid": {
                "objectives": ["ar", "mdm"],
                "models": [{"preset": "tiny"}],
                "uniqueTokens": [1_000_000],
                "epochs": [1, 2, 4, 8],
            },
            "template": {
                "model": {"seqLen": 128},
                "data": {"trainUri": "s3://data/train", "valUri": "s3://data/val"},
                "training": {"globalBatch": 32, "microBatch": 4},
                "resources": {"nodes": 1, "gpusPerNode": 4},
                "checkpoint": {"uri": "s3://runs/sweep"},
                "evaluation": {"tasks": []},
            },
            # Eight children cannot fit seven constants per objective: hold five.
            "fit": {
                "bootstrap": 0,
                "fixed": {
                    o: {"E": 1.9, "A": 520.0, "B": 1480.0, "alpha": 0.35, "beta": 0.35}
                    for o in ("ar", "mdm")
                },
            },
        },
    }


def children(kube, ns) -> dict[str, dict]:
    out = {}
    for kind in ("ARRun", "DiffusionRun"):
        for item in kube.list(kind, ns, label_selector=f"{LABEL_STUDY}={NAME}"):
            out[item["metadata"]["name"]] = item
    return out


def unfinished(kube, ns) -> list[str]:
    return sorted(
        n
        for n, c in children(kube, ns).items()
        if (c.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    )


def job_pod(kube, ns, job: str, log) -> dict:
    return wait_for(
        f"{job}'s pod from the Job controller",
        lambda: [
            p
            for p in kube.list("Pod", ns, label_selector=f"job-name={job}")
            if (p.get("status") or {}).get("phase") not in ("Failed", "Succeeded")
        ],
        log=log,
    )[0]


def study_status(kube, ns) -> dict:
    return kube.get("ScalingStudy", ns, NAME).get("status") or {}


def test_study_on_the_real_api_server(control_plane, kube, ns, operator, tmp_path):
    log = operator.output
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_manifest(ns)))
    control_plane.kubectl("apply", "-f", str(path))
    study = kube.get("ScalingStudy", ns, NAME)
    assert study["spec"]["fit"]["enabled"] is True  # the CRD's defaults, applied at admission

    wait_for("the first children", lambda: len(children(kube, ns)) == MAX_CONCURRENT, log=log)
    for c in children(kube, ns).values():
        (ref,) = c["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "ScalingStudy", NAME, study["metadata"]["uid"], True,
        )  # fmt: skip
    out = control_plane.kubectl("-n", ns, "get", "scalingstudy", NAME).stdout
    assert "Running" in out and "0/8 succeeded" in out

    losses: dict[str, float] = {}
    failed = f"{NAME}-ar-tiny-u1m-e2"
    uids: dict[str, str] = {}

    def finish(name: str) -> None:
        body = children(kube, ns)[name]
        uids[name] = body["metadata"]["uid"]
        if name == failed:  # the trainer fails for good
            pytorchjob_status(kube, ns, f"{name}-train", "Running")
            pytorchjob_status(kube, ns, f"{name}-train", "Failed")
        else:
            pytorchjob_status(kube, ns, f"{name}-train", "Succeeded")
            wait_for(f"{name}-eval", lambda: kube.get("Job", ns, f"{name}-eval"), log=log)
            loss = 4.0 + 0.1 * len(losses)
            pod = job_pod(kube, ns, f"{name}-eval", log)
            pod_terminated(kube, ns, pod, 0, json.dumps({"loss": loss}))
            losses[name] = loss
        want = "Failed" if name == failed else "Succeeded"
        wait_for(
            f"{name} {want}",
            lambda: (kube.get(body["kind"], ns, name).get("status") or {}).get("phase") == want,
            log=log,
        )

    def finish_some(n: int) -> None:
        for _ in range(n):
            running = wait_for("an unfinished child", lambda: unfinished(kube, ns), log=log)
            assert len(running) <= MAX_CONCURRENT, running
            child = running[0]
            wait_for("the child's PyTorchJob",
                     lambda child=child: kube.get("PyTorchJob", ns, f"{child}-train"), log=log)  # fmt: skip
            finish(child)
            assert len(unfinished(kube, ns)) <= MAX_CONCURRENT

    finish_some(4)
    # The operator restarts: it finds every child by name, recreates none, carries on.
    operator.stop()
    before = {n: c["metadata"]["uid"] for n, c in children(kube, ns).items()}
    operator.start()
    finish_some(4)
    wait_for("every child", lambda: len(children(kube, ns)) == 8, log=log)
    after = {n: c["metadata"]["uid"] for n, c in children(kube, ns).items()}
    assert {n: after[n] for n in before} == before
    assert {n: after[n] for n in uids} == uids  # finished children never recreated

    # The failed child is reported, once, and not retried.
    st = wait_for("Fitting", lambda: (s := study_status(kube, ns)).get("phase") == "Fitting" and s,
                  log=log)  # fmt: skip
    assert st["failedChildren"] == [failed]
    assert kube.get("ARRun", ns, failed)["metadata"]["uid"] == uids[failed]
    warnings = [e for e in kube.list("Event", ns)
                if e["involvedObject"]["name"] == NAME and e["reason"] == "ChildFailed"]  # fmt: skip
    assert len(warnings) == 1

    # The fit: its Job's own command, run here on its ConfigMap; the pod reports the result.
    (job,) = [
        j
        for j in kube.list("Job", ns, label_selector=f"{LABEL_STUDY}={NAME}")
        if j["metadata"]["name"].startswith(f"{NAME}-fit-")
    ]
    fit_name = job["metadata"]["name"]
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ScalingStudy"
    cm = kube.get("ConfigMap", ns, fit_name)
    points = json.loads(cm["data"]["fit.json"])["points"]
    assert sorted(p["loss"] for p in points) == sorted(losses.values())
    (fit_json := tmp_path / "fit.json").write_text(cm["data"]["fit.json"])
    (container,) = job["spec"]["template"]["spec"]["containers"]
    result = subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", container["args"][0], "--config",
         str(fit_json)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    pod_terminated(kube, ns, job_pod(kube, ns, fit_name, log), 0, result)
    st = wait_for(
        "Succeeded", lambda: (s := study_status(kube, ns)).get("phase") == "Succeeded" and s,
        log=log,
    )  # fmt: skip
    assert st["reason"] == "Fitted"
    assert st["counts"] == {"total": 8, "waiting": 0, "active": 0, "succeeded": 7, "failed": 1}
    for obj, n in (("ar", 3), ("mdm", 4)):
        law = st["fit"][obj]
        assert law["points"] == n and law["values"]["R_D_star"] > 0
        assert law["identified"]["R_D_star"] is True
        assert law["fixed"] == ["A", "B", "E", "alpha", "beta"]
    assert [c["uniqueTokens"] for c in st["fit"]["criticalCompute"]] == [1_000_000]
    assert {r["name"]: r["bestLoss"] for r in st["children"] if "bestLoss" in r} == losses
    out = control_plane.kubectl("-n", ns, "get", "scalingstudy", NAME).stdout
    assert "Succeeded" in out and "7/8 succeeded, 1 failed" in out

    # Deleting the study deletes its children.
    control_plane.kubectl("-n", ns, "delete", "scalingstudy", NAME, "--timeout=60s")
    wait_for("children collected", lambda: children(kube, ns) == {}, timeout=GC_TIMEOUT, log=log)
