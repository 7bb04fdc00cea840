"""ScalingStudy, the pure parts: expansion, names, concurrency, restart safety, failures, the fit's
wiring, the CRD's admission, and `diffar render` of the paper's study against the real
PyTorchJob CRD."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import yaml

from diffar.operator import schemacheck
from diffar.operator.api import DNS1035, MAX_RUN_NAME
from diffar.operator.builders import render
from diffar.operator.runs import Run, Settings, SpecError, validate
from diffar.operator.study import (
    LABEL_STUDY,
    Observed,
    Study,
    child_name,
    decide,
    fit_input,
    grid_points,
    plan,
    render_study,
)
from diffar.operator.study_fit import FitInput, run_fit

from .conftest import PYTORCHJOB_CRD, ROOT, load_yaml

PAPER = ROOT / "examples" / "study-paper-100m.yaml"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
UID = "11111111-2222-3333-4444-555555555555"


def small_study(**spec_over) -> dict:
    body = {
        "apiVersion": "diffar.io/v1alpha1",
        "kind": "ScalingStudy",
        "metadata": {"name": "grid", "namespace": "research", "uid": UID},
        "spec": {
            "maxConcurrent": 3,
            "grid": {
                "objectives": ["ar", "mdm"],
                "models": [{"preset": "tiny"}, {"name": "w96", "dim": 96, "layers": 2, "heads": 4}],
                "uniqueTokens": [1_000_000, 2_000_000],
                "epochs": [1, 4],
            },
            "template": {
                "model": {"seqLen": 128},
                "data": {"trainUri": "s3://data/train", "valUri": "s3://data/val"},
                "training": {"globalBatch": 32, "microBatch": 4},
                "resources": {"nodes": 1, "gpusPerNode": 4},
                "checkpoint": {"uri": "s3://runs/grid"},
            },
        },
    }
    body["spec"].update(spec_over)
    return body


def child(body: dict, phase: str | None, loss: float | None = None, uid: str = UID) -> dict:
    out = copy.deepcopy(body)
    out["metadata"]["ownerReferences"][0]["uid"] = uid
    status: dict = {}
    if phase:
        status["phase"] = phase
    if loss is not None:
        status["results"] = {"valLoss": loss}
    out["status"] = status
    return out


# ------------------------------------------------------------------------------ expansion


def test_expansion_is_the_whole_grid_with_owned_children():
    study = Study.from_body(small_study())
    children = plan(study)
    assert len(children) == 2 * 2 * 2 * 2
    names = [c.name for c in children]
    assert len(set(names)) == len(names)
    assert names[:2] == ["grid-ar-tiny-u1m-e1", "grid-mdm-tiny-u1m-e1"]
    for c in children:
        assert re.match(DNS1035, c.name) and len(c.name) <= MAX_RUN_NAME
        meta = c.body["metadata"]
        (ref,) = meta["ownerReferences"]
        assert ref == {"apiVersion": "diffar.io/v1alpha1", "kind": "ScalingStudy", "name": "grid",
                       "uid": UID, "controller": True, "blockOwnerDeletion": True}  # fmt: skip
        assert meta["labels"][LABEL_STUDY] == "grid"
        run = Run.from_body(c.body)
        assert validate(run) == []
        assert run.kind.objective == c.point.objective
        assert run.spec.data.uniqueTokens == c.point.unique_tokens
        assert run.spec.checkpoint.uri == f"s3://runs/grid/{c.name}"
        assert c.params > 0
    kinds = {c.point.objective: c.kind for c in children}
    assert kinds == {"ar": "ARRun", "mdm": "DiffusionRun"}
    assert "diffusion" in children[1].body["spec"] and "diffusion" not in children[0].body["spec"]


def test_expansion_is_deterministic():
    a = [c.body for c in plan(Study.from_body(small_study()))]
    b = [c.body for c in plan(Study.from_body(small_study()))]
    assert a == b


def test_long_names_become_a_hash_of_the_grid_point():
    body = small_study()
    body["metadata"]["name"] = "a-very-long-study-name-for-the-grid-xyz"
    study = Study.from_body(body)
    points = grid_points(study.spec)
    names = [child_name(study.name, p) for p in points]
    assert len(set(names)) == len(names)
    for n, p in zip(names, points, strict=True):
        assert len(n) <= MAX_RUN_NAME and re.match(DNS1035, n), n
        assert n.endswith(f"-{p.objective}-{p.digest()}")
    # The hash is a function of the grid point only.
    assert child_name(study.name, points[3]) == names[3]


def test_per_run_intervals_follow_each_childs_length():
    body = small_study(perRun={"validations": 10, "checkpoints": 2})
    for c in plan(Study.from_body(body)):
        steps = Run.from_body(c.body)
        from diffar.operator.runs import planned_steps

        total = planned_steps(steps)
        assert c.body["spec"]["validation"]["interval"] == max(1, total // 10)
        assert c.body["spec"]["checkpoint"]["interval"] == max(1, total // 2)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s["grid"].update(epochs=[1, 1]), "duplicates"),
        (lambda s: s["grid"]["models"].append({"preset": "tiny"}), "distinct names"),
        (
            lambda s: s["grid"]["models"].append({"dim": 64, "layers": 2, "heads": 4}),
            "needs a name",
        ),
        (lambda s: s["grid"].update(epochs=[float(e) for e in range(1, 34)]), "at most 32"),
        (lambda s: s.update(maxConcurrent=0), "maxConcurrent"),
        (lambda s: s["grid"]["models"].__setitem__(0, {"preset": "tiny\n; rm -rf"}), "preset"),
        (lambda s: s["template"].update(surprise=1), "surprise"),
    ],
)
def test_hostile_specs_are_rejected_in_one_line(mutate, message):
    body = small_study()
    mutate(body["spec"])
    with pytest.raises(SpecError) as e:
        Study.from_body(body)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_grid_too_large_is_rejected():
    body = small_study()
    body["spec"]["grid"].update(
        models=[{"name": f"m{i}", "dim": 64, "layers": 2, "heads": 4} for i in range(32)],
        epochs=[float(e) for e in range(1, 17)],
    )
    with pytest.raises(SpecError, match="at most 512"):
        Study.from_body(body)


def test_a_template_mistake_is_one_problem_not_one_per_child():
    body = small_study()
    body["spec"]["template"]["training"]["globalBatch"] = 30  # not divisible by 4 GPUs x micro 4
    with pytest.raises(SpecError) as e:
        plan(Study.from_body(body))
    assert len(e.value.problems) == 1 and "other children" in e.value.problems[0]


# ------------------------------------------------------------------------------ state machine


def step(study_body: dict, observed: dict[str, dict | None], prev: dict | None = None, **fit):
    study = Study.from_body(study_body)
    return decide(study, Observed(children=observed, **fit), NOW, prev=prev)


def test_at_most_max_concurrent_children_unfinished():
    body = small_study()
    children = plan(Study.from_body(body))
    d = step(body, {})
    assert [o["metadata"]["name"] for o in d.create] == [c.name for c in children[:3]]
    assert d.phase == "Running" and d.status["counts"]["active"] == 3
    # Two of them run, one succeeded: one slot is free.
    observed = {c.name: child(c.body, "Training") for c in children[:2]}
    observed[children[2].name] = child(children[2].body, "Succeeded", 3.1)
    d = step(body, observed)
    assert [o["metadata"]["name"] for o in d.create] == [children[3].name]
    # Every slot busy: nothing is created.
    observed[children[3].name] = child(children[3].body, "Pending")
    observed[children[4].name] = None
    d = step(body, observed)
    assert d.create == []
    assert d.status["counts"] == {"total": 16, "waiting": 12, "active": 3, "succeeded": 1,
                                  "failed": 0}  # fmt: skip


def test_restart_safety_the_same_observation_gives_the_same_names():
    """A restarted operator sees what exists and creates the same next names, never others."""
    body = small_study()
    children = plan(Study.from_body(body))
    observed = {c.name: child(c.body, "Training") for c in children[:1]}
    first = step(body, observed)
    again = step(body, observed, prev=first.status)
    assert [o["metadata"]["name"] for o in first.create] == [
        o["metadata"]["name"] for o in again.create
    ]
    assert {o["metadata"]["name"] for o in first.create}.isdisjoint(observed)


def test_a_failed_child_is_reported_and_not_retried():
    body = small_study(maxConcurrent=16)
    children = plan(Study.from_body(body))
    observed = {c.name: child(c.body, "Succeeded", 3.0 + i / 10) for i, c in enumerate(children)}
    bad = children[5].name
    observed[bad] = child(children[5].body, "Failed")
    observed[bad]["status"]["message"] = "trainer exited 1"
    d = step(body, observed)
    assert d.create and all(o["kind"] in ("ConfigMap", "Job") for o in d.create)  # the fit only
    assert d.status["failedChildren"] == [bad]
    row = next(r for r in d.status["children"] if r["name"] == bad)
    assert row["phase"] == "Failed" and row["message"] == "trainer exited 1"
    assert ("Warning", "ChildFailed", f"{bad} failed; it is reported, not retried") in d.events
    # Reported once: the next reconcile does not post it again.
    d2 = step(body, observed, prev=d.status)
    assert not any(e[1] == "ChildFailed" for e in d2.events)


def test_a_run_of_the_same_name_owned_by_something_else_is_a_failure():
    body = small_study()
    children = plan(Study.from_body(body))
    observed = {children[0].name: child(children[0].body, "Training", uid="someone-else")}
    d = step(body, observed)
    row = d.status["children"][0]
    assert row["phase"] == "Failed" and "not this study's" in row["message"]
    assert children[0].name not in [o["metadata"]["name"] for o in d.create]


def test_too_few_results_fail_the_study_with_the_reason():
    body = small_study()
    children = plan(Study.from_body(body))
    observed = {c.name: child(c.body, "Failed") for c in children}
    d = step(body, observed)
    assert d.phase == "Failed" and d.status["reason"] == "TooFewResults"
    assert "needs 8" in d.status["message"]


def test_fit_wiring_job_then_result_then_succeeded():
    body = small_study(maxConcurrent=16)
    study = Study.from_body(body)
    children = plan(study)
    observed = {c.name: child(c.body, "Succeeded", 3.0 + i / 10) for i, c in enumerate(children)}
    d = step(body, observed)
    assert d.phase == "Fitting"
    cm, job = d.create
    assert cm["kind"] == "ConfigMap" and job["kind"] == "Job"
    assert cm["metadata"]["name"] == job["metadata"]["name"]
    doc = json.loads(cm["data"]["fit.json"])
    assert doc == fit_input(study, doc["points"])
    assert {p["source"] for p in doc["points"]} == {c.name for c in children}
    FitInput.model_validate(doc)  # what the Job's `diffar study-fit` reads
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:1] == ["study-fit"] and container["image"].endswith("evaluator:0.1.0")
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ScalingStudy"
    # The Job runs: nothing new is created.
    d = step(body, observed, prev=d.status, fit_job=job)
    assert d.phase == "Fitting" and d.create == []
    # The Job's result arrives.
    result = {
        o: {"values": {"E": 1.0, "A": 2.0, "B": 3.0, "alpha": 0.3, "beta": 0.3,
                       "R_D_star": 30.0 if o == "ar" else 500.0, "R_N_star": 5.0},
            "stderr": {"R_D_star": 2.0}, "identified": {"R_D_star": True, "R_N_star": False},
            "fixed": [], "points": 8, "rmse_log_loss": 0.01}
        for o in ("ar", "mdm")
    }  # fmt: skip
    result["c_crit"] = [
        {"unique_tokens": 1e6, "flops": 2e18},
        {"unique_tokens": 2e6, "flops": None},
    ]
    d = step(body, observed, prev=d.status, fit_job=job, fit_result=result)
    assert d.phase == "Succeeded" and d.status["reason"] == "Fitted"
    fit = d.status["fit"]
    assert fit["ar"]["values"]["R_D_star"] == 30.0 and fit["mdm"]["values"]["R_D_star"] == 500.0
    assert fit["ar"]["identified"] == {"R_D_star": True, "R_N_star": False}
    assert fit["criticalCompute"] == [{"uniqueTokens": 1e6, "flops": 2e18}, {"uniqueTokens": 2e6}]
    assert fit["job"] == job["metadata"]["name"]
    losses = {r["name"]: r["bestLoss"] for r in d.status["children"]}
    assert losses[children[0].name] == 3.0
    # Done: a later reconcile keeps the result and creates nothing.
    d = step(body, observed, prev=d.status)
    assert d.phase == "Succeeded" and d.create == [] and d.status["fit"] == fit


def test_a_failed_fit_job_fails_the_study():
    body = small_study(maxConcurrent=16)
    children = plan(Study.from_body(body))
    observed = {c.name: child(c.body, "Succeeded", 3.0 + i / 10) for i, c in enumerate(children)}
    d = step(body, observed, fit_job={"kind": "Job"}, fit_failure="the fit Job x failed: boom")
    assert (
        d.phase == "Failed" and d.status["reason"] == "FitFailed" and "boom" in d.status["message"]
    )


def test_the_fit_runs_the_scaling_law_on_the_children():
    """run_fit is evaluator/scaling.py's fit: known constants come back from their points."""
    from diffar.evaluator.scaling import predict

    truth = {"E": 1.87, "A": 520.9, "B": 1478.7, "alpha": 0.353, "beta": 0.352,
             "R_D_star": 15.0, "R_N_star": 5.3}  # fmt: skip
    points = []
    for n in (5e6, 2e7, 1e8):
        for u in (1e7, 1e8):
            for ep in (1, 2, 4, 8, 16, 32, 64):
                loss = float(predict(truth, n, u, ep))
                points.append({"objective": "ar", "params": n, "unique_tokens": u,
                               "epochs": ep, "loss": loss})  # fmt: skip
    out = run_fit(FitInput(points=points, unique_tokens=[1e8], bootstrap=0))
    assert set(out) == {"ar"}
    assert out["ar"]["values"]["R_D_star"] == pytest.approx(15.0, rel=0.05)
    assert out["ar"]["identified"]["R_D_star"] is True
    assert len(json.dumps(out)) < 4096


