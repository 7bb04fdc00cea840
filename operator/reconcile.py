"""One reconcile of one run: observe the children, `status.decide`, act, write the status.

This is the only place that writes a run's status (one merge patch of the status subresource,
only when it changed). It is level-triggered and idempotent: children have deterministic names
and creation tolerates 409 Conflict, so concurrent reconciles and operator restarts never
duplicate anything. A per-run lock serialises reconciles of the same run inside one operator.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime

from diffar.operator import progress as progress_mod
from diffar.operator import status as status_mod
from diffar.operator.builders import LABEL_RUN
from diffar.operator.kube import ApiError, Kube
from diffar.operator.runs import Run, Settings, SpecError

log = logging.getLogger("diffar.operator")

_locks: dict[tuple[str, str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(key: tuple[str, str, str]) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def forget(key: tuple[str, str, str]) -> None:
    with _locks_guard:
        _locks.pop(key, None)


def eval_termination_message(kube: Kube, namespace: str, job_name: str) -> str | None:
    """The evaluator container's termination message, from the Job's newest finished pod."""
    pods = kube.list("Pod", namespace, label_selector=f"job-name={job_name}")
    pods.sort(key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", reverse=True)
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != "evaluator":
                continue
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if terminated.get("message"):
                return terminated["message"]
    return None


def observe(kube: Kube, body: dict, *, scrape: bool, settings: Settings) -> status_mod.Observed:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    obs = status_mod.Observed(
        config_map=kube.get("ConfigMap", ns, f"{name}-config"),
        train_job=kube.get("PyTorchJob", ns, f"{name}-train"),
        eval_job=kube.get("Job", ns, f"{name}-eval"),
    )
    if obs.eval_job is not None:
        state, _ = status_mod.eval_state(obs.eval_job)
        if state in ("Complete", "Failed"):
            message = eval_termination_message(kube, ns, f"{name}-eval")
            if state == "Complete":
                obs.eval_results = status_mod.parse_results(message)
            else:
                obs.eval_message = (message or "")[-2000:] or None
    if scrape and obs.train_job is not None:
        state, _ = status_mod.train_state(obs.train_job)
        if state in ("Running", "Restarting"):
            try:
                run = Run.from_body(body)
            except SpecError:
                run = None
            if run is not None:
                obs.progress = progress_mod.scrape(progress_mod.metrics_url(run, settings))
    return obs


def post_event(kube: Kube, body: dict, type_: str, reason: str, message: str) -> None:
    meta = body["metadata"]
    now = status_mod.rfc3339(datetime.now(UTC))
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
            "namespace": meta["namespace"],
        },
        "involvedObject": {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": str(reason),
        "message": message[:1024],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "source": {"component": "diffar-operator"},
        "reportingComponent": "diffar.io/operator",
    }
    try:
        kube.create(event)
    except Exception as e:  # events are best-effort
        log.warning("could not post event %s for %s: %s", reason, meta["name"], e)


def reconcile(
    kube: Kube,
    kind: str,
    namespace: str,
    name: str,
    settings: Settings,
    *,
    scrape: bool = False,
    metrics=None,
    now: datetime | None = None,
) -> status_mod.Decision | None:
    started = time.monotonic()
    key = (kind, namespace, name)
    try:
        with _lock(key):
            decision = _reconcile(kube, kind, namespace, name, settings, scrape=scrape, now=now)
    except Exception:
        if metrics is not None:
            metrics.reconcile_errors.labels(kind).inc()
        raise
    finally:
        if metrics is not None:
            metrics.reconcile_seconds.labels(kind).observe(time.monotonic() - started)
    if metrics is not None and decision is not None:
        metrics.runs.set(
            key, decision.status.get("phase") or "Pending", decision.status.get("objective") or ""
        )
        for obj in decision.create:
            metrics.children_created.labels(obj["kind"]).inc()
    return decision


def api_message(error: ApiError) -> str:
    """The API server's own one-line explanation (a metav1.Status message), else the reason."""
    try:
        return json.loads(error.body).get("message") or error.reason
    except (ValueError, AttributeError):
        return error.reason or error.body[:300]


def report_forbidden(kube: Kube, body: dict, error: ApiError, now: datetime) -> None:
    """A 403 is a missing RBAC rule, which no retry fixes: say so on the run (the Ready
    condition and a Warning Event, once per distinct message) and in the log, then let the
    caller's retry carry on, so the run recovers by itself once the rule is granted."""
    message = f"the operator lacks a permission (HTTP 403): {api_message(error)}"
    meta = body["metadata"]
    log.error("%s %s/%s: %s", body.get("kind"), meta["namespace"], meta["name"], message)
    status = dict(body.get("status") or {})
    status.pop("kopf", None)
    if status.get("reason") == "Forbidden" and status.get("message") == message:
        return
    post_event(kube, body, "Warning", "Forbidden", message)
    status["reason"], status["message"] = "Forbidden", message
    status["conditions"] = status_mod.set_condition(
        status.get("conditions") or [],
        "Ready",
        False,
        "Forbidden",
        message,
        meta.get("generation") or 0,
        now,
    )
    try:
        kube.patch(body["kind"], meta["namespace"], meta["name"], {"status": status}, sub="status")
    except ApiError as e:  # the status itself may be what is forbidden: the log has it
        log.error("could not write the status of %s: %s", meta["name"], api_message(e))


def _reconcile(kube, kind, namespace, name, settings, *, scrape, now):
    body = kube.get(kind, namespace, name)
    if body is None or body.get("metadata", {}).get("deletionTimestamp"):
        return None
    now = now or datetime.now(UTC)
    try:
        return _act(kube, body, kind, namespace, name, settings, scrape=scrape, now=now)
    except ApiError as e:
        if e.status == 403:
            report_forbidden(kube, body, e, now)
        raise


def _act(kube, body, kind, namespace, name, settings, *, scrape, now):
    obs = observe(kube, body, scrape=scrape, settings=settings)
    decision = status_mod.decide(body, obs, settings, now)
    for obj in decision.create:
        _, created = kube.create(obj)
        log.info(
            "%s %s/%s: %s %s %s",
            kind,
            namespace,
            name,
            "created" if created else "found",
            obj["kind"],
            obj["metadata"]["name"],
        )
    for child_kind, child_name, patch in decision.patch:
        kube.patch(child_kind, namespace, child_name, patch)
        log.info("%s %s/%s: patched %s %s %s", kind, namespace, name, child_kind, child_name, patch)
    for type_, reason, message in decision.events:
        post_event(kube, body, type_, reason, message)
    old = dict(body.get("status") or {})
    old.pop("kopf", None)
    if decision.status != old:
        kube.patch(kind, namespace, name, {"status": decision.status}, sub="status")
    return decision


def owner_of(child: dict) -> tuple[str, str] | None:
    """(kind, name) of the run that controls a child, from its ownerReferences."""
    from diffar.operator.api import API_VERSION, KINDS

    for ref in (child.get("metadata") or {}).get("ownerReferences") or []:
        if (
            ref.get("apiVersion") == API_VERSION
            and ref.get("kind") in KINDS
            and ref.get("controller")
        ):
            return ref["kind"], ref["name"]
    labels = (child.get("metadata") or {}).get("labels") or {}
    if labels.get(LABEL_RUN) and labels.get("diffar.io/kind") in KINDS:
        return labels["diffar.io/kind"], labels[LABEL_RUN]
    return None
