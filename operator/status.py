"""The run's state machine: what exists and what the children say in, actions and status out.

`decide(body, observed, settings, now)` is pure. It reads the run object (as the API returns
it) and the observed children, and returns a `Decision`: children to create, merge patches to
apply to them (suspend/resume), Events to post, and the complete new `status`. The kopf handlers
carry the decision out and write the status in one place (`diffar.operator.reconcile`).

Phases and their reasons:

| phase | reason | when |
| --- | --- | --- |
| Pending | ChildrenCreated, PodsPending, WaitingForOldChildren | PyTorchJob created, pods not running yet |
| Queued | QueuedByKueue | the PyTorchJob waits, suspended, for Kueue's admission |
| Training | TrainingRunning, TrainingRestarting | PyTorchJob Running (or Restarting) |
| Evaluating | EvaluationRunning | training succeeded; evaluator Job running |
| Succeeded | EvaluationSucceeded, TrainingSucceeded | results in status (or evaluation disabled) |
| Failed | one of `FailureReason` | terminal, except the `RETRYABLE` reasons |
| Suspended | SuspendedByUser | spec.suspend is true |

A spec this operator cannot parse (fields of a newer CRD, an older operator) fails a run that
has no children yet (InvalidSpec, retryable); a run whose PyTorchJob exists keeps its phase and
children, with condition Validated=False, reason SpecNotUnderstood, and a Warning Event.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from diffar.operator import builders, trainjob_status
from diffar.operator.runs import Run, Settings, SpecError, planned_steps, validate

ACTIVE_PHASES = ("Pending", "Queued", "Training", "Evaluating", "Suspended")
TERMINAL_PHASES = ("Succeeded", "Failed")


class FailureReason(StrEnum):
    INVALID_SPEC = "InvalidSpec"
    CHILD_CONFLICT = "ChildConflict"
    TRAINING_FAILED = "TrainingFailed"
    EVALUATION_FAILED = "EvaluationFailed"


# Failures that a later change can clear (an edited spec, a conflicting object removed): the
# operator keeps re-evaluating them instead of treating the run as finished.
RETRYABLE = (FailureReason.INVALID_SPEC, FailureReason.CHILD_CONFLICT)


def is_finished(status: dict) -> bool:
    return status.get("phase") in TERMINAL_PHASES and status.get("reason") not in RETRYABLE


class Reason(StrEnum):
    VALIDATED = "Validated"
    CHILDREN_CREATED = "ChildrenCreated"
    PODS_PENDING = "PodsPending"
    QUEUED = "QueuedByKueue"
    RUNNING = "TrainingRunning"
    RESTARTING = "TrainingRestarting"
    TRAINING_SUCCEEDED = "TrainingSucceeded"
    EVALUATION_RUNNING = "EvaluationRunning"
    EVALUATION_SUCCEEDED = "EvaluationSucceeded"
    SUSPENDED = "SuspendedByUser"
    NOT_SUSPENDED = "NotSuspended"
    NOT_STARTED = "NotStarted"
    WAITING_FOR_OLD_CHILDREN = "WaitingForOldChildren"
    SPEC_NOT_UNDERSTOOD = "SpecNotUnderstood"  # version skew: running children left alone


@dataclass
class Observed:
    """The run's children as read from the API (None: absent), and what they reported."""

    config_map: dict | None = None
    train_job: dict | None = None
    eval_job: dict | None = None
    eval_results: dict | None = None  # the evaluator's termination message, parsed
    eval_message: str | None = None  # the evaluator's termination message when it failed
    progress: dict | None = None  # a metrics sample: step, loss, tokens_seen, epoch


@dataclass
class Decision:
    create: list[dict] = field(default_factory=list)
    patch: list[tuple[str, str, dict]] = field(default_factory=list)  # (kind, name, merge patch)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def set_condition(
    conditions: list[dict],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[dict]:
    """metav1.Condition upsert: lastTransitionTime moves only when status changes."""
    value = "True" if status else "False"
    out = [c for c in conditions if c.get("type") != type_]
    prev = next((c for c in conditions if c.get("type") == type_), None)
    when = prev["lastTransitionTime"] if prev and prev.get("status") == value else rfc3339(now)
    out.append(
        {
            "type": type_,
            "status": value,
            "observedGeneration": generation,
            "lastTransitionTime": when,
            "reason": reason,
            "message": message[:32768],
        }
    )
    order = ["Validated", "Training", "Evaluated", "Suspended", "Ready"]
    return sorted(out, key=lambda c: order.index(c["type"]) if c["type"] in order else 99)


