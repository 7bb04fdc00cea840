"""One reconcile of one ScalingStudy: observe its children and fit Job, `study.decide`, act.

Level-triggered and idempotent like the runs' reconcile: children and the fit's objects have
deterministic names and `Kube.create` tolerates 409 Conflict, so a restarted operator or two
racing reconciles never duplicate anything. The only writer of a study's status.

Metrics (served with the operator's, `diffar.operator.metrics`):

- `diffar_study_children{namespace, study, phase}`: children by phase (NotCreated included);
- `diffar_study_fit_value{namespace, study, objective, param}` and
  `diffar_study_fit_stderr{...}`: the fitted constants and their bootstrap standard errors;
- `diffar_study_critical_compute_flops{namespace, study, unique_tokens}`: C_crit per U.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from diffar.operator import study as study_mod
from diffar.operator.kube import Kube
from diffar.operator.reconcile import post_event
from diffar.operator.runs import SpecError
from diffar.operator.study_api import FIT_PARAMS, KIND

log = logging.getLogger("diffar.operator")

_locks: dict[tuple[str, str], threading.Lock] = {}
_guard = threading.Lock()


def _lock(key: tuple[str, str]) -> threading.Lock:
    with _guard:
        return _locks.setdefault(key, threading.Lock())


def forget(key: tuple[str, str]) -> None:
    with _guard:
        _locks.pop(key, None)
    STUDY_METRICS.forget(key)


class StudyCollector:
    """The last status of every study this operator reconciled, as gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._studies: dict[tuple[str, str], dict] = {}

    def set(self, key: tuple[str, str], status: dict) -> None:
        with self._lock:
            self._studies[key] = status

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._studies.pop(key, None)

    def collect(self):
        with self._lock:
            studies = dict(self._studies)
        children = GaugeMetricFamily(
            "diffar_study_children",
            "Children of a ScalingStudy by phase",
            labels=["namespace", "study", "phase"],
        )
        value = GaugeMetricFamily(
            "diffar_study_fit_value",
            "Fitted data-constrained scaling-law constants of a ScalingStudy",
            labels=["namespace", "study", "objective", "param"],
        )
        stderr = GaugeMetricFamily(
            "diffar_study_fit_stderr",
            "Bootstrap standard errors of the fitted constants",
            labels=["namespace", "study", "objective", "param"],
        )
        ccrit = GaugeMetricFamily(
            "diffar_study_critical_compute_flops",
            "Compute where diffusion's best loss drops below AR's, per unique-token budget",
            labels=["namespace", "study", "unique_tokens"],
        )
        for (ns, name), st in sorted(studies.items()):
            phases: dict[str, int] = {}
            for c in st.get("children") or []:
                phases[c.get("phase") or "Pending"] = phases.get(c.get("phase") or "Pending", 0) + 1
            for phase, n in sorted(phases.items()):
                children.add_metric([ns, name, phase], n)
            fit = st.get("fit") or {}
            for obj in ("ar", "mdm"):
                law = fit.get(obj) or {}
                for p in FIT_PARAMS:
                    if (law.get("values") or {}).get(p) is not None:
                        value.add_metric([ns, name, obj, p], law["values"][p])
                    if (law.get("stderr") or {}).get(p) is not None:
                        stderr.add_metric([ns, name, obj, p], law["stderr"][p])
            for c in fit.get("criticalCompute") or []:
                if c.get("flops") is not None:
                    ccrit.add_metric([ns, name, f"{c['uniqueTokens']:.0f}"], c["flops"])
        yield from (children, value, stderr, ccrit)


STUDY_METRICS = StudyCollector()
_registered: set[int] = set()


def register_metrics(registry: CollectorRegistry = REGISTRY) -> None:
    with _guard:
        if id(registry) not in _registered:
            registry.register(STUDY_METRICS)
            _registered.add(id(registry))


