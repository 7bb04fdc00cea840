"""The deployment docs say what the code does: the step counts of the paper's runs, and every
chart value they name exists."""

from __future__ import annotations

import re

import pytest

from diffar.operator.runs import Run, planned_steps

from .conftest import CHART, ROOT, load_yaml

DOCS = [ROOT / "docs" / n for n in ("install.md", "dashboards.md", "troubleshooting.md")]
VALUE_ROOTS = (
    "operator",
    "metrics",
    "dashboards",
    "pushgateway",
    "runDefaults",
    "rbac",
    "image",
    "trainingRuntime",
)


def value_paths(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        path = f"{prefix}{k}"
        out.add(path)
        if isinstance(v, dict):
            out |= value_paths(v, f"{path}.")
    return out


def test_docs_exist():
    for doc in DOCS:
        assert doc.is_file(), doc


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_chart_values_exist(doc):
    known = value_paths(load_yaml(CHART / "values.yaml"))
    text = doc.read_text()
    named = set(re.findall(rf"`((?:{'|'.join(VALUE_ROOTS)})\.[A-Za-z.]+)", text))
    named |= set(re.findall(rf"--set(?:-json)? '?((?:{'|'.join(VALUE_ROOTS)})\.[A-Za-z.]+)", text))
    assert named, doc.name
    assert named - known == set()


def test_install_step_table_matches_the_operator():
    text = (ROOT / "docs" / "install.md").read_text()
    rows = re.findall(
        r"^\| `([\w-]+\.yaml)`(?:, `([\w-]+\.yaml)`)? \|.*\| ([\d,]+)(?: / ([\d,]+))? \|$",
        text,
        re.M,
    )
    rows += re.findall(r"^\| `([\w-]+\.yaml)`, `([\w-]+\.yaml)` \|.*\| ([\d,]+) \(", text, re.M)
    checked = 0
    for first, second, steps, steps2 in [(*r, "") if len(r) == 3 else r for r in rows]:
        names = [first, second] if second else [first]
        counts = [steps, steps2 or steps]
        for name, count in zip(names, counts, strict=False):
            run = Run.from_body(load_yaml(ROOT / "examples" / name))
            assert planned_steps(run) == int(count.replace(",", "")), name
            checked += 1
    assert checked >= 8
