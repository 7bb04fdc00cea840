"""Grafana dashboards: structure (a JSON schema), template variables, and every PromQL expression.

No Grafana server runs here: a schema checks what Grafana's dashboard model needs (panels with
positions inside the 24-column grid, a Prometheus datasource through the ${datasource} variable,
targets with refIds and expressions, the namespace/run/objective variables). promtool parses
every expression (Grafana's variables replaced by sample values), and every metric an expression
or a variable query names must be one the code exports.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from .conftest import ALL_OPTIONS, DASHBOARDS, ROOT, run
from .promql_lint import (
    GRAFANA_VARS,
    dashboard_rules,
    expressions,
    load,
    panels,
    variable_queries,
)

FILES = sorted(DASHBOARDS.glob("*.json"))
DS_REF = {
    "type": "object",
    "required": ["type", "uid"],
    "properties": {"type": {"const": "prometheus"}, "uid": {"const": "${datasource}"}},
}
TARGET = {
    "type": "object",
    "required": ["refId", "expr", "datasource"],
    "properties": {
        "refId": {"type": "string", "pattern": "^[A-Z]$"},
        "expr": {"type": "string", "minLength": 1},
        "datasource": DS_REF,
        "legendFormat": {"type": "string"},
        "instant": {"type": "boolean"},
        "range": {"type": "boolean"},
        "format": {"enum": ["time_series", "table", "heatmap"]},
    },
}
GRID = {
    "type": "object",
    "required": ["x", "y", "w", "h"],
    "properties": {
        "x": {"type": "integer", "minimum": 0, "maximum": 23},
        "y": {"type": "integer", "minimum": 0},
        "w": {"type": "integer", "minimum": 1, "maximum": 24},
        "h": {"type": "integer", "minimum": 1},
    },
}
PANEL = {
    "type": "object",
    "required": ["id", "type", "title", "gridPos"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "title": {"type": "string", "minLength": 1},
        "gridPos": GRID,
        "type": {
            "enum": [
                "row",
                "timeseries",
                "stat",
                "gauge",
                "bargauge",
                "barchart",
                "table",
                "text",
                "piechart",
            ]
        },
    },
    "if": {"properties": {"type": {"const": "row"}}},
    "then": {"required": ["panels", "collapsed"]},
    "else": {
        "required": ["datasource", "targets", "fieldConfig", "options", "description"],
        "properties": {
            "datasource": DS_REF,
            "targets": {"type": "array", "minItems": 1, "items": TARGET},
            "fieldConfig": {
                "type": "object",
                "required": ["defaults", "overrides"],
            },
        },
    },
}
VARIABLE = {
    "type": "object",
    "required": ["name", "type", "label"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z_]+$"},
        "type": {"enum": ["datasource", "query", "custom", "constant", "interval"]},
    },
    "allOf": [
        {
            "if": {"properties": {"type": {"const": "query"}}},
            "then": {
                "required": ["datasource", "query", "refresh"],
                "properties": {
                    "datasource": DS_REF,
                    "query": {
                        "type": "object",
                        "required": ["query"],
                        "properties": {"query": {"type": "string", "pattern": r"^label_values\("}},
                    },
                },
            },
        },
        {
            "if": {"properties": {"type": {"const": "datasource"}}},
            "then": {"properties": {"query": {"const": "prometheus"}}},
        },
    ],
}
DASHBOARD = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": [
        "title",
        "uid",
        "schemaVersion",
        "panels",
        "templating",
        "time",
        "tags",
        "description",
    ],
    "properties": {
        "title": {"type": "string", "pattern": "^diffar / "},
        "uid": {"type": "string", "pattern": "^[a-z0-9-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "id": {"type": "null"},
        "tags": {"type": "array", "contains": {"const": "diffar"}},
        "panels": {"type": "array", "minItems": 1, "items": PANEL},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {"list": {"type": "array", "items": VARIABLE}},
        },
    },
}
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (strings, label matchers, grouping lists, range
    and function names are not metrics)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if call or name in PROMQL_KEYWORDS or re.fullmatch(r"\d+e\d+", name):
            continue
        names.add(name)
    return names


def exported_metrics() -> set[str]:
    """Every series name the code exports: trainer (rank 0), evaluator (Pushgateway), operator."""
    from prometheus_client import CollectorRegistry

    from diffar.evaluator.pushgateway import build_registry
    from diffar.operator.metrics import OperatorMetrics
    from diffar.trainer.metrics import METRIC_NAMES

    names = set(METRIC_NAMES)
    results = {
        "run": "r",
        "objective": "mdm",
        "unique_tokens": 100,
        "epochs": 2,
        "validation": {"elbo": {"loss": 3.5, "stderr": 0.01, "bits_per_byte": 1.1}},
        "tasks": {"piqa": {"acc": 0.6, "acc_stderr": 0.01, "acc_norm": 0.61}},
        "params": 1,
        "tokens_seen": 1,
        "flops": 1.0,
    }
    registries = [build_registry(results)]
    operator_registry = CollectorRegistry()
    metrics = OperatorMetrics(registry=operator_registry)
    metrics.reconcile_errors.labels("ARRun").inc()
    metrics.reconcile_seconds.labels("ARRun").observe(0.1)
    metrics.children_created.labels("Job").inc()
    registries.append(operator_registry)
    from diffar.operator.study_reconcile import StudyCollector

    studies = StudyCollector()
    law = {"values": {"R_D_star": 30.0}, "stderr": {"R_D_star": 2.0}}
    studies.set(("ns", "s"), {"children": [{"phase": "Succeeded"}],
                              "fit": {"ar": law, "criticalCompute": [{"uniqueTokens": 1e8, "flops": 1e18}]}})  # fmt: skip
    study_registry = CollectorRegistry()
    study_registry.register(studies)
    registries.append(study_registry)
    for registry in registries:
        for family in registry.collect():
            names |= {s.name for s in family.samples}
    return names


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_metrics()


def test_there_are_the_two_dashboards():
    titles = {load(p)["title"] for p in FILES}
    assert {"diffar / Run", "diffar / Diffusion vs AR"} <= titles
    assert len({load(p)["uid"] for p in FILES}) == len(FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_dashboard_matches_the_schema(path):
    jsonschema.Draft7Validator.check_schema(DASHBOARD)
    jsonschema.validate(load(path), DASHBOARD)


def test_the_schema_is_not_vacuous():
    d = load(FILES[0])
    bad = json.loads(json.dumps(d))
    next(p for p in bad["panels"] if p["type"] != "row")["targets"][0].pop("expr")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, DASHBOARD)
    bad = json.loads(json.dumps(d))
    next(p for p in bad["panels"] if p["type"] != "row")["datasource"]["uid"] = "prom-1"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, DASHBOARD)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_layout_and_ids(path):
    d = load(path)
    ps = panels(d)
    ids = [p["id"] for p in ps]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in ps:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
        refs = [t["refId"] for t in p.get("targets") or []]
        assert len(refs) == len(set(refs)), p["title"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_template_variables(path):
    d = load(path)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert {"datasource", "namespace", "run", "objective"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource"
    # Every $variable an expression or a variable query uses is defined (or is Grafana's).
    used = set()
    for text in expressions(d) + variable_queries(d):
        used |= {a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", text)}
    assert used - set(GRAFANA_VARS) <= set(variables)
    # The run variable depends on namespace and objective (cascading selection).
    run_query = variables["run"]["query"]["query"]
    assert "$namespace" in run_query and "$objective" in run_query


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_metric_is_exported_by_the_code(path, exported):
    d = load(path)
    used = set()
    for expr in expressions(d):
        used |= metric_names(expr)
    for query in variable_queries(d):
        m = re.match(r"label_values\(\s*([a-zA-Z_:][\w:]*)", query)
        assert m, query
        used.add(m.group(1))
    assert used, "no metric found: the extraction is broken"
    assert used - exported == set()


def test_metric_name_extraction():
    expr = 'sum by (run) (rate(diffar_x_total{a=~"b", c="sum(d)"}[5m])) / on (run) diffar_y > 1e-9'
    assert metric_names(expr) == {"diffar_x_total", "diffar_y"}
    assert metric_names("time() - diffar_z") == {"diffar_z"}


def test_dashboards_cover_the_run_signals():
    """The Run dashboard shows what the issue lists: loss, eval loss, lr, tokens/s, MFU, epoch,
    progress, restarts, checkpoint age."""
    d = load(DASHBOARDS / "run.json")
    text = "\n".join(expressions(d))
    for metric in (
        "diffar_train_loss",
        "diffar_train_val_loss",  # the validation curve during training: the paper's figure
        "diffar_eval_loss",
        "diffar_train_lr",
        "diffar_train_tokens_per_second",
        "diffar_train_mfu",
        "diffar_train_epoch",
        "diffar_train_total_steps",
        "diffar_train_last_checkpoint_timestamp_seconds",
    ):
        assert metric in text, metric
    assert "resets(diffar_train_tokens_seen_total" in text
    vs = "\n".join(expressions(load(DASHBOARDS / "diffusion-vs-ar.json")))
    for needle in ("unique_tokens", "epochs", "diffar_eval_accuracy", "diffar_eval_loss"):
        assert needle in vs


def _rules_file(tmp_path: Path, exprs: list[str]) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(dashboard_rules(exprs), sort_keys=False))
    return path


def test_promtool_parses_every_dashboard_expression(promtool, tmp_path):
    exprs = [e for p in FILES for e in expressions(load(p))]
    assert len(exprs) > 20
    path = _rules_file(tmp_path, exprs)
    out = run([promtool, "check", "rules", str(path)]).stdout
    assert f"SUCCESS: {len(exprs)} rules found" in out


def test_promtool_rejects_a_bad_expression(promtool, tmp_path):
    import subprocess

    path = _rules_file(tmp_path, ["sum by (run) (diffar_train_loss"])
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode != 0


def test_promtool_checks_the_charts_alerting_rules(promtool, render, exported, tmp_path):
    (rule,) = [o for o in render(ALL_OPTIONS) if o["kind"] == "PrometheusRule"]
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = run([promtool, "check", "rules", str(path)]).stdout
    assert "SUCCESS" in out
    used = set()
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            used |= metric_names(r["expr"])
    assert used and used - exported == set()


def test_promql_lint_script(helm, promtool):
    """The `make lint` entry point: both checks pass."""
    out = run(
        [
            sys.executable,
            str(ROOT / "tests" / "deploy" / "promql_lint.py"),
            "--helm",
            helm,
            "--promtool",
            promtool,
        ]
    ).stdout
    assert out.count(": ok") == 2, out
