"""Push to a real Pushgateway, let a real Prometheus scrape it, read the values back."""

from __future__ import annotations

import json

import pytest
from evalhelpers import save_byte_model, write_alphabet_task, write_byte_dataset

from diffar.operator.cli import main

pytestmark = pytest.mark.integration


def test_eval_pushes_metrics_that_prometheus_scrapes(prometheus_stack, tmp_path):
    data = write_byte_dataset(tmp_path / "val")
    ckpt = save_byte_model(tmp_path / "ckpt", "mdm", data, name="prom-mdm")
    task = write_alphabet_task(tmp_path / "alpha.jsonl", 4)
    rc = main(
        [
            "eval",
            "--model",
            str(ckpt),
            "--tasks",
            f"lambada,{task}",
            "--limit",
            "2",
            "--samples",
            "2",
            "--val-sequences",
            "2",
            "--chain-rule-sequences",
            "1",
            "--no-progress",
            "--pushgateway",
            prometheus_stack.pushgateway_url,
        ]
    )
    assert rc == 0
    results = json.loads((ckpt / "results.json").read_text())

    series = prometheus_stack.wait_for('diffar_eval_loss{run="prom-mdm",estimator="elbo"}')
    assert len(series) == 1
    labels = series[0]["metric"]
    assert labels["job"] == "diffar-eval" and labels["split"] == "val"
    assert labels["objective"] == "mdm" and labels["epochs"] == "3"
    assert labels["unique_tokens"] == str(results["unique_tokens"])
    assert float(series[0]["value"][1]) == pytest.approx(results["validation"]["elbo"]["loss"])

    chain = prometheus_stack.query('diffar_eval_loss{run="prom-mdm",estimator="chain_rule_nll"}')
    assert float(chain[0]["value"][1]) == pytest.approx(
        results["validation"]["chain_rule_nll"]["loss"]
    )
    bpb = prometheus_stack.query('diffar_eval_bits_per_byte{run="prom-mdm",estimator="elbo"}')
    assert float(bpb[0]["value"][1]) == pytest.approx(
        results["validation"]["elbo"]["bits_per_byte"]
    )
    acc = prometheus_stack.query('diffar_eval_accuracy{run="prom-mdm"}')
    got = {(s["metric"]["task"], s["metric"]["metric"]): float(s["value"][1]) for s in acc}
    assert got == {
        ("lambada", "acc"): results["tasks"]["lambada"]["acc"],
        ("alpha", "acc"): results["tasks"]["alpha"]["acc"],
        ("alpha", "acc_norm"): results["tasks"]["alpha"]["acc_norm"],
    }
    ts = prometheus_stack.query('diffar_eval_last_success_timestamp_seconds{run="prom-mdm"}')
    assert float(ts[0]["value"][1]) > 1.7e9
    params = prometheus_stack.query('diffar_eval_params{run="prom-mdm"}')
    assert float(params[0]["value"][1]) == results["params"]


def test_push_add_keeps_other_runs(prometheus_stack):
    from diffar.evaluator.pushgateway import push_results

    for run, loss in (("run-a", 3.5), ("run-b", 3.7)):
        push_results(
            {
                "run": run,
                "objective": "ar",
                "unique_tokens": 100,
                "epochs": 2.5,
                "validation": {"nll": {"loss": loss, "stderr": 0.01, "bits_per_byte": 1.0}},
                "tasks": {},
            },
            prometheus_stack.pushgateway_url,
        )
    # Push-add under per-run grouping keys: the second push leaves the first run's series.
    query = 'diffar_eval_loss{run=~"run-a|run-b",estimator="nll"}'
    prometheus_stack.wait_for(f"count({query}) == 2")
    series = prometheus_stack.query(query)
    assert {s["metric"]["run"]: float(s["value"][1]) for s in series} == {
        "run-a": 3.5,
        "run-b": 3.7,
    }
    assert series[0]["metric"]["epochs"] == "2.5"


def _results(run: str, loss: float) -> dict:
    return {
        "run": run,
        "objective": "ar",
        "unique_tokens": 100,
        "epochs": 1,
        "validation": {"nll": {"loss": loss}},
        "tasks": {},
    }


def _groups(pushgateway_url: str) -> set[tuple[str, str]]:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{pushgateway_url}/api/v1/metrics", timeout=10) as r:
        data = json.load(r)["data"]
    return {
        (g["labels"].get("namespace", ""), g["labels"].get("run", ""))
        for g in data
        if g["labels"].get("job") == "diffar-eval"
    }


def test_same_named_runs_in_two_namespaces_keep_their_own_group(prometheus_stack):
    """The grouping key holds the namespace; the operator's delete removes one group only."""
    from diffar.evaluator.pushgateway import push_results
    from diffar.operator.handlers import delete_pushgateway_group

    url = prometheus_stack.pushgateway_url
    assert push_results(_results("twin", 3.1), url, namespace="team-a")
    assert push_results(_results("twin", 3.9), url, namespace="team-b")
    assert {("team-a", "twin"), ("team-b", "twin")} <= _groups(url)
    key = {"job": "diffar-eval", "namespace": "team-a", "run": "twin"}
    assert delete_pushgateway_group(url, key)
    groups = _groups(url)
    assert ("team-b", "twin") in groups and ("team-a", "twin") not in groups


def test_a_push_is_retried_until_the_pushgateway_is_back(tmp_path):
    """The first attempt finds no Pushgateway; the real one starts during the backoff."""
    import subprocess

    from testsupport.servers import find_binary, free_port, wait_ready

    from diffar.evaluator.pushgateway import push_results

    binary = find_binary("prometheus-pushgateway", "pushgateway", hint="Debian package")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    waits: list[float] = []

    def start_gateway_then_wait(seconds: float) -> None:
        waits.append(seconds)
        if not procs:
            log = tmp_path / "pushgateway.log"
            with open(log, "w") as out:
                procs.append(
                    subprocess.Popen(
                        [
                            binary,
                            f"--web.listen-address=127.0.0.1:{port}",
                            f"--persistence.file={tmp_path / 'pg.data'}",
                        ],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
            wait_ready(f"{url}/-/ready", procs[0], log)

    try:
        assert push_results(
            _results("late", 3.3), url, namespace="ns", sleep=start_gateway_then_wait
        )
        assert waits == [0.5]
        assert ("ns", "late") in _groups(url)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


def test_an_outage_is_a_warning_not_a_failure(capsys):
    from testsupport.servers import free_port

    from diffar.evaluator.pushgateway import push_results

    waits: list[float] = []
    url = f"http://127.0.0.1:{free_port()}"
    assert not push_results(
        {**_results("down", 3.0), "results_uri": "s3://b/r/results.json"}, url, sleep=waits.append
    )
    assert waits == [0.5, 1.0, 2.0]
    err = capsys.readouterr().err
    assert "failed after 4 attempts" in err and "s3://b/r/results.json" in err