def fit_termination_message(kube: Kube, namespace: str, job_name: str) -> str | None:
    """The fit container's termination message, from the Job's newest finished pod."""
    pods = kube.list("Pod", namespace, label_selector=f"job-name={job_name}")
    pods.sort(key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", reverse=True)
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != study_mod.FIT_CONTAINER:
                continue
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if terminated.get("message"):
                return terminated["message"]
    return None


def _job_state(job: dict) -> str:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed"):
            return c["type"]
    return "Running"


def observe(kube: Kube, study: study_mod.Study, children: list[study_mod.Child], prev: dict):
    import json

    obs = study_mod.Observed()
    by_name: dict[str, dict] = {}
    for kind in sorted({c.kind for c in children}):
        selector = f"{study_mod.LABEL_STUDY}={study.name}"
        for item in kube.list(kind, study.namespace, label_selector=selector):
            by_name[item["metadata"]["name"]] = item
    absent = 0
    for c in children:
        obs.children[c.name] = by_name.get(c.name)
        # A same-named run without the study's label (someone else's) is in the way of the
        # next children to create: read those (at most maxConcurrent GETs, not one per child).
        if obs.children[c.name] is None and absent < study.spec.maxConcurrent:
            absent += 1
            obs.children[c.name] = kube.get(c.kind, study.namespace, c.name)
    if all(
        (b or {}).get("status", {}).get("phase") in study_mod.FINISHED
        for b in obs.children.values()
    ):
        losses = {
            c.name: loss
            for c in children
            if (loss := study_mod.best_loss(obs.children[c.name])) is not None
            and study_mod.child_phase(study, obs.children[c.name])[0] == "Succeeded"
        }
        points = study_mod.fit_points(children, losses)
        ok, _ = study_mod.fittable(study, points)
        if ok and study.spec.fit.enabled:
            doc = study_mod.fit_input(study, [p for p in points if p["objective"] in ok])
            name = study_mod.fit_job_name(study, study_mod.fit_hash(doc))
            if (prev.get("fit") or {}).get("job") == name:
                return obs  # fitted already: the status holds the result
            obs.fit_job = kube.get("Job", study.namespace, name)
            if obs.fit_job is not None:
                state = _job_state(obs.fit_job)
                if state in ("Complete", "Failed"):
                    message = fit_termination_message(kube, study.namespace, name)
                    if state == "Complete":
                        try:
                            obs.fit_result = json.loads(message or "")
                        except json.JSONDecodeError:
                            obs.fit_failure = f"the fit Job {name} left no result"
                    else:
                        obs.fit_failure = f"the fit Job {name} failed: {(message or '')[-800:]}"
    return obs


def reconcile_study(
    kube: Kube, namespace: str, name: str, *, now: datetime | None = None
) -> study_mod.StudyDecision | None:
    key = (namespace, name)
    with _lock(key):
        return _reconcile(kube, namespace, name, now or datetime.now(UTC))


def _reconcile(kube: Kube, namespace: str, name: str, now: datetime):
    body = kube.get(KIND, namespace, name)
    if body is None or body.get("metadata", {}).get("deletionTimestamp"):
        return None
    prev = dict(body.get("status") or {})
    prev.pop("kopf", None)
    try:
        study = study_mod.Study.from_body(body)
        children = study_mod.plan(study)
    except SpecError as e:
        status = study_mod.invalid_status(
            int(body["metadata"].get("generation") or 1), prev, e.problems
        )
        decision = study_mod.StudyDecision(status=status)
        if prev.get("reason") != "InvalidSpec":
            decision.events.append(("Warning", "InvalidSpec", str(e)))
    else:
        obs = observe(kube, study, children, prev)
        decision = study_mod.decide(study, obs, now, prev=prev, children=children)
    for obj in decision.create:
        _, created = kube.create(obj)
        log.info(
            "%s %s/%s: %s %s %s", KIND, namespace, name, "created" if created else "found",
            obj["kind"], obj["metadata"]["name"],
        )  # fmt: skip
    for type_, reason, message in decision.events:
        post_event(kube, body, type_, reason, message)
    if decision.status != prev:
        kube.patch(KIND, namespace, name, {"status": decision.status}, sub="status")
    STUDY_METRICS.set((namespace, name), decision.status)
    return decision


def owner_study(child: dict) -> str | None:
    """The study that controls a child run or fit Job, from its ownerReferences."""
    from diffar.operator.api import API_VERSION

    for ref in (child.get("metadata") or {}).get("ownerReferences") or []:
        if (
            ref.get("apiVersion") == API_VERSION
            and ref.get("kind") == KIND
            and ref.get("controller")
        ):
            return ref["name"]
    return ((child.get("metadata") or {}).get("labels") or {}).get(study_mod.LABEL_STUDY)
