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


def parse_metrics(text: str) -> dict[str, float]:
    """The diffar_train_* samples of a Prometheus text exposition, by progress field."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = METRICS.get(sample.name)
            if key and key not in out:
                out[key] = sample.value
    return out


def scrape(url: str, timeout: float = 5.0) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    try:
        sample = parse_metrics(text)
    except ValueError:
        return None
    return sample if "step" in sample else None
