"""Evaluation results to a Prometheus Pushgateway (push-add, grouping job=diffar-eval,
namespace=NS, run=NAME).

Metrics (every series also labelled objective, unique_tokens and epochs):

    diffar_eval_loss{estimator,split}              nats per token (nll, elbo, chain_rule_nll)
    diffar_eval_loss_stderr{estimator,split}
    diffar_eval_bits_per_byte{estimator,split}
    diffar_eval_accuracy{task,metric}              acc, acc_norm in [0, 1]
    diffar_eval_accuracy_stderr{task,metric}
    diffar_eval_params, diffar_eval_tokens_seen, diffar_eval_flops
    diffar_eval_last_success_timestamp_seconds

Prometheus must scrape the Pushgateway with `honor_labels: true`, or the pushed job label is
renamed exported_job.
"""

from __future__ import annotations

import os
import sys
import time

JOB = "diffar-eval"
COMMON = ("objective", "unique_tokens", "epochs")


def build_registry(results: dict):
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    common = {
        "objective": str(results.get("objective", "")),
        "unique_tokens": str(results.get("unique_tokens") or ""),
        "epochs": _fmt(results.get("epochs")),
    }

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, [*labels, *COMMON], registry=registry)

    loss = gauge("diffar_eval_loss", "Validation loss, nats per token", ("estimator", "split"))
    loss_se = gauge(
        "diffar_eval_loss_stderr", "Standard error of the validation loss", ("estimator", "split")
    )
    bpb = gauge("diffar_eval_bits_per_byte", "Validation bits per byte", ("estimator", "split"))
    for estimator, e in (results.get("validation") or {}).items():
        labels = {"estimator": estimator, "split": "val", **common}
        _set(loss, labels, e.get("loss"))
        _set(loss_se, labels, e.get("stderr"))
        _set(bpb, labels, e.get("bits_per_byte"))

    acc = gauge("diffar_eval_accuracy", "Downstream task accuracy (0-1)", ("task", "metric"))
    acc_se = gauge(
        "diffar_eval_accuracy_stderr", "Standard error of the task accuracy", ("task", "metric")
    )
    for task, res in (results.get("tasks") or {}).items():
        for metric in ("acc", "acc_norm"):
            if metric in res:
                labels = {"task": task, "metric": metric, **common}
                _set(acc, labels, res[metric])
                _set(acc_se, labels, res.get(f"{metric}_stderr"))

    for key, doc in (
        ("params", "Model parameters"),
        ("tokens_seen", "Training tokens seen"),
        ("flops", "Training FLOPs"),
    ):
        _set(gauge(f"diffar_eval_{key}", doc), common, results.get(key))
    gauge(
        "diffar_eval_last_success_timestamp_seconds", "When this evaluation last finished"
    ).labels(**common).set_to_current_time()
    return registry


def grouping_key(results: dict, namespace: str | None = None) -> dict[str, str]:
    """namespace and run: the operator deletes exactly this group when the run is deleted, and
    same-named runs of two namespaces never overwrite each other. The namespace is the pod's
    (DIFFAR_NAMESPACE, from the downward API); `local` outside a cluster."""
    ns = namespace or os.environ.get("DIFFAR_NAMESPACE") or "local"
    return {"namespace": ns, "run": str(results.get("run") or "unnamed")}


def push_results(
    results: dict,
    gateway: str,
    timeout: float = 10.0,
    *,
    attempts: int = 4,
    backoff: float = 0.5,
    namespace: str | None = None,
    sleep=time.sleep,
) -> bool:
    """Push-add the results' metrics, retrying with exponential backoff (0.5, 1, 2 s: a
    Pushgateway restart, not an outage). True when pushed. A push that still fails is a warning
    on stderr and False, never an error: the evaluation succeeded and its results.json stays, so
    a Pushgateway outage must neither fail the evaluator Job nor have it rerun."""
    from prometheus_client import pushadd_to_gateway

    registry = build_registry(results)
    key = grouping_key(results, namespace)
    error: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            sleep(backoff * 2 ** (attempt - 1))
        try:
            pushadd_to_gateway(
                gateway, job=JOB, grouping_key=key, registry=registry, timeout=timeout
            )
            return True
        except OSError as e:  # URLError, ConnectionError and HTTPError are OSErrors
            error = e
    where = results.get("results_uri", "results.json")
    print(
        f"warning: push to Pushgateway {gateway} failed after {attempts} attempts ({error}); "
        f"the evaluation succeeded and its results are in {where}",
        file=sys.stderr,
    )
    return False


def _set(gauge, labels: dict, value) -> None:
    if value is not None and value == value:  # no series for missing or NaN values
        gauge.labels(**labels).set(float(value))


def _fmt(value) -> str:
    if value is None:
        return ""
    v = float(value)
    return str(int(v)) if v.is_integer() else f"{v:g}"
