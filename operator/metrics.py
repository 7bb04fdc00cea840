"""The operator's own Prometheus metrics (served on --metrics-port, 9401 by default).

- `diffar_operator_runs{phase, objective}`: runs this operator sees, by phase and objective.
- `diffar_operator_reconcile_errors_total{kind}`: reconciles that raised.
- `diffar_operator_reconcile_seconds{kind}`: reconcile latency.
- `diffar_operator_children_created_total{kind}`: ConfigMaps, PyTorchJobs and Jobs created.
"""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from diffar.operator.api import PHASES


class RunsCollector:
    """Counts runs by (phase, objective) from the last status each run was given."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str, str], tuple[str, str]] = {}

    def set(self, key: tuple[str, str, str], phase: str, objective: str) -> None:
        with self._lock:
            self._runs[key] = (phase, objective)

    def forget(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            self._runs.pop(key, None)

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            values = list(self._runs.values())
        counts = {(p, o): 0 for p in PHASES for o in ("ar", "mdm")}
        for value in values:
            counts[value] = counts.get(value, 0) + 1
        return counts

    def collect(self):
        family = GaugeMetricFamily(
            "diffar_operator_runs", "Runs by phase and objective", labels=["phase", "objective"]
        )
        for (phase, objective), n in sorted(self.counts().items()):
            family.add_metric([phase, objective], n)
        yield family


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.runs = RunsCollector()
        registry.register(self.runs)
        self.reconcile_errors = Counter(
            "diffar_operator_reconcile_errors",
            "Reconciles that raised an error",
            ["kind"],
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "diffar_operator_reconcile_seconds",
            "Reconcile latency",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.children_created = Counter(
            "diffar_operator_children_created",
            "Children created",
            ["kind"],
            registry=registry,
        )


_metrics: OperatorMetrics | None = None
_lock = threading.Lock()


def get() -> OperatorMetrics:
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = OperatorMetrics()
        return _metrics
