"""`diffar compare` and results.json's training summary (evaluator/compare.py, results.py)."""

import json

import pytest

from diffar.evaluator import tasks
from diffar.evaluator.compare import compare, comparison_table
from diffar.evaluator.config import KNOWN_TASKS, EvalConfigError, parse_eval_config
from diffar.evaluator.results import parse_log, summary, training_summary
from diffar.trainer.errors import UserError

LOG = [
    {"step": 10, "loss": 6.0, "lr": 1e-3, "seconds": 2.0},
    {"step": 10, "epoch": 1.0, "val_loss": 6.2},
    {"step": 20, "loss": 5.0, "lr": 1e-3, "seconds": 2.0},
    {"step": 20, "epoch": 2.0, "val_loss": 5.5},
    {"step": 30, "loss": 4.0, "lr": 1e-3, "seconds": 1.0},
    {"step": 30, "epoch": 3.0, "val_loss": 5.7},
]


def test_training_summary_of_a_step_log():
    rows = parse_log("\n".join(json.dumps(r) for r in LOG) + '\n{"step": 31, "lo')  # cut short
    s = training_summary(rows, tokens_per_step=100)
    assert (s["best_val_loss"], s["best_val_epoch"]) == (5.5, 2.0)
    assert s["final_val_loss"] == 5.7 and s["final_train_loss"] == 4.0
    assert s["wall_seconds"] == 5.0
    assert s["tokens_per_second"] == pytest.approx(3 * 100 / 5.0)
    assert s["val_curve"] == [[1.0, 6.2], [2.0, 5.5], [3.0, 5.7]]
    # The operator's compact form carries the scalars, not the curve.
    compact = json.loads(summary({"objective": "ar", "training": s}))
    assert compact["training"]["best_val_loss"] == 5.5 and "val_curve" not in compact["training"]


def results(run: str, objective: str, **extra) -> dict:
    key = "nll" if objective == "ar" else "elbo"
    return {
        "format": "diffar-results/v1",
        "run": run,
        "objective": objective,
        "params": 1000,
        "unique_tokens": 3000,
        "epochs": 3.0,
        "loss": 5.0,
        "loss_estimator": key,
        "validation": {key: {"loss": 5.0, "stderr": 0.1, "bits_per_byte": 2.0}},
        "tasks": {"piqa": {"acc": 0.5, "n": 4}},
        **extra,
    }


def test_compare_a_run_folder_and_a_results_file(tmp_path):
    folder = tmp_path / "runs" / "a"  # results.json from before the training summary, and a log
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results("a", "ar")))
    (folder / "train-log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LOG))
    other = tmp_path / "b.json"
    curve = {"val_curve": [[1.0, 6.5], [3.0, 5.4]], "best_val_loss": 5.4, "best_val_epoch": 3.0}
    other.write_text(json.dumps(results("b", "mdm", training=curve)))
    png = tmp_path / "out" / "cmp.png"
    text = compare([str(folder), str(other)], png)
    header, *rows = text.splitlines()
    assert header.split() == ["a", "b"]
    assert any(
        r.startswith("best val loss in training (epoch)") and "5.500 (2.0)" in r for r in rows
    )
    assert any(r.startswith("val loss: MDM ELBO bound") and "5.000 ± 0.100" in r for r in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot: {png}" in text
    doc = json.loads(compare([str(folder), str(other)], None, as_json=True))
    assert [r["label"] for r in doc["runs"]] == ["a", "b"]
    assert doc["runs"][0]["training"]["val_curve"] == [[1.0, 6.2], [2.0, 5.5], [3.0, 5.7]]
    assert doc["plot"] is None


def test_compare_names_what_is_missing(tmp_path):
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(UserError, match=r"no results\.json"):
        compare([str(tmp_path / "unfinished")], None)
    with pytest.raises(UserError, match="no such run folder"):
        compare([str(tmp_path / "nowhere")], None)
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(UserError, match=r"not a diffar results\.json"):
        compare([str(tmp_path / "x.json")], None)


def test_table_has_a_column_per_run():
    table = comparison_table([("r1", results("r1", "ar")), ("r2", results("r2", "ar"))])
    assert table.splitlines()[0].split() == ["r1", "r2"]
    assert "piqa acc" in table and "0.500 (n=4)" in table


def test_unknown_tasks_fail_at_config_load():
    with pytest.raises(EvalConfigError, match=r"unknown tasks 'race', 'mmlu'"):
        parse_eval_config({"model_uri": "m", "tasks": ["arc_easy", "race", "mmlu"]})
    parse_eval_config({"model_uri": "m", "tasks": ["arc_easy", "my/task.jsonl"]})
    assert set(KNOWN_TASKS) == set(tasks.TASKS)