# ------------------------------------------------------------------------------ CRD and render


def test_the_crd_admits_the_examples_and_rejects_bad_grids(run_crds):
    crd = run_crds["ScalingStudy"]
    for path in (PAPER, ROOT / "examples" / "local" / "study-reproduce.yaml"):
        assert schemacheck.admit(crd, load_yaml(path)) == []
    bad = small_study()
    bad["spec"]["grid"]["objectives"] = ["ar", "gpt"]
    assert schemacheck.admit(crd, bad)
    big = small_study()
    big["spec"]["grid"].update(
        models=[{"name": f"m{i}", "dim": 64, "layers": 2, "heads": 4} for i in range(32)],
        epochs=[float(e) for e in range(1, 17)],
    )
    assert any("more than 512" in m for m in schemacheck.admit(crd, big))
    long_name = small_study()
    long_name["metadata"]["name"] = "x" * 41
    assert schemacheck.admit(crd, long_name)


def test_the_paper_study_expands_to_the_papers_grid():
    manifest = load_yaml(PAPER)
    study = Study.from_body(manifest)
    children = plan(study)
    assert len(children) == 64
    assert {c.point.unique_tokens for c in children} == {99_952_399}
    presets = {c.body["spec"]["model"].get("preset") for c in children}
    assert {"140M", "425M"} <= presets
    assert {c.point.epochs for c in children} >= {1.0, 50.0, 500.0}


