"""What stops a run: non-finite steps in a row (FiniteGuard) and the metrics it must not poison."""

import io
import json
import math
import os
import signal
from contextlib import redirect_stdout

import pytest

from diffar.trainer.guards import SIGTERM_EXIT, FiniteGuard, SigtermFlag, TrainingDiverged
from diffar.trainer.metrics import ConsoleProgress, LossLog, StepReport, TrainMetrics

NAN, INF = math.nan, math.inf


def test_guard_stops_after_patience_consecutive_bad_steps():
    g = FiniteGuard(patience=3)
    g.observe(1, 2.0, 1.0)
    g.observe(2, NAN, 1.0)
    g.observe(3, 2.0, INF)  # a finite loss with an infinite gradient norm is bad too
    assert not g.healthy
    with pytest.raises(TrainingDiverged, match=r"3 consecutive step\(s\).*\(steps 2-4\)"):
        g.observe(4, INF, None)


def test_guard_resets_on_a_finite_step():
    g = FiniteGuard(patience=2)
    for step in range(1, 21):
        g.observe(step, NAN if step % 2 else 1.0, None)  # never two bad steps in a row
    assert g.healthy and g.bad_run == 0


def test_guard_message_is_one_line():
    g = FiniteGuard(patience=1)
    with pytest.raises(TrainingDiverged) as e:
        g.observe(7, NAN, None)
    assert "\n" not in str(e.value) and "steps 7-7" in str(e.value)


def report(loss: float, grad_norm: float | None) -> StepReport:
    return StepReport(5, 10, 0.5, loss, 1e-3, grad_norm, 100, 10.0, 0.1, 3.0)


def test_metrics_never_publish_nan():
    m = TrainMetrics("r", "ar", None)
    m.update(report(2.5, 1.0), 10)
    m.update(report(NAN, INF), 10)
    from prometheus_client import generate_latest

    text = generate_latest(m.registry).decode()
    assert "NaN" not in text and "Inf" not in text
    assert 'diffar_train_loss{objective="ar",run="r"} 2.5' in text


def test_progress_and_loss_log_lines_are_valid_json(tmp_path):
    out = io.StringIO()
    with redirect_stdout(out):
        ConsoleProgress(10, 0).report(report(NAN, NAN), 1)
    row = json.loads(out.getvalue(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert row["loss"] is None and row["grad_norm"] is None
    log = LossLog(str(tmp_path / "loss.jsonl"), 0)
    log.write([{"step": 1, "loss": NAN, "lr": 1e-3}])
    text = (tmp_path / "loss.jsonl").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c))["loss"] is None


def test_sigterm_flag_catches_the_signal_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    flag = SigtermFlag()
    os.kill(os.getpid(), signal.SIGTERM)
    assert flag.raised
    flag.restore()
    assert signal.getsignal(signal.SIGTERM) == before
    assert SIGTERM_EXIT == 143