def owned_by(obj: dict, uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _true_conditions(obj: dict) -> dict[str, dict]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return {c.get("type"): c for c in conds if c.get("status") == "True"}


def train_state(job: dict) -> tuple[str, dict | None]:
    """The training child's state: Succeeded, Failed, Suspended, Restarting, Running or Created
    (a TrainJob's conditions mapped onto the PyTorchJob's by `trainjob_status`)."""
    if job.get("kind") == "TrainJob":
        return trainjob_status.train_state(job)
    true = _true_conditions(job)
    for state in ("Succeeded", "Failed", "Suspended", "Restarting", "Running", "Created"):
        if state in true:
            return state, true[state]
    return "Created", None


def eval_state(job: dict) -> tuple[str, dict | None]:
    """The evaluator Job's state: Complete, Failed, Suspended or Running."""
    true = _true_conditions(job)
    for state in ("Complete", "Failed", "Suspended"):
        if state in true:
            return state, true[state]
    return "Running", None


def parse_results(message: str | None) -> dict | None:
    """The evaluator's termination message (a compact results.json) as status.results."""
    if not message:
        return None
    try:
        raw = json.loads(message)  # Python's json reads NaN and Infinity: finite() drops them
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    tasks: dict[str, float] = {}
    for name, value in (raw.get("tasks") or {}).items():
        acc = value.get("acc") if isinstance(value, dict) else value
        if isinstance(acc, int | float):
            tasks[str(name)] = float(acc)
    loss = raw.get("loss", raw.get("val_loss"))
    out: dict[str, Any] = {"tasks": tasks}
    if isinstance(loss, int | float):
        out["valLoss"] = float(loss)
    if isinstance(raw.get("loss_estimator"), str):
        out["lossEstimator"] = raw["loss_estimator"]
    validation = {
        str(k): float(v)
        for k, v in (raw.get("validation") or {}).items()
        if isinstance(v, int | float)
    }
    if validation:
        out["validation"] = validation
    if raw.get("results_uri"):
        out["resultsUri"] = str(raw["results_uri"])[:1024]
    training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    for key, name in _TRAINING_FIELDS.items():
        value = training.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return finite(out)


def finite(value: Any) -> Any:
    """`value` without its NaN and infinite floats (dropped from dicts and lists): JSON has no
    such numbers, so one of them would make every status PATCH of the run fail."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            clean = finite(v)
            if clean is not None or v is None:
                out[k] = clean
        return out
    if isinstance(value, list):
        return [finite(v) for v in value if not (isinstance(v, float) and not math.isfinite(v))]
    return value


# results.json's training summary (evaluator/results.py) -> status.results
_TRAINING_FIELDS = {
    "best_val_loss": "bestValLoss",
    "best_val_epoch": "bestValEpoch",
    "final_val_loss": "finalValLoss",
    "final_train_loss": "finalTrainLoss",
    "wall_seconds": "wallSeconds",
    "tokens_per_second": "tokensPerSecond",
}


def update_progress(
    prev: dict | None, sample: dict | None, total: int, now: datetime
) -> dict[str, Any]:
    """status.progress from the previous value and a new metrics sample (if any)."""
    p: dict[str, Any] = {
        "step": 0,
        "totalSteps": total,
        "epoch": 0.0,
        "tokensSeen": 0,
        **{k: v for k, v in (prev or {}).items() if k != "totalSteps"},
    }
    p["totalSteps"] = total
    sample = finite(sample) if sample else None
    if sample:
        step = int(sample.get("step", p["step"]))
        then = parse_time(p.get("sampledAt"))
        if then and step > p["step"] and now > then and total > step:
            rate = (step - p["step"]) / (now - then).total_seconds()
            p["eta"] = rfc3339(now + timedelta(seconds=(total - step) / rate))
        p["step"] = step
        p["epoch"] = float(sample.get("epoch", p["epoch"]))
        p["tokensSeen"] = int(sample.get("tokens_seen", p["tokensSeen"]))
        if sample.get("loss") is not None:
            p["loss"] = float(sample["loss"])
        p["sampledAt"] = rfc3339(now)
    pct = 100.0 * p["step"] / total if total else 0.0
    p["summary"] = f"{p['step']}/{total} ({pct:.0f}%)"
    return p


@dataclass
class _Outcome:
    phase: str
    reason: str
    message: str


def decide(body: dict, observed: Observed, settings: Settings, now: datetime) -> Decision:
    meta = body.get("metadata") or {}
    generation = int(meta.get("generation") or 1)
    prev: dict[str, Any] = dict(body.get("status") or {})
    prev.pop("kopf", None)
    d = Decision()
    conditions = list(prev.get("conditions") or [])

    def finish(outcome: _Outcome, run: Run | None, **extra: Any) -> Decision:
        status: dict[str, Any] = {
            **{k: v for k, v in prev.items() if k not in ("conditions",)},
            **extra,
        }
        status["phase"] = outcome.phase
        status["reason"] = outcome.reason
        status["message"] = outcome.message
        status["observedGeneration"] = generation
        kind = body.get("kind")
        status["objective"] = (
            run.objective if run else {"DiffusionRun": "mdm", "ARRun": "ar"}.get(kind)
        )
        conds = conditions
        phase = outcome.phase
        conds = set_condition(
            conds,
            "Training",
            phase == "Training",
            outcome.reason if phase == "Training" else _training_reason(status, outcome),
            outcome.message if phase == "Training" else "",
            generation,
            now,
        )
        evaluated = status.get("results") is not None
        conds = set_condition(
            conds,
            "Evaluated",
            evaluated,
            Reason.EVALUATION_SUCCEEDED if evaluated else Reason.NOT_STARTED,
            "",
            generation,
            now,
        )
        conds = set_condition(
            conds,
            "Suspended",
            phase == "Suspended",
            Reason.SUSPENDED if phase == "Suspended" else Reason.NOT_SUSPENDED,
            "",
            generation,
            now,
        )
        conds = set_condition(
            conds, "Ready", phase == "Succeeded", outcome.reason, outcome.message, generation, now
        )
        status["conditions"] = conds
        if not is_finished(status):
            status.pop("completionTime", None)
        elif not status.get("completionTime"):
            status["completionTime"] = rfc3339(now)
        if prev.get("phase") != phase or prev.get("reason") != outcome.reason:
            kind_ = "Warning" if phase == "Failed" else "Normal"
            d.events.append((kind_, outcome.reason, f"{phase}: {outcome.message}".rstrip(": ")))
        d.status = finite(status)
        return d

    # 1. Validate: the schema's job first (pydantic), then what only the operator can check.
    try:
        run = Run.from_body(body)
        problems = validate(run) + builders.backend_problems(run, settings)
    except SpecError as e:
        run, problems = None, e.problems
    message = "; ".join(problems)
    uid = meta.get("uid") or ""
    if run is None and observed.train_job is not None and owned_by(observed.train_job, uid):
        # Version skew: a CRD newer (or older) than this operator gave the run fields the models
        # do not know. Its children were made from a spec this operator understood: leave them
        # and the phase alone, and say so, instead of failing a run that trains.
        was = next((c for c in conditions if c.get("type") == "Validated"), {})
        if was.get("reason") != Reason.SPEC_NOT_UNDERSTOOD or was.get("message") != message:
            d.events.append(("Warning", Reason.SPEC_NOT_UNDERSTOOD, message))
        conditions = set_condition(
            conditions, "Validated", False, Reason.SPEC_NOT_UNDERSTOOD, message, generation, now
        )
        kept = _Outcome(
            prev.get("phase") or "Pending", prev.get("reason") or "", prev.get("message") or ""
        )
        return finish(kept, None)
    if problems and (run is None or observed.train_job is None):
        conditions = set_condition(
            conditions, "Validated", False, FailureReason.INVALID_SPEC, message, generation, now
        )
        return finish(_Outcome("Failed", FailureReason.INVALID_SPEC, message), None)
    assert run is not None
    if problems:
        # A mutable field went bad after the trainer started (say, resources.nodes): the running
        # PyTorchJob keeps the spec it was created with; say so, and carry on.
        was = next((c for c in conditions if c.get("type") == "Validated"), {})
        if was.get("status") != "False" or was.get("message") != message:
            d.events.append(("Warning", FailureReason.INVALID_SPEC, message))
        conditions = set_condition(
            conditions, "Validated", False, FailureReason.INVALID_SPEC, message, generation, now
        )
    else:
        conditions = set_condition(
            conditions, "Validated", True, Reason.VALIDATED, "", generation, now
        )
    total = planned_steps(run)
    children = {
        "configMap": run.config_map_name,
        "trainJob": run.train_job_name,
        "evalJob": prev.get("children", {}).get("evalJob"),
    }
    extra: dict[str, Any] = {"children": children}

    # A terminal run stays terminal; only its status is kept fresh.
    if is_finished(prev):
        return finish(_Outcome(prev["phase"], prev.get("reason", ""), prev.get("message", "")), run)

    # 2. Children that must exist, owned by this run.
    for obj, name, kind in (
        (observed.config_map, run.config_map_name, "ConfigMap"),
        (observed.train_job, run.train_job_name, builders.train_kind(settings)),
        (observed.eval_job, run.eval_job_name, "Job"),
    ):
        if obj is not None and not owned_by(obj, run.uid):
            if _owned_by_namesake(obj, run):
                # A deleted run of the same name: its children are being garbage-collected.
                msg = f"{kind} {name} of a deleted run of this name is still being removed"
                return finish(
                    _Outcome("Pending", Reason.WAITING_FOR_OLD_CHILDREN, msg), run, **extra
                )
            msg = f"{kind} {name} exists and is not owned by this run; delete or rename it"
            return finish(_Outcome("Failed", FailureReason.CHILD_CONFLICT, msg), run, **extra)
    if observed.config_map is None:
        d.create.append(builders.build_config_map(run, settings))

    suspend = run.spec.suspend
    kueue = run.spec.scheduling.kueue is not None
    progress = prev.get("progress")

    # 3. Training.
    job = observed.train_job
    train_kind = builders.train_kind(settings)
    if job is None:
        d.create.append(builders.build_train_job(run, settings))
        extra["progress"] = update_progress(progress, None, total, now)
        if suspend:
            return finish(
                _Outcome("Suspended", Reason.SUSPENDED, "created suspended"), run, **extra
            )
        if kueue:
            return finish(
                _Outcome("Queued", Reason.QUEUED, "waiting for Kueue admission"), run, **extra
            )
        return finish(
            _Outcome("Pending", Reason.CHILDREN_CREATED, f"{train_kind} created"), run, **extra
        )

    state, cond = train_state(job)
    cond_msg = (cond or {}).get("message") or ""
    job_suspended = _train_suspended(job)
    if state not in ("Succeeded", "Failed"):
        if suspend and not job_suspended:
            d.patch.append(
                (train_kind, job["metadata"]["name"], builders.train_suspend_patch(settings, True))
            )
        elif not suspend and job_suspended and (not kueue or prev.get("phase") == "Suspended"):
            d.patch.append(
                (train_kind, job["metadata"]["name"], builders.train_suspend_patch(settings, False))
            )
        sample = observed.progress if state in ("Running", "Restarting") else None
        extra["progress"] = update_progress(progress, sample, total, now)
        if suspend:
            return finish(
                _Outcome("Suspended", Reason.SUSPENDED, "spec.suspend is true"), run, **extra
            )
        if state == "Restarting":
            restart_at = (cond or {}).get("lastTransitionTime") or rfc3339(now)
            if restart_at != prev.get("lastRestartTime"):
                extra["restarts"] = int(prev.get("restarts") or 0) + 1
                extra["lastRestartTime"] = restart_at
        if state in ("Running", "Restarting"):
            if not prev.get("startTime"):
                extra["startTime"] = rfc3339(now)
            reason = Reason.RESTARTING if state == "Restarting" else Reason.RUNNING
            return finish(_Outcome("Training", reason, cond_msg), run, **extra)
        if state == "Suspended" or job_suspended:
            if kueue:
                return finish(
                    _Outcome("Queued", Reason.QUEUED, "waiting for Kueue admission"), run, **extra
                )
            return finish(_Outcome("Pending", Reason.PODS_PENDING, "resuming"), run, **extra)
        # Trainer v2.3 writes no Created condition: until pods report, say what exists.
        msg = cond_msg or f"{train_kind} created"
        return finish(_Outcome("Pending", Reason.PODS_PENDING, msg), run, **extra)

    if state == "Failed":
        msg = cond_msg or f"the {train_kind} failed"
        return finish(_Outcome("Failed", FailureReason.TRAINING_FAILED, msg), run, **extra)

    # 4. Training succeeded: evaluation.
    done = update_progress(progress, None, total, now)
    done["step"] = max(done["step"], total)
    done["summary"] = f"{done['step']}/{total} (100%)"
    done.pop("eta", None)
    extra["progress"] = done
    if not run.spec.evaluation.enabled:
        return finish(
            _Outcome("Succeeded", Reason.TRAINING_SUCCEEDED, "evaluation disabled"), run, **extra
        )
    ev = observed.eval_job
    children["evalJob"] = run.eval_job_name
    if ev is None:
        # spec.evaluation is mutable until the evaluator starts: refresh eval.json first.
        fresh = builders.build_config_map(run, settings)["data"][builders.EVAL_JSON]
        current = ((observed.config_map or {}).get("data") or {}).get(builders.EVAL_JSON)
        if observed.config_map is not None and current != fresh:
            d.patch.append(
                ("ConfigMap", run.config_map_name, {"data": {builders.EVAL_JSON: fresh}})
            )
        d.create.append(builders.build_eval_job(run, settings))
        if suspend:
            return finish(
                _Outcome("Suspended", Reason.SUSPENDED, "spec.suspend is true"), run, **extra
            )
        return finish(
            _Outcome("Evaluating", Reason.EVALUATION_RUNNING, "evaluator Job created"), run, **extra
        )
    estate, econd = eval_state(ev)
    if estate == "Complete":
        results = observed.eval_results or {}
        extra["results"] = results
        msg = "" if observed.eval_results else "the evaluator left no results summary"
        return finish(_Outcome("Succeeded", Reason.EVALUATION_SUCCEEDED, msg), run, **extra)
    if estate == "Failed":
        msg = (
            "; ".join(m for m in ((econd or {}).get("message"), observed.eval_message) if m)
            or "the evaluator Job failed"
        )
        return finish(_Outcome("Failed", FailureReason.EVALUATION_FAILED, msg), run, **extra)
    ev_suspended = bool((ev.get("spec") or {}).get("suspend"))
    if suspend and not ev_suspended:
        d.patch.append(("Job", ev["metadata"]["name"], {"spec": {"suspend": True}}))
    elif not suspend and ev_suspended and (not kueue or prev.get("phase") == "Suspended"):
        d.patch.append(("Job", ev["metadata"]["name"], {"spec": {"suspend": False}}))
    if suspend:
        return finish(_Outcome("Suspended", Reason.SUSPENDED, "spec.suspend is true"), run, **extra)
    return finish(_Outcome("Evaluating", Reason.EVALUATION_RUNNING, ""), run, **extra)


def _owned_by_namesake(obj: dict, run: Run) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(
        r.get("controller") and r.get("kind") == run.kind.kind and r.get("name") == run.name
        for r in refs
    )


def _training_reason(status: dict, outcome: _Outcome) -> str:
    if outcome.phase in ("Evaluating", "Succeeded") or status.get("results"):
        return Reason.TRAINING_SUCCEEDED
    if outcome.reason == FailureReason.TRAINING_FAILED:
        return FailureReason.TRAINING_FAILED
    return outcome.reason or Reason.NOT_STARTED


def _train_suspended(job: dict) -> bool:
    if job.get("kind") == "TrainJob":
        return trainjob_status.is_suspended(job)
    return bool(((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"))
