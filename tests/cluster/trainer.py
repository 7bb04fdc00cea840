"""What Kubeflow Trainer v2.3's controller would write on a TrainJob, which this control plane
does not run: its status, through the status subresource, as pkg/controller/trainjob_controller.go
and the JobSet plugin set it (conditions Suspended True/False, Complete and Failed copied from the
JobSet, jobsStatus from the JobSet's replicated jobs, trainerStatus from the progress server)."""

from __future__ import annotations

from datetime import UTC, datetime

from diffar.operator.kube import Kube


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cond(type_: str, status: str, reason: str, message: str, now: str) -> dict:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    }


# stage -> (condition or None, jobsStatus of the `node` job)
_STAGES = {
    "Suspended": (("Suspended", "True", "Suspended", "TrainJob is suspended"), {"suspended": 1}),
    "Pending": (("Suspended", "False", "Resumed", "TrainJob is resumed"), {"active": 1}),
    "Running": (None, {"active": 1, "ready": 1}),
    "Complete": (
        ("Complete", "True", "AllJobsCompleted", "jobset completed successfully"),
        {"succeeded": 1},
    ),
    "Failed": (
        ("Failed", "True", "FailedJobs", "jobset failed due to a failed job: node"),
        {"failed": 1},
    ),
}


def trainjob_status(kube: Kube, ns: str, name: str, stage: str, trainer: dict | None = None):
    """Move the TrainJob to `stage` as Trainer does; `trainer` sets status.trainerStatus."""
    job = kube.get("TrainJob", ns, name)
    status = dict(job.get("status") or {})
    conds = [dict(c) for c in status.get("conditions") or []]
    now = _now()
    cond, node = _STAGES[stage]
    if cond is not None:
        type_, value, reason, message = cond
        old = next((c for c in conds if c["type"] == type_), None)
        if old is None or old["status"] != value:
            conds = [c for c in conds if c["type"] != type_]
            conds.append(_cond(type_, value, reason, message, now))
    status["conditions"] = conds
    counts = {"active": 0, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0, **node}
    status["jobsStatus"] = [{"name": "node", **counts}]
    if trainer is not None:
        status["trainerStatus"] = {"lastUpdatedTime": now, **trainer}
    return kube.patch("TrainJob", ns, name, {"status": status}, sub="status")
