"""promtool over every PromQL expression of the chart: the dashboards' panel queries (Grafana's
variables replaced by sample values) and the PrometheusRule's alerts (rendered with every option
on). Used by tests/deploy/test_dashboards.py and, as a script, by `make lint`:

    python tests/deploy/promql_lint.py [--helm .tools/bin/helm] [--promtool promtool]

Exit status 0 when promtool accepts them all; promtool's complaint and 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "diffar"
DASHBOARDS = CHART / "dashboards"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
# Grafana's built-in variables, replaced by sample values before promtool parses an expression;
# the dashboard's own variables become ".*" (they are used in regex matchers).
GRAFANA_VARS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out += p.get("panels") or []
    return out


def expressions(d: dict) -> list[str]:
    return [t["expr"] for p in panels(d) for t in p.get("targets") or []]


def variable_queries(d: dict) -> list[str]:
    return [v["query"]["query"] for v in d["templating"]["list"] if v["type"] == "query"]


def substitute(expr: str) -> str:
    """Grafana variables -> sample values, so the expression is plain PromQL."""

    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return GRAFANA_VARS.get(name, ".*")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def dashboard_rules(exprs: list[str]) -> dict:
    """A rules file with one recording rule per expression (promtool parses rule files)."""
    rules = [
        {"record": f"diffar:dashboard_check:{i}", "expr": substitute(e)}
        for i, e in enumerate(exprs)
    ]
    return {"groups": [{"name": "dashboards", "rules": rules}]}


def alert_groups(helm: str) -> list[dict]:
    out = subprocess.run(
        [helm, "template", "diffar", str(CHART), "--values", str(ALL_OPTIONS)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (rule,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def promtool_check(promtool: str, rules: dict) -> subprocess.CompletedProcess:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(rules, f, sort_keys=False)
    try:
        return subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    finally:
        Path(f.name).unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="promtool over the chart's PromQL")
    parser.add_argument("--helm", default=str(ROOT / ".tools" / "bin" / "helm"))
    parser.add_argument("--promtool", default=shutil.which("promtool") or "promtool")
    args = parser.parse_args(argv)
    exprs = [e for p in sorted(DASHBOARDS.glob("*.json")) for e in expressions(load(p))]
    failed = False
    for what, rules in (
        (f"{len(exprs)} dashboard expressions", dashboard_rules(exprs)),
        ("the PrometheusRule's alerts", {"groups": alert_groups(args.helm)}),
    ):
        proc = promtool_check(args.promtool, rules)
        ok = proc.returncode == 0
        failed |= not ok
        print(f"promql-lint: {what}: {'ok' if ok else 'FAILED'}")
        if not ok:
            print(proc.stdout + proc.stderr, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
