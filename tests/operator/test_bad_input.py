"""Bad input: the corpus of tests/operator/badinput_corpus.py, each case refused with a clear
message by every layer, none creating a PyTorchJob.

Every case goes through both layers and they must agree: the generated CRD (its schema and CEL
rules via `diffar.operator.schemacheck`, which matches patterns with RE2 as the API server does)
and the pydantic models with the operator's validation (what `diffar render` and the operator
run). Cases only the operator can check are admitted by the CRD and refused by render; valid edge
cases are admitted by both. Live, every case is applied with kubectl to a real API server while
the operator runs: tests/cluster/test_bad_input_live.py.
"""

from __future__ import annotations

import json
import re

import pytest

from diffar.operator import schemacheck, status
from diffar.operator.builders import render as render_children
from diffar.operator.runs import Run, Settings, SpecError, transition_problems, validate

from .badinput_corpus import CASES, CLASSES, as_json, manifest


def _text(errors: list[str]) -> str:
    """Errors as one string, list indices as path segments (`a[0]` and `a.0` alike)."""
    return re.sub(r"\[(\d+)\]", r".\1", " ".join(errors))


def crd_verdict(case: dict, crds: dict) -> list[str]:
    m = manifest(case)
    old = manifest(case, old=True) if "old" in case else None
    return schemacheck.admit(crds[m["kind"]], m, old)


def render_verdict(case: dict) -> list[str]:
    """What `diffar render` (and the operator) say: parse, validate, and for updates the
    transition rules' mirror."""
    try:
        run = Run.from_body(manifest(case))
        problems = validate(run)
        if "old" in case:
            problems += transition_problems(Run.from_body(manifest(case, old=True)).spec, run.spec)
    except SpecError as e:
        problems = e.problems
    return problems


BAD = [c for c in CASES if c["layer"] != "accept"]
CREATES = [c for c in BAD if "old" not in c]


def test_there_are_enough_cases():
    names = [c["name"] for c in CASES]
    assert len(set(names)) == len(names)
    assert len(BAD) >= 80
    assert {c["cls"] for c in CASES} == set(CLASSES)
    json.loads(as_json())  # plain data, for kubectl against a real API server


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_crd_and_render_give_the_same_verdict(case, run_crds):
    crd = crd_verdict(case, run_crds)
    render = render_verdict(case)
    field = case["field"]
    if case["layer"] == "schema":
        assert crd, "the CRD admitted it"
        assert render, "render accepted what the CRD refuses"
        assert field in _text(crd), crd
        assert field in _text(render), render
        assert all("\n" not in p and "Traceback" not in p for p in render)
    elif case["layer"] == "operator":
        assert crd == [], "the CRD refused what only the operator should check"
        assert field in "; ".join(render), render
    else:
        assert crd == [] and render == [], (crd, render)
        render_children(Run.from_body(manifest(case)), Settings())


@pytest.mark.parametrize("case", CREATES, ids=[c["name"] for c in CREATES])
def test_the_state_machine_creates_nothing(case):
    body = manifest(case)
    body["metadata"]["uid"] = "u"
    d = status.decide(body, status.Observed(), Settings(), status.datetime.now(status.UTC))
    assert d.create == [] and d.phase == "Failed" and d.status["reason"] == "InvalidSpec"
    json.dumps(d.status, allow_nan=False)
