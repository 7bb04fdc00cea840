"""What the controllers this control plane lacks would write: the Kubeflow training operator's
PyTorchJob status (v1.9 JobStatus: conditions that accumulate, replicaStatuses, start and
completion times) and the kubelet's status of the evaluator pod. Written through the status
subresource with the admin credentials, as those controllers do with theirs."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from diffar.operator.kube import Kube


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# stage -> (condition type, reason, message template) in the order the controller adds them
_STAGES = {
    "Created": ("Created", "PyTorchJobCreated", "PyTorchJob {ns}/{name} is created."),
    "Running": ("Running", "PyTorchJobRunning", "PyTorchJob {ns}/{name} is running."),
    "Suspended": ("Suspended", "PyTorchJobSuspended", "PyTorchJob {name} is suspended."),
    "Succeeded": (
        "Succeeded",
        "PyTorchJobSucceeded",
        "PyTorchJob {ns}/{name} successfully completed.",
    ),
    "Failed": (
        "Failed",
        "PyTorchJobFailed",
        "PyTorchJob {ns}/{name} is failed because 1 Master replica(s) failed.",
    ),
}


def pytorchjob_status(kube: Kube, ns: str, name: str, stage: str) -> dict:
    """Move the PyTorchJob to `stage` the way the training operator does: the new condition is
    appended True; Running turns False when the job suspends, succeeds or fails."""
    job = kube.get("PyTorchJob", ns, name)
    status = dict(job.get("status") or {})
    conds = [dict(c) for c in status.get("conditions") or []]
    now = _now()
    if not conds:
        ctype, reason, msg = _STAGES["Created"]
        conds.append(_cond(ctype, "True", reason, msg.format(ns=ns, name=name), now))
    if stage != "Created":
        if stage in ("Suspended", "Succeeded", "Failed"):
            for c in conds:
                if c["type"] == "Running" and c["status"] == "True":
                    c.update(status="False", lastUpdateTime=now, lastTransitionTime=now)
        if stage == "Running":
            conds = [c for c in conds if c["type"] != "Suspended"]
        ctype, reason, msg = _STAGES[stage]
        conds = [c for c in conds if c["type"] != ctype]
        conds.append(_cond(ctype, "True", reason, msg.format(ns=ns, name=name), now))
    status["conditions"] = conds
    active = 1 if stage == "Running" else 0
    status["replicaStatuses"] = {
        "Master": {
            "active": active,
            "succeeded": int(stage == "Succeeded"),
            "failed": int(stage == "Failed"),
        },
        "Worker": {"active": active},
    }
    status.setdefault("startTime", now)
    if stage in ("Succeeded", "Failed"):
        status["completionTime"] = now
    status["lastReconcileTime"] = now
    return kube.patch("PyTorchJob", ns, name, {"status": status}, sub="status")


def _cond(type_: str, status: str, reason: str, message: str, now: str) -> dict:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
    }


def pod_terminated(kube: Kube, ns: str, pod: dict, exit_code: int, message: str) -> dict:
    """The kubelet's report of a finished single-container pod, termination message included."""
    now = _now()
    container = pod["spec"]["containers"][0]["name"]
    phase = "Succeeded" if exit_code == 0 else "Failed"
    status = {
        "phase": phase,
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {
                "type": "Ready",
                "status": "False",
                "lastTransitionTime": now,
                "reason": "PodCompleted",
            },
            {
                "type": "ContainersReady",
                "status": "False",
                "lastTransitionTime": now,
                "reason": "PodCompleted",
            },
        ],
        "containerStatuses": [
            {
                "name": container,
                "image": pod["spec"]["containers"][0]["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": "Completed" if exit_code == 0 else "Error",
                        "message": message,
                        "startedAt": now,
                        "finishedAt": now,
                    }
                },
            }
        ],
    }
    return kube.patch("Pod", ns, pod["metadata"]["name"], {"status": status}, sub="status")


def summary(results: dict) -> str:
    return json.dumps(results)
