"""Bad input: the corpus of tests/operator/badinput_corpus.py, each case refused with a clear
message by every layer, none creating a PyTorchJob.

Every case goes through both layers and they must agree: the generated CRD (its schema and CEL
rules via `diffar.operator.schemacheck`, which matches patterns with RE2 as the API server does)
and the pydantic models with the operator's validation (what `diffar render` and the operator
run). Cases only the operator can check are admitted by the CRD and refused by render; valid edge
cases are admitted by both. Live, the create cases are applied to the emulator while the real
operator runs: either the API answers 422, or the run ends Failed/InvalidSpec with an Event.
"""

from __future__ import annotations

import json
import re

import pytest
from kopf.testing import KopfRunner

from diffar.operator import schemacheck, status
from diffar.operator.builders import render as render_children
from diffar.operator.kube import ApiError
from diffar.operator.runs import Run, Settings, SpecError, transition_problems, validate

from .badinput_corpus import CASES, CLASSES, as_json, manifest
from .harness import NS


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


def test_rejected_live(operator_env, kube, cluster):
    emu = cluster.emulator
    before = emu.created["pytorchjobs"]
    admitted = []
    for case in CREATES:
        m, layer, text = manifest(case), case["layer"], case["field"]
        try:
            kube.create(m)
        except ApiError as e:
            assert layer == "schema" and e.status == 422, (case["name"], e)
            assert text in _text([e.body]), (case["name"], e.body)
        else:
            assert layer == "operator", f"{case['name']} was admitted"
            admitted.append((m["kind"], m["metadata"]["name"], text))
    assert len(admitted) == sum(1 for c in CREATES if c["layer"] == "operator")
    with KopfRunner(["run", "--standalone", "-A", "-m", "diffar.operator.handlers"]) as runner:
        import time

        deadline = time.monotonic() + 30
        pending = dict.fromkeys(admitted)
        while pending and time.monotonic() < deadline:
            for kind, name, text in list(pending):
                st = kube.get(kind, NS, name).get("status") or {}
                if st.get("phase") == "Failed":
                    assert st["reason"] == "InvalidSpec" and text in st["message"], (name, st)
                    del pending[(kind, name, text)]
            time.sleep(0.05)
        assert not pending, f"not failed in time: {list(pending)}"
        warned = {
            e["involvedObject"]["name"]
            for e in kube.list("Event", NS)
            if e["type"] == "Warning" and e["reason"] == "InvalidSpec"
        }
        assert {name for _, name, _ in admitted} <= warned
    assert runner.exception is None
    assert emu.created["pytorchjobs"] == before
    assert kube.list("PyTorchJob", NS) == []