def test_diffar_render_prints_the_children_each_a_valid_pytorchjob(pytorchjob_crd):
    """Acceptance 2: `diffar render examples/study-paper-100m.yaml` through the real CLI."""
    out = subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", "render", str(PAPER)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    runs = list(yaml.safe_load_all(out))
    assert runs == render_study(load_yaml(PAPER))
    assert {r["kind"] for r in runs} == {"ARRun", "DiffusionRun"} and len(runs) == 64
    schema = schemacheck.crd_schema(pytorchjob_crd, "v1")
    for body in runs:
        objs = render(Run.from_body(body), Settings(pushgateway_url="http://pgw:9091"))
        (job,) = [o for o in objs if o["kind"] == "PyTorchJob"]
        assert schemacheck.structural_errors(schema, job) == []


def test_the_children_are_admitted_by_the_run_crds(run_crds):
    for body in render_study(load_yaml(PAPER)):
        assert schemacheck.admit(run_crds[body["kind"]], body) == []


def test_diffar_render_of_a_bad_study_is_one_line(tmp_path):
    body = small_study()
    body["spec"]["template"]["data"]["trainUri"] = "relative/path"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(body))
    r = subprocess.run([sys.executable, "-m", "diffar.operator.cli", "render", str(path)],
                       capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "relative path" in r.stderr


def test_the_pytorchjob_crd_is_there():
    assert PYTORCHJOB_CRD.is_file()
