"""The reproduction report states how long the grid took, and says so when runs were reused."""

from pathlib import Path

from diffar.operator.local.reproduce import grid, render_report

PARAMS = {"h64": 217_408, "h128": 1_025_152}


def _points():
    out = []
    for run in grid():
        for epochs, loss in ((4, 6.5), (100, 6.0)):
            out.append({"objective": run.objective, "params": PARAMS[run.model],
                        "unique_tokens": run.unique_tokens, "epochs": epochs, "loss": loss,
                        "raw_loss": loss})  # fmt: skip
    return out


def _fit():
    values = {"R_D_star": 10.0, "R_N_star": 5.0, "E": 1.0, "alpha": 0.353, "beta": 0.3}
    return {"objectives": {o: {"values": values, "rmse_log_loss": 0.01} for o in ("ar", "mdm")}}


def test_a_fresh_grid_reports_its_duration(tmp_path: Path):
    text = render_report(grid(), _points(), _fit(), tmp_path, seconds=22 * 60)
    assert "the grid took 22 minutes." in text
    assert "| repro-ar-h64-u10k | 217,408 | 6.000 (100) | 6.000 |" in text


def test_reused_runs_are_not_timed_as_the_grid(tmp_path: Path):
    text = render_report(grid(), _points(), _fit(), tmp_path, seconds=60, reused=8)
    assert "the grid took" not in text
    assert "this invocation took 1 minute, reusing 8 of 8 runs already complete" in text
