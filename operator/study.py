"""A ScalingStudy as the operator sees it: expansion, concurrency and status, with no I/O.

`Study.from_body(body)` parses a ScalingStudy through `study_api`'s models. `plan(study)` expands
its grid into `Child`ren, each with a deterministic name and the complete ARRun/DiffusionRun body
the operator creates (owned by the study). `decide(study, observed, now)` is the study's state
machine: which children to create now (at most `maxConcurrent` unfinished at a time), whether the
fit's ConfigMap and Job are due, and the complete new status. `diffar.operator.study_reconcile`
carries a decision out; `diffar run --local` (`operator/local/study.py`) uses the same expansion.

Restart safety comes from the names: a child's name is a function of the study's name and its
grid point only, so a restarted operator (or two reconciles racing) computes the same names and
creation tolerates 409 Conflict. A child that fails stays Failed and is reported; the operator
never deletes or recreates it (deleting it by hand asks for a new attempt).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from diffar.operator.api import API_VERSION, DNS1035, MAX_RUN_NAME
from diffar.operator.builders import common_labels, controller_reference
from diffar.operator.runs import (
    PLACEHOLDER_UID,
    Run,
    SpecError,
    parse_object,
    train_config,
    validate,
)
from diffar.operator.study_api import (
    KIND,
    MAX_STUDY_NAME,
    GridModel,
    ScalingStudySpec,
    StudyStatus,
)

LABEL_STUDY = "diffar.io/study"
LABEL_GRID_HASH = "diffar.io/grid-point"
OBJECTIVE_KIND = {"ar": "ARRun", "mdm": "DiffusionRun"}
FINISHED = ("Succeeded", "Failed")
FIT_CONTAINER = "fit"
FIT_JSON = "fit.json"
FIT_DIR = "/etc/diffar"
TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True)
class Study:
    name: str
    namespace: str
    uid: str
    generation: int
    spec: ScalingStudySpec

    @classmethod
    def from_body(cls, body: dict[str, Any], *, namespace: str | None = None) -> Study:
        if not isinstance(body, dict):
            raise SpecError(["a study manifest must be a mapping"])
        if body.get("kind") != KIND:
            raise SpecError([f"kind must be {KIND}, not {body.get('kind')!r}"])
        meta, name, spec = parse_object(body, ScalingStudySpec, _name_problems)
        return cls(
            name=name,
            namespace=meta.get("namespace") or namespace or "default",
            uid=meta.get("uid") or PLACEHOLDER_UID,
            generation=int(meta.get("generation") or 1),
            spec=spec,
        )


def _name_problems(name: str) -> list[str]:
    if not name:
        return ["metadata.name is required"]
    problems = []
    if len(name) > MAX_STUDY_NAME:
        problems.append(f"metadata.name {name!r} is longer than {MAX_STUDY_NAME} characters")
    if not re.match(DNS1035, name):
        problems.append(
            f"metadata.name {name!r} is not a DNS-1035 label (lower-case letters, digits and "
            "'-', starting with a letter)"
        )
    return problems


# ------------------------------------------------------------------------------ the grid


@dataclass(frozen=True)
class GridPoint:
    objective: str
    model: GridModel
    unique_tokens: int
    epochs: float

    def key(self) -> str:
        """Canonical text of the point: what its hash and its name are a function of."""
        return json.dumps(
            {
                "objective": self.objective,
                "model": self.model.model_dump(exclude_none=True),
                "uniqueTokens": self.unique_tokens,
                "epochs": self.epochs,
            },
            sort_keys=True,
        )

    def digest(self) -> str:
        return hashlib.sha256(self.key().encode()).hexdigest()[:10]


def grid_points(spec: ScalingStudySpec) -> list[GridPoint]:
    """Grid order: U, then model, then epochs, then objective, so that the AR and MDM runs of
    one (N, U, E) are created side by side and the first slots give comparable pairs."""
    g = spec.grid
    return [
        GridPoint(o, m, u, float(e))
        for u in g.uniqueTokens
        for m in g.models
        for e in g.epochs
        for o in g.objectives
    ]


def compact_count(n: float) -> str:
    """10000 -> 10k, 99952399 -> 99952399, 2e9 -> 2b: exact, so distinct counts stay distinct."""
    if n == int(n):
        n = int(n)
        for div, suffix in ((10**12, "t"), (10**9, "b"), (10**6, "m"), (10**3, "k")):
            if n >= div and n % div == 0:
                return f"{n // div}{suffix}"
        return str(n)
    return repr(float(n)).replace(".", "p").replace("e+", "e").replace("-", "m")


def child_name(study: str, point: GridPoint) -> str:
    """`<study>-<objective>-<model>-u<U>-e<E>`; when that is longer than a run name may be,
    `<study, cut>-<objective>-<hash of the point>`."""
    readable = (
        f"{study}-{point.objective}-{point.model.label}-u{compact_count(point.unique_tokens)}"
        f"-e{compact_count(point.epochs)}"
    )
    if len(readable) <= MAX_RUN_NAME and re.match(DNS1035, readable):
        return readable
    tail = f"-{point.objective}-{point.digest()}"
    return study[: MAX_RUN_NAME - len(tail)].rstrip("-") + tail


@dataclass(frozen=True)
class Child:
    point: GridPoint
    name: str
    kind: str
    body: dict[str, Any]
    params: int


def owner_reference(study: Study) -> dict[str, Any]:
    return controller_reference(KIND, study.name, study.uid)


def study_labels(study: Study, component: str) -> dict[str, str]:
    return {**common_labels(study.name, component), LABEL_STUDY: study.name}


def child_spec(study: Study, point: GridPoint, name: str) -> dict[str, Any]:
    """The child's spec: the template, the grid point, per-child paths and intervals."""
    t = study.spec.template.model_dump(mode="json", exclude_none=True)
    model = point.model.model_dump(exclude_none=True, exclude={"name"})
    spec: dict[str, Any] = {
        "model": {**model, **t["model"]},
        "data": {**t["data"], "uniqueTokens": point.unique_tokens, "epochs": point.epochs},
        **{k: v for k, v in t.items() if k not in ("model", "data", "diffusion")},
    }
    if point.objective == "mdm":
        spec["diffusion"] = t["diffusion"]
    checkpoint = dict(t["checkpoint"])
    if checkpoint.get("uri"):
        checkpoint["uri"] = f"{checkpoint['uri'].rstrip('/')}/{name}"
    spec["checkpoint"] = checkpoint
    per = study.spec.perRun
    if per.validations or per.checkpoints:
        steps = _steps(spec)
        if per.validations:
            spec["validation"] = {
                **spec["validation"],
                "interval": max(1, steps // per.validations),
            }
        if per.checkpoints:
            spec["checkpoint"]["interval"] = max(1, steps // per.checkpoints)
    return spec


def _steps(spec: dict[str, Any]) -> int:
    from diffar.trainer.plan import total_steps

    t = spec["training"]
    steps = total_steps(
        spec["data"]["uniqueTokens"], spec["data"]["epochs"], spec["model"]["seqLen"],
        t["globalBatch"],
    )  # fmt: skip
    return min(steps, t["maxSteps"]) if t.get("maxSteps") else steps


def child_body(study: Study, point: GridPoint, name: str) -> dict[str, Any]:
    labels = {
        **study_labels(study, "run"),
        LABEL_GRID_HASH: point.digest(),
        "diffar.io/objective": point.objective,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": OBJECTIVE_KIND[point.objective],
        "metadata": {
            "name": name,
            "namespace": study.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(study)],
        },
        "spec": child_spec(study, point, name),
    }


def plan(study: Study, *, local: bool = False) -> list[Child]:
    """Every child of the study, in grid order; SpecError lists what no child could run with."""
    from diffar.trainer.sizing import count_parameters

    children: list[Child] = []
    problems: list[str] = []
    for point in grid_points(study.spec):
        name = child_name(study.name, point)
        body = child_body(study, point, name)
        try:
            run = Run.from_body(body)
        except SpecError as e:
            problems += [f"{name}: {p}" for p in e.problems]
            continue
        found = validate(run, local=local)
        if found:
            problems += [f"{name}: {p}" for p in found]
            continue
        params = count_parameters(train_config(run).model)
        children.append(Child(point, name, run.kind.kind, body, params))
    names = [c.name for c in children]
    if len(set(names)) != len(names):  # a hash collision of 40 bits inside one study
        problems.append("two grid points map to one child name; rename the study")
    if study.spec.fit.enabled and study.spec.fit.points == "validationCurve" and not local:
        problems.append(
            "spec.fit.points validationCurve needs each child's validation log, which only "
            "`diffar run --local` keeps; use final on a cluster"
        )
    if problems:
        raise SpecError(_grouped(problems))
    return children


def _grouped(problems: list[str]) -> list[str]:
    """'<child>: <problem>' lines, one per distinct problem: a template mistake is the same
    mistake in every child."""
    by_problem: dict[str, list[str]] = {}
    for line in problems:
        child, sep, problem = line.partition(": ")
        if not sep or not child.replace("-", "").isalnum():
            child, problem = "", line
        by_problem.setdefault(problem, []).append(child)
    out = []
    for problem, names in by_problem.items():
        names = [n for n in names if n]
        if not names:
            out.append(problem)
        elif len(names) == 1:
            out.append(f"{names[0]}: {problem}")
        else:
            out.append(f"{problem} ({names[0]} and {len(names) - 1} other children)")
    return out[:8] + ([f"... and {len(out) - 8} more"] if len(out) > 8 else [])


# ------------------------------------------------------------------------------ the fit's input


def fit_points(children: list[Child], losses: dict[str, float]) -> list[dict[str, Any]]:
    """One point per child with a loss: (objective, params, U, epochs, loss)."""
    return [
        {
            "objective": c.point.objective,
            "params": c.params,
            "unique_tokens": c.point.unique_tokens,
            "epochs": c.point.epochs,
            "loss": losses[c.name],
            "source": c.name,
        }
        for c in children
        if c.name in losses
    ]


def fit_input(study: Study, points: list[dict[str, Any]]) -> dict[str, Any]:
    """fit.json: what `diffar study-fit` reads (its model: `study_fit.FitInput`)."""
    f = study.spec.fit
    at = f.criticalComputeAt or study.spec.grid.uniqueTokens
    return {
        "points": points,
        "unique_tokens": [float(u) for u in at],
        "fixed": {"ar": f.fixed.ar.as_dict(), "mdm": f.fixed.mdm.as_dict()},
        "bootstrap": f.bootstrap,
        "seed": f.seed,
    }


def fit_hash(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:8]


def fittable(study: Study, points: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(objectives with enough points to fit, one line per objective without)."""
    from diffar.operator.study_api import FIT_PARAMS

    ok, short = [], []
    fixed = {"ar": study.spec.fit.fixed.ar.as_dict(), "mdm": study.spec.fit.fixed.mdm.as_dict()}
    for obj in study.spec.grid.objectives:
        n = sum(p["objective"] == obj for p in points)
        need = len([p for p in FIT_PARAMS if p not in fixed[obj]]) + 1
        if n >= need:
            ok.append(obj)
        else:
            short.append(f"{obj}: {n} points for {need - 1} free constants (needs {need})")
    return ok, short


def fit_job_name(study: Study, digest: str) -> str:
    return f"{study.name}-fit-{digest}"


def build_fit_objects(study: Study, doc: dict[str, Any], digest: str) -> list[dict[str, Any]]:
    """ConfigMap + Job `<study>-fit-<hash>`: `diffar study-fit` in the evaluator image (numpy,
    scipy), its compact result in the container's termination message."""
    name = fit_job_name(study, digest)
    t = study.spec.template
    meta = {
        "name": name,
        "namespace": study.namespace,
        "labels": study_labels(study, "fit"),
        "annotations": {"diffar.io/fit-input": digest},
        "ownerReferences": [owner_reference(study)],
    }
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": copy.deepcopy(meta),
        "data": {FIT_JSON: json.dumps(doc, indent=1, sort_keys=True) + "\n"},
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "containers": [
            {
                "name": FIT_CONTAINER,
                "image": t.images.evaluator,
                "imagePullPolicy": t.images.pullPolicy,
                "command": ["diffar"],
                "args": ["study-fit", "--config", f"{FIT_DIR}/{FIT_JSON}"],
                "env": [
                    {"name": "DIFFAR_TERMINATION_LOG", "value": TERMINATION_LOG},
                    {"name": "OMP_NUM_THREADS", "value": "1"},
                ],
                "resources": {
                    "requests": {"cpu": "1", "memory": "1Gi"},
                    "limits": {"memory": "2Gi"},
                },
                "volumeMounts": [{"name": "fit", "mountPath": FIT_DIR, "readOnly": True}],
                "terminationMessagePath": TERMINATION_LOG,
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
        "volumes": [{"name": "fit", "configMap": {"name": name}}],
    }
    if t.images.pullSecrets:
        pod["imagePullSecrets"] = [{"name": n} for n in t.images.pullSecrets]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": copy.deepcopy(meta),
        "spec": {
            "backoffLimit": 1,
            # The bootstrap of a large grid takes minutes on one core; an hour means a bug.
            "activeDeadlineSeconds": 3600,
            "template": {"metadata": {"labels": study_labels(study, "fit")}, "spec": pod},
        },
    }
    return [cm, job]


# ------------------------------------------------------------------------------ state machine


@dataclass
class Observed:
    """What the API says: each child by name (None: absent), the fit Job of the current input
    (None: absent) and, once it ended, its parsed result or its failure message."""

    children: dict[str, dict | None] = field(default_factory=dict)
    fit_job: dict | None = None
    fit_result: dict | None = None
    fit_failure: str | None = None


@dataclass
class StudyDecision:
    create: list[dict] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")


def child_phase(study: Study, body: dict | None) -> tuple[str, str | None]:
    """(phase, failure message) of a child as the study counts it."""
    if body is None:
        return "NotCreated", None
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    if study.uid != PLACEHOLDER_UID and not any(r.get("uid") == study.uid for r in refs):
        return "Failed", "a run of this name exists and is not this study's; delete or rename it"
    st = body.get("status") or {}
    phase = st.get("phase") or "Pending"
    return phase, (st.get("message") or st.get("reason")) if phase == "Failed" else None


def best_loss(body: dict | None) -> float | None:
    results = ((body or {}).get("status") or {}).get("results") or {}
    loss = results.get("valLoss")
    return float(loss) if isinstance(loss, int | float) else None


def decide(
    study: Study,
    observed: Observed,
    now: datetime,
    *,
    prev: dict[str, Any] | None = None,
    children: list[Child] | None = None,
) -> StudyDecision:
    """The next step of a study whose spec parsed. `children`: `plan(study)` when the caller
    has it (raises SpecError otherwise, which the caller reports as InvalidSpec)."""
    from diffar.operator.status import rfc3339

    prev = dict(prev or {})
    d = StudyDecision()
    children = plan(study) if children is None else children
    rows, active, failed, succeeded, losses = [], 0, [], 0, {}
    for c in children:
        body = observed.children.get(c.name)
        phase, message = child_phase(study, body)
        loss = best_loss(body) if phase == "Succeeded" else None
        if phase == "Succeeded":
            succeeded += 1
            if loss is not None:
                losses[c.name] = loss
        elif phase == "Failed":
            failed.append(c.name)
        elif phase != "NotCreated":
            active += 1
        rows.append(
            {
                "name": c.name,
                "kind": c.kind,
                "objective": c.point.objective,
                "model": c.point.model.label,
                "params": c.params,
                "uniqueTokens": c.point.unique_tokens,
                "epochs": c.point.epochs,
                "phase": phase,
                **({"bestLoss": loss} if loss is not None else {}),
                **({"message": message[:500]} if message else {}),
            }
        )
    waiting = [c for c, r in zip(children, rows, strict=True) if r["phase"] == "NotCreated"]
    slots = max(0, study.spec.maxConcurrent - active)
    for c in waiting[:slots]:
        d.create.append(copy.deepcopy(c.body))
        d.events.append(("Normal", "ChildCreated", f"created {c.kind} {c.name}"))
    newly_failed = [n for n in failed if n not in (prev.get("failedChildren") or [])]
    for n in newly_failed:
        d.events.append(("Warning", "ChildFailed", f"{n} failed; it is reported, not retried"))

    status: dict[str, Any] = {
        "observedGeneration": study.generation,
        "counts": {
            "total": len(children),
            "waiting": len(waiting) - len(d.create),
            "active": active + len(d.create),
            "succeeded": succeeded,
            "failed": len(failed),
        },
        "summary": f"{succeeded}/{len(children)} succeeded"
        + (f", {len(failed)} failed" if failed else ""),
        "children": rows,
        "failedChildren": failed,
        "startTime": prev.get("startTime") or rfc3339(now),
    }
    for keep in ("fit", "completionTime"):
        if prev.get(keep) is not None:
            status[keep] = prev[keep]

    def finish(phase: str, reason: str, message: str) -> StudyDecision:
        status.update(phase=phase, reason=reason, message=message)
        if phase in ("Succeeded", "Failed"):
            status["completionTime"] = prev.get("completionTime") or rfc3339(now)
            if prev.get("phase") != phase:
                d.events.append(("Normal" if phase == "Succeeded" else "Warning", reason, message))
        else:
            status.pop("completionTime", None)
        d.status = status
        return d

    if waiting or active:
        done = succeeded + len(failed)
        return finish(
            "Running" if done or active or d.create else "Pending",
            "ChildrenRunning",
            f"{done}/{len(children)} children finished, {status['counts']['active']} running, "
            f"{status['counts']['waiting']} waiting (maxConcurrent {study.spec.maxConcurrent})",
        )
    if not study.spec.fit.enabled:
        if succeeded:
            return finish("Succeeded", "ChildrenFinished", status["summary"])
        return finish("Failed", "AllChildrenFailed", "every child failed")
    points = fit_points(children, losses)
    ok, short = fittable(study, points)
    if not ok:
        return finish(
            "Failed", "TooFewResults", "cannot fit: " + "; ".join(short) + f" ({status['summary']})"
        )
    doc = fit_input(study, [p for p in points if p["objective"] in ok])
    digest = fit_hash(doc)
    prev_fit = prev.get("fit") or {}
    if prev_fit.get("inputHash") == digest and prev.get("phase") == "Succeeded":
        return finish("Succeeded", prev.get("reason") or "Fitted", prev.get("message") or "")
    if observed.fit_result is not None:
        status["fit"] = {
            **fit_status(observed.fit_result),
            "job": fit_job_name(study, digest),
            "inputHash": digest,
        }
        note = f"; not fitted: {'; '.join(short)}" if short else ""
        return finish("Succeeded", "Fitted", f"law fitted to {len(doc['points'])} points{note}")
    if observed.fit_failure is not None:
        return finish("Failed", "FitFailed", observed.fit_failure[-1000:])
    if observed.fit_job is None:
        d.create += build_fit_objects(study, doc, digest)
        d.events.append(("Normal", "FitStarted", f"fitting {len(doc['points'])} points"))
    return finish("Fitting", "FitRunning", f"fitting {len(doc['points'])} points ({', '.join(ok)})")


def fit_status(result: dict[str, Any]) -> dict[str, Any]:
    """`diffar study-fit`'s compact result -> status.fit (validated by the status model)."""
    from diffar.operator.study_api import StudyFit

    fit: dict[str, Any] = {}
    for obj in ("ar", "mdm"):
        r = result.get(obj)
        if not isinstance(r, dict):
            continue
        fit[obj] = {
            "values": r.get("values") or {},
            "stderr": r.get("stderr") or {},
            "identified": r.get("identified") or {},
            "fixed": sorted(r.get("fixed") or []),
            "points": int(r.get("points") or 0),
            "rmseLogLoss": r.get("rmse_log_loss"),
        }
    fit["criticalCompute"] = [
        {"uniqueTokens": c["unique_tokens"], **({"flops": c["flops"]} if c.get("flops") else {})}
        for c in result.get("c_crit") or []
    ]
    law = result.get("c_crit_law")
    if isinstance(law, dict):
        fit["criticalComputeLaw"] = {
            "exponent": law["exponent"],
            "coefficient": law["coefficient"],
        }
    return StudyFit.model_validate(fit).model_dump(mode="json", exclude_none=True)


def invalid_status(study_generation: int, prev: dict[str, Any], problems: list[str]) -> dict:
    status = {k: v for k, v in prev.items() if k != "kopf"}
    status.update(
        phase="Failed",
        reason="InvalidSpec",
        message="; ".join(problems)[:4000],
        observedGeneration=study_generation,
    )
    return StudyStatus.model_validate(status).model_dump(mode="json", exclude_none=True)


def render_study(manifest: dict[str, Any], *, namespace: str | None = None) -> list[dict]:
    """`diffar render study.yaml`: the child runs the operator would create, in grid order."""
    study = Study.from_body(manifest, namespace=namespace)
    return [c.body for c in plan(study)]
