"""The reproduction report is written from the study's status: it states how long the grid took,
says so when runs were reused, and lists every child with its best and final loss."""

from pathlib import Path

import yaml

from diffar.operator.local.reproduce import STUDY, render_report
from diffar.operator.study import Study, plan

REPO = Path(__file__).resolve().parents[2]


def _study():
    manifest = yaml.safe_load((REPO / STUDY).read_text())
    return manifest, plan(Study.from_body(manifest), local=True)


def _status_and_points():
    manifest, children = _study()
    rows, points = [], []
    for c in children:
        rows.append({"name": c.name, "params": c.params, "phase": "Succeeded", "bestLoss": 6.0})
        for epochs, loss in ((4, 6.5), (100, 6.0)):
            points.append({"objective": c.point.objective, "params": c.params,
                           "unique_tokens": c.point.unique_tokens, "epochs": epochs, "loss": loss,
                           "raw_loss": loss, "source": c.name})  # fmt: skip
    values = {"R_D_star": 10.0, "R_N_star": 5.0, "E": 1.0, "alpha": 0.353, "beta": 0.3}
    fit = {o: {"values": values, "stderr": {}, "rmseLogLoss": 0.01} for o in ("ar", "mdm")}
    return manifest, {"children": rows, "fit": fit}, points


def test_the_grid_is_the_manifests():
    _, children = _study()
    assert len(children) == 8
    assert {c.point.unique_tokens for c in children} == {10_000, 25_000}
    assert {c.point.model.label for c in children} == {"h64", "h128"}


def test_a_fresh_grid_reports_its_duration(tmp_path: Path):
    manifest, status, points = _status_and_points()
    text = render_report(manifest, status, points, [], tmp_path, seconds=22 * 60)
    assert "the grid took 22 minutes." in text
    assert "| repro-ar-h64-u10k-e100 | 217,408 | 6.000 (100) | 6.000 (100) |" in text
    assert "Held fixed: ar.alpha=0.353, mdm.alpha=0.353" in text


def test_reused_runs_are_not_timed_as_the_grid(tmp_path: Path):
    manifest, status, points = _status_and_points()
    text = render_report(manifest, status, points, [], tmp_path, seconds=60, reused=8)
    assert "the grid took" not in text
    assert "this invocation took 1 minute, reusing 8 of 8 runs already complete" in text
