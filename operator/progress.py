"""Training progress: read from rank 0's Prometheus endpoint through the master's Service.

Choice (issue 5): the operator scrapes `http://<run>-train-master-0.<namespace>.svc:9400/metrics`
(the headless Service the training operator creates for the Master replica; the trainer serves
`diffar_train_*` metrics on port 9400 on rank 0) on a timer while the run is Training. It needs
no store credentials and no write path from the trainer, and the same endpoint feeds Prometheus.
The URL is a template (DIFFAR_METRICS_URL_TEMPLATE; fields job, run, namespace, port) so an
installation behind a proxy, or a test, can point elsewhere. A failed scrape keeps the last
progress: it is an estimate, never a reason to fail a run.
"""

from __future__ import annotations

import math
import urllib.request

from diffar.operator.runs import METRICS_PORT, Run, Settings

METRICS = {
    "diffar_train_step": "step",
    "diffar_train_loss": "loss",
    "diffar_train_tokens_seen_total": "tokens_seen",
    "diffar_train_tokens_seen": "tokens_seen",
    "diffar_train_epoch": "epoch",
}


def metrics_url(run: Run, settings: Settings) -> str:
    return settings.metrics_template().format(
        job=run.train_job_name, run=run.name, namespace=run.namespace, port=METRICS_PORT
    )


# A trainer's exposition is a few KiB; anything larger is not one (and is not read into memory).
MAX_BYTES = 1 << 20


def parse_metrics(text: str) -> dict[str, float]:
    """The diffar_train_* samples of a Prometheus text exposition, by progress field.

    Only finite values: a diverged run exposes NaN or Inf loss, which JSON (and so the status
    PATCH) cannot carry; the field is then left at its last finite value."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = METRICS.get(sample.name)
            if key and key not in out and math.isfinite(sample.value):
                out[key] = sample.value
    return out


def scrape(url: str, timeout: float = 5.0, max_bytes: int = MAX_BYTES) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(max_bytes + 1)
    except (OSError, ValueError):
        return None
    if len(body) > max_bytes:
        return None
    text = body.decode("utf-8", "replace")
    try:
        sample = parse_metrics(text)
    except ValueError:
        return None
    return sample if "step" in sample else None
