"""A TrainJob's status drives the run exactly as the PyTorchJob's does (`status.decide`, pure).

Each case is one moment of a run, observed once through a PyTorchJob and once through the
TrainJob that Trainer v2.3 would show at that moment (conditions as its controller writes them:
Suspended True/False, Complete, Failed, and jobsStatus from the JobSet). The run's status must be
the same under both backends, apart from messages that name the kind.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from diffar.operator import status as st
from diffar.operator import trainjob_status
from diffar.operator.runs import Run, Settings, planned_steps

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
PYTORCHJOB = Settings()
TRAINJOB = Settings(backend="trainjob")
T0 = "2026-01-01T11:00:00Z"


def body(manifest: dict, status: dict | None = None) -> dict:
    b = copy.deepcopy(manifest)
    b["metadata"].update(uid=UID, generation=1)
    if status is not None:
        b["status"] = status
    return b


def _meta(name: str) -> dict:
    return {"name": name, "ownerReferences": [{"uid": UID, "controller": True}]}


def _cond(type_: str, status: str = "True", reason: str = "", message: str = "") -> dict:
    c = {"type": type_, "status": status, "lastTransitionTime": T0, "message": message}
    return {**c, "reason": reason or type_}


def pytorchjob(name: str, conds: list[dict], suspend: bool = False) -> dict:
    return {
        "kind": "PyTorchJob",
        "metadata": _meta(name),
        "spec": {"runPolicy": {"suspend": suspend}},
        "status": {"conditions": conds},
    }


def trainjob(
    name: str,
    conds: list[dict],
    suspend: bool = False,
    node: dict | None = None,
    trainer_status: dict | None = None,
) -> dict:
    status: dict = {"conditions": conds}
    if node is not None:
        status["jobsStatus"] = [{"name": "node", "active": 0, "ready": 0, "failed": 0, **node}]
    if trainer_status is not None:
        status["trainerStatus"] = trainer_status
    return {
        "kind": "TrainJob",
        "metadata": _meta(name),
        "spec": {"suspend": suspend},
        "status": status,
    }


# One moment of a run, as (PyTorchJob, TrainJob) at that moment.
def moments(name: str) -> dict[str, tuple[dict, dict]]:
    resumed = _cond("Suspended", "False", "Resumed")
    return {
        "queued": (
            pytorchjob(name, [_cond("Created"), _cond("Suspended")], suspend=True),
            trainjob(name, [_cond("Suspended")], suspend=True),
        ),
        "admitted-pods-pending": (
            pytorchjob(name, [_cond("Created")]),
            trainjob(name, [resumed], node={"active": 1}),
        ),
        "no-jobset-yet": (
            pytorchjob(name, []),
            trainjob(name, []),
        ),
        "running": (
            pytorchjob(name, [_cond("Created"), _cond("Running")]),
            trainjob(name, [resumed], node={"active": 1, "ready": 1}),
        ),
        "succeeded": (
            pytorchjob(name, [_cond("Succeeded", message="done")]),
            trainjob(name, [_cond("Complete", message="done")], node={"succeeded": 1}),
        ),
        "failed": (
            pytorchjob(name, [_cond("Failed", message="node 1 exited with 1")]),
            trainjob(name, [_cond("Failed", message="node 1 exited with 1")], node={"failed": 1}),
        ),
    }


def _comparable(d: st.Decision) -> dict:
    status = copy.deepcopy(d.status)
    status.pop("message", None)
    for c in status.get("conditions", []):
        c.pop("message", None)
    return {
        "status": status,
        "create": [o["kind"].replace("TrainJob", "PyTorchJob") for o in d.create],
        "patch": [(k.replace("TrainJob", "PyTorchJob"), n) for k, n, _ in d.patch],
        "events": [(t, r) for t, r, _ in d.events],
    }


@pytest.mark.parametrize("kueue", [False, True], ids=["plain", "kueue"])
@pytest.mark.parametrize("suspend", [False, True], ids=["active", "suspended"])
@pytest.mark.parametrize(
    "moment", ["queued", "admitted-pods-pending", "no-jobset-yet", "running", "succeeded", "failed"]
)
@pytest.mark.parametrize("prev_phase", ["Pending", "Queued", "Training", "Suspended"])
def test_the_run_reads_a_trainjob_as_it_reads_a_pytorchjob(
    manifest, moment, kueue, suspend, prev_phase
):
    if kueue:
        manifest["spec"]["scheduling"] = {"kueue": {"queueName": "gpus"}}
    manifest["spec"]["suspend"] = suspend
    name = "mdm-small-train"
    ptj, tj = moments(name)[moment]
    prev = {"phase": prev_phase, "reason": "x", "startTime": None}
    a = st.decide(body(manifest, prev), st.Observed(train_job=ptj), PYTORCHJOB, NOW)
    b = st.decide(body(manifest, prev), st.Observed(train_job=tj), TRAINJOB, NOW)
    assert _comparable(a) == _comparable(b)


def test_creation_and_suspension_speak_trainjob(manifest):
    d = st.decide(body(manifest), st.Observed(), TRAINJOB, NOW)
    assert [o["kind"] for o in d.create] == ["ConfigMap", "TrainJob"]
    assert d.status["message"] == "TrainJob created"
    running = moments("mdm-small-train")["running"][1]
    manifest["spec"]["suspend"] = True
    d = st.decide(
        body(manifest, {"phase": "Training"}), st.Observed(train_job=running), TRAINJOB, NOW
    )
    assert d.patch == [("TrainJob", "mdm-small-train", {"spec": {"suspend": True}})]
    assert d.phase == "Suspended"
    parked = trainjob("mdm-small-train", [_cond("Suspended")], suspend=True)
    manifest["spec"]["suspend"] = False
    d = st.decide(
        body(manifest, {"phase": "Suspended"}), st.Observed(train_job=parked), TRAINJOB, NOW
    )
    assert d.patch == [("TrainJob", "mdm-small-train", {"spec": {"suspend": False}})]


def test_kueue_unsuspends_the_trainjob_not_the_operator(manifest):
    manifest["spec"]["scheduling"] = {"kueue": {"queueName": "gpus"}}
    d = st.decide(body(manifest), st.Observed(), TRAINJOB, NOW)
    (tj,) = [o for o in d.create if o["kind"] == "TrainJob"]
    assert tj["spec"]["suspend"] is True
    assert tj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"
    assert d.phase == "Queued"
    parked = trainjob("mdm-small-train", [_cond("Suspended")], suspend=True)
    d = st.decide(body(manifest, d.status), st.Observed(train_job=parked), TRAINJOB, NOW)
    assert d.phase == "Queued" and d.patch == []


def test_failure_carries_the_trainjob_message(manifest):
    failed = moments("mdm-small-train")["failed"][1]
    d = st.decide(
        body(manifest, {"phase": "Training"}), st.Observed(train_job=failed), TRAINJOB, NOW
    )
    assert (d.phase, d.status["reason"]) == ("Failed", "TrainingFailed")
    assert d.status["message"] == "node 1 exited with 1"
    failed["status"]["conditions"][0]["message"] = ""
    d = st.decide(
        body(manifest, {"phase": "Training"}), st.Observed(train_job=failed), TRAINJOB, NOW
    )
    assert d.status["message"] == "the TrainJob failed"


def test_success_starts_the_unchanged_evaluator(manifest):
    done = moments("mdm-small-train")["succeeded"][1]
    a = st.decide(body(manifest, {"phase": "Training"}), st.Observed(train_job=done), TRAINJOB, NOW)
    b = st.decide(
        body(manifest, {"phase": "Training"}),
        st.Observed(train_job=moments("mdm-small-train")["succeeded"][0]),
        PYTORCHJOB,
        NOW,
    )
    assert a.phase == "Evaluating"
    assert [o for o in a.create if o["kind"] == "Job"] == [
        o for o in b.create if o["kind"] == "Job"
    ]


def test_a_foreign_trainjob_is_a_conflict(manifest):
    foreign = trainjob("mdm-small-train", [])
    foreign["metadata"]["ownerReferences"] = [{"uid": "other", "controller": True}]
    d = st.decide(body(manifest), st.Observed(train_job=foreign), TRAINJOB, NOW)
    assert (d.phase, d.status["reason"]) == ("Failed", "ChildConflict")
    assert d.status["message"].startswith("TrainJob mdm-small-train exists")


def test_backend_problems_fail_validation_before_anything_is_created(manifest):
    manifest["spec"]["resources"]["priorityClassName"] = "high"
    d = st.decide(body(manifest), st.Observed(), TRAINJOB, NOW)
    assert (d.phase, d.status["reason"]) == ("Failed", "InvalidSpec")
    assert "priorityClassName" in d.status["message"] and d.create == []
    assert st.decide(body(manifest), st.Observed(), PYTORCHJOB, NOW).phase == "Pending"


# --- progress from trainerStatus (Trainer's TrainJobStatus feature gate) ---------------------


def test_progress_sample_from_trainer_status(manifest):
    total = planned_steps(Run.from_body(manifest))
    at = "2026-01-01T11:59:00Z"
    job = trainjob("x", [], node={"ready": 1}, trainer_status={"lastUpdatedTime": at})
    assert trainjob_status.progress_sample(job, total) is None
    job["status"]["trainerStatus"]["progressPercentage"] = 50
    assert trainjob_status.progress_sample(job, total) == {"step": float(total // 2)}
    job["status"]["trainerStatus"]["metrics"] = [
        {"name": "step", "value": "120"},
        {"name": "loss", "value": "3.25"},
        {"name": "epoch", "value": "1.5"},
        {"name": "tokens_seen", "value": "1e6"},
        {"name": "accuracy", "value": "0.5"},
        {"name": "loss", "value": "nan"},
    ]
    sample = trainjob_status.progress_sample(job, total)
    assert sample == {"step": 120.0, "loss": 3.25, "epoch": 1.5, "tokens_seen": 1e6}
    job["status"]["trainerStatus"]["metrics"] = [{"name": "step", "value": str(10 * total)}]
    assert trainjob_status.progress_sample(job, total)["step"] == total  # never past the end


def test_trainer_status_progress_reaches_the_run(manifest):
    total = planned_steps(Run.from_body(manifest))
    running = trainjob(
        "mdm-small-train",
        [],
        node={"ready": 1},
        trainer_status={"progressPercentage": 25, "lastUpdatedTime": "2026-01-01T11:59:00Z"},
    )
    sample = trainjob_status.progress_sample(running, total)
    prev = {"phase": "Training", "progress": {"step": 0, "sampledAt": "2026-01-01T11:50:00Z"}}
    d = st.decide(
        body(manifest, prev), st.Observed(train_job=running, progress=sample), TRAINJOB, NOW
    )
    p = d.status["progress"]
    assert p["step"] == total // 4 and p["totalSteps"] == total
    assert p["summary"] == f"{total // 4}/{total} (25%)"
    assert st.parse_time(p["eta"]) > NOW + timedelta(minutes=10)


def test_trainjob_states():
    assert trainjob_status.train_state(trainjob("x", []))[0] == "Created"
    pending = trainjob("x", [], node={"active": 1})
    assert trainjob_status.train_state(pending) == (
        "Created",
        {"message": "trainer pods are starting"},
    )
    # A Failed condition wins over a stale ready count; Complete over everything.
    both = trainjob("x", [_cond("Failed")], node={"ready": 1})
    assert trainjob_status.train_state(both)[0] == "Failed"
    done = trainjob("x", [_cond("Complete"), _cond("Suspended", "False")], node={"ready": 1})
    assert trainjob_status.train_state(done)[0] == "Succeeded"
    other_job = trainjob("x", [])
    other_job["status"]["jobsStatus"] = [{"name": "dataset-initializer", "ready": 1}]
    assert trainjob_status.train_state(other_job)[0] == "Created"
