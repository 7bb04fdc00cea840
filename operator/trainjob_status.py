"""A TrainJob's status read as the PyTorchJob backend's states, so `status.decide` is one machine.

Trainer v2.3 writes these conditions on a TrainJob (pkg/controller/trainjob_controller.go and
the JobSet plugin): `Suspended` (True while spec.suspend, False with reason Resumed after),
`Complete` and `Failed` (copied from the JobSet's Completed and Failed conditions; Failed also
for an unsupported runtime or an exceeded activeDeadlineSeconds). There is no Running or
Restarting condition: `status.jobsStatus` counts the child Jobs of each replicated job, and a
trainer whose Job `node` is ready (every node pod ready or done) is what PyTorchJob calls
Running. A JobSet restart recreates the Jobs without a trace in the TrainJob, so the run's
`restarts` stays 0 under this backend.

| TrainJob | state (as `status.train_state`) |
| --- | --- |
| Complete True | Succeeded |
| Failed True | Failed |
| Suspended True | Suspended |
| jobsStatus[node].ready > 0 | Running |
| otherwise | Created (pods pending, or no JobSet yet) |

Progress: `status.trainerStatus` (the TrainJobStatus feature gate) carries progressPercentage
and named metrics. `progress_sample` turns them into the metrics sample the PyTorchJob path
scrapes from rank 0 (step, loss, epoch, tokens_seen); the operator still prefers its own scrape.
"""

from __future__ import annotations

import math

from diffar.operator.trainjob import NODE

# trainerStatus.metrics names that carry a progress field (as diffar's trainer names them, and
# as Trainer's HuggingFace callback names loss and epoch).
_METRICS = {
    "step": "step",
    "global_step": "step",
    "loss": "loss",
    "train_loss": "loss",
    "epoch": "epoch",
    "tokens_seen": "tokens_seen",
}


def _true(job: dict) -> dict[str, dict]:
    conds = (job.get("status") or {}).get("conditions") or []
    return {c.get("type"): c for c in conds if c.get("status") == "True"}


def train_state(job: dict) -> tuple[str, dict | None]:
    """The TrainJob's state in the PyTorchJob backend's terms, with the condition behind it."""
    true = _true(job)
    for condition, state in (("Complete", "Succeeded"), ("Failed", "Failed")):
        if condition in true:
            return state, true[condition]
    if "Suspended" in true:
        return "Suspended", true["Suspended"]
    jobs = (job.get("status") or {}).get("jobsStatus") or []
    node = next((j for j in jobs if j.get("name") == NODE), None)
    if node and int(node.get("ready") or 0) > 0:
        return "Running", {"type": "Running", "status": "True", "reason": "JobsReady"}
    if node and int(node.get("active") or 0) > 0:
        return "Created", {"message": "trainer pods are starting"}
    return "Created", None


def is_suspended(job: dict) -> bool:
    return bool((job.get("spec") or {}).get("suspend"))


def progress_sample(job: dict, total_steps: int) -> dict[str, float] | None:
    """trainerStatus as a metrics sample, or None when the TrainJob reports none."""
    ts = (job.get("status") or {}).get("trainerStatus") or {}
    out: dict[str, float] = {}
    for metric in ts.get("metrics") or []:
        key = _METRICS.get(str(metric.get("name")))
        try:
            value = float(metric.get("value"))
        except (TypeError, ValueError):
            continue
        if key and key not in out and math.isfinite(value):
            out[key] = value
    pct = ts.get("progressPercentage")
    if "step" not in out and isinstance(pct, int) and 0 <= pct <= 100:
        out["step"] = float(math.floor(total_steps * pct / 100))
    if "step" not in out:
        return None
    out["step"] = float(min(max(out["step"], 0.0), total_steps))
    return out
