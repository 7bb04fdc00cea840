"""Evaluation results to a Prometheus Pushgateway (push-add, grouping job=diffar-eval, run=NAME).

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

from diffar.trainer.errors import UserError

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


def push_results(results: dict, gateway: str, timeout: float = 10.0) -> None:
    """Push-add the results' metrics; a failed push is a one-line UserError."""
    from prometheus_client import pushadd_to_gateway

    registry = build_registry(results)
    try:
        pushadd_to_gateway(
            gateway,
            job=JOB,
            grouping_key={"run": str(results.get("run") or "unnamed")},
            registry=registry,
            timeout=timeout,
        )
    except OSError as e:  # URLError, ConnectionError and HTTPError are OSErrors
        where = results.get("results_uri", "results.json")
        raise UserError(
            f"push to Pushgateway {gateway} failed ({e}); results are in {where}"
        ) from None


def _set(gauge, labels: dict, value) -> None:
    if value is not None and value == value:  # no series for missing or NaN values
        gauge.labels(**labels).set(float(value))


def _fmt(value) -> str:
    if value is None:
        return ""
    v = float(value)
    return str(int(v)) if v.is_integer() else f"{v:g}"
