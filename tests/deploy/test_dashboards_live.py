"""The dashboards' queries against a real Prometheus that scrapes the real exporters.

A trainer's `TrainMetrics` (rank 0's exporter) for an AR and an MDM run, the operator's metrics,
and a real Pushgateway holding both runs' evaluation results (pushed by the evaluator's own
`push_results`) are scraped every second by a real Prometheus; the trainer targets get a
`namespace` label as the chart's PodMonitor gives them. Then every dashboard panel query (with the
variables set as a user would) must return data, every variable query must list the runs, and
every alert expression of the chart must evaluate.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
import urllib.request

import pytest
from testsupport.servers import prometheus_stack

from .conftest import ALL_OPTIONS, DASHBOARDS
from .promql_lint import expressions, load, variable_queries

pytestmark = pytest.mark.integration

NS = "research"
RUNS = {"ar-live": "ar", "mdm-live": "mdm"}
VARIABLES = {
    "namespace": NS,
    "run": "ar-live|mdm-live",
    "objective": "ar|mdm",
    "unique_tokens": ".*",
    "datasource": "prometheus",
    "__rate_interval": "20s",
    "__interval": "5s",
    "__range": "1m",
}


def substitute(text: str) -> str:
    import re

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: VARIABLES[m.group(1) or m.group(2)], text)


class Prom:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        return self.get("/api/v1/query", query=promql)["result"]


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    from prometheus_client import CollectorRegistry, start_http_server

    from diffar.evaluator.pushgateway import push_results
    from diffar.operator.metrics import OperatorMetrics
    from diffar.trainer.metrics import StepReport, TrainMetrics

    root = tmp_path_factory.mktemp("prom")
    trainers = {run: TrainMetrics(run, objective, port=0) for run, objective in RUNS.items()}
    operator_registry = CollectorRegistry()
    op = OperatorMetrics(registry=operator_registry)
    op.runs.set(("ARRun", NS, "ar-live"), "Training", "ar")
    op.reconcile_seconds.labels("ARRun").observe(0.01)
    op.reconcile_errors.labels("ARRun")
    op.children_created.labels("PyTorchJob").inc()
    from diffar.operator.study_reconcile import StudyCollector

    studies = StudyCollector()
    law = {"values": {"R_D_star": 30.0, "E": 1.9}, "stderr": {"R_D_star": 2.0, "E": 0.1}}
    studies.set((NS, "paper-u100m"), {"children": [{"phase": "Succeeded"}],
                                      "fit": {"ar": law, "mdm": law}})  # fmt: skip
    operator_registry.register(studies)
    op_server, _ = start_http_server(0, addr="127.0.0.1", registry=operator_registry)
    trainer_targets = [f"127.0.0.1:{m.port}" for m in trainers.values()]
    scrape_configs = [
        {
            "job_name": "trainers",
            "static_configs": [{"targets": trainer_targets, "labels": {"namespace": NS}}],
        },
        {
            "job_name": "operator",
            "static_configs": [{"targets": [f"127.0.0.1:{op_server.server_address[1]}"]}],
        },
    ]
    stop = threading.Event()
    # The feeder thread stops however the fixture ends.
    with prometheus_stack(root, scrape_configs) as stack, contextlib.ExitStack() as cleanup:
        cleanup.callback(stop.set)
        pg_url = stack.pushgateway_url

        def train() -> None:  # both runs take a step every 0.5 s
            step = 0
            while not stop.is_set():
                step += 1
                for m in trainers.values():
                    m.update(
                        StepReport(
                            step=step,
                            total_steps=1000,
                            epoch=step / 100,
                            loss=4.0 - step * 0.001,
                            lr=2e-4,
                            grad_norm=0.5,
                            tokens_seen=step * 524288,
                            tokens_per_second=1e5,
                            mfu=0.4,
                            eta_seconds=100.0,
                        ),
                        new_tokens=524288,
                    )
                    m.last_ckpt.set(time.time())
                stop.wait(0.5)

        thread = threading.Thread(target=train, daemon=True)
        thread.start()
        for run, objective in RUNS.items():
            estimator = "nll" if objective == "ar" else "elbo"
            push_results(
                {
                    "run": run,
                    "objective": objective,
                    "unique_tokens": 100_000_000,
                    "epochs": 50 if objective == "ar" else 500,
                    "validation": {estimator: {"loss": 3.6, "stderr": 0.01, "bits_per_byte": 1.1}},
                    "tasks": {"piqa": {"acc": 0.6, "acc_norm": 0.61}, "sciq": {"acc": 0.66}},
                    "params": 1.4e8,
                    "tokens_seen": 5e9,
                    "flops": 1e19,
                },
                pg_url,
            )
        p = Prom(stack.prometheus_url)
        deadline = time.monotonic() + 60
        ready = "count(count_over_time(diffar_train_step[20s]) >= 4) == 2 and on() count(diffar_eval_loss) == 2 and on() count(diffar_operator_runs) > 0 and on() count(diffar_study_fit_value) > 0"
        while time.monotonic() < deadline and not p.query(ready):
            time.sleep(0.5)
        assert p.query(ready), "Prometheus did not collect the samples in 60 s: " + str(
            [p.query(q) for q in ("count(diffar_train_step)", "count(diffar_eval_loss)")]
        )
        yield p


FILES = sorted(DASHBOARDS.glob("*.json"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_panel_query_returns_data(prom, path):
    empty = []
    for expr in expressions(load(path)):
        if not prom.query(substitute(expr)):
            empty.append(expr)
    assert empty == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_variable_queries_list_the_runs(prom, path):
    import re

    for query in variable_queries(load(path)):
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
        assert m, query
        values = prom.get(
            f"/api/v1/label/{m.group(2)}/values", **{"match[]": substitute(m.group(1))}
        )
        expected = {
            "namespace": {NS},
            "objective": {"ar", "mdm"},
            "run": set(RUNS),
            "unique_tokens": {"100000000"},
        }[m.group(2)]
        assert set(values) == expected, query


def test_run_panels_show_the_right_numbers(prom):
    progress = prom.query(substitute(expressions(load(DASHBOARDS / "run.json"))[0]))
    assert {s["metric"]["run"] for s in progress} == set(RUNS)
    assert all(0 < float(s["value"][1]) < 1 for s in progress)


def test_the_charts_alert_expressions_evaluate(prom, render):
    (rule,) = [o for o in render(ALL_OPTIONS) if o["kind"] == "PrometheusRule"]
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            prom.query(r["expr"])  # a bad label or type is an error here
