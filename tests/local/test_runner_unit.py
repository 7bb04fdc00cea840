"""The local runner's pure parts and small shells: failure causes, the run lock, changed
manifests, progress after a resume, the ETA, status.results, spec.s3 in the children."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffar.operator.local.runner import (
    Rate,
    RunInUse,
    _Display,
    _run_child,
    check_same_config,
    failure_cause,
    format_duration,
    read_progress,
    resolve,
    results_from,
    run_lock,
)
from diffar.trainer.errors import UserError

# What torchx's local scheduler leaves in logs/train.log when the trainer fails (trimmed).
TORCHX_LOG = """
==== 2026-11-30T04:44:05+00:00 torchx run -s local_cwd components.py:train --config x.json
torchx 2026-11-30 04:44:06 INFO     Log directory not set in scheduler cfg. Creating a temporary log dir
cli/0 [0]:diffar train: error: nodata/train/manifest.json: no manifest; prepare the dataset with `diffar data prepare` (or it is incomplete)
cli/0 E1130 04:44:14.000000 17290 site-packages/torch/distributed/elastic/multiprocessing/api.py:882] failed (exitcode: 2)
cli/0 Traceback (most recent call last):
cli/0   File "/x/torch/distributed/elastic/multiprocessing/errors/__init__.py", line 367, in wrapper
cli/0     raise ChildFailedError(
cli/0 torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
cli/0 ============================================================
cli/0   error_file: <N/A>
cli/0   traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
torchx 2026-11-30 04:44:15 INFO     Job finished: FAILED
torchx 2026-11-30 04:44:15 ERROR    AppStatus:
  state: FAILED (5)
"""


def test_failure_cause_is_the_trainers_error_not_torchruns_footer():
    cause = failure_cause(TORCHX_LOG)
    assert cause == [
        "diffar train: error: nodata/train/manifest.json: no manifest; prepare the dataset "
        "with `diffar data prepare` (or it is incomplete)"
    ]


def test_failure_cause_of_a_crash_is_its_exception_line_of_the_last_attempt():
    log = (
        "\n==== first\ncli/0 [0]:diffar train: error: an old failure\n"
        "\n==== second\ncli/0 [0]:Traceback (most recent call last):\n"
        'cli/0 [0]:  File "x.py", line 1, in <module>\n'
        "cli/0 [0]:RuntimeError: shape mismatch in layer 3\n"
        "cli/0 torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
    )
    assert failure_cause(log) == ["RuntimeError: shape mismatch in layer 3"]


def manifest(name="unit", lr=1e-3, **s3) -> dict:
    spec = {
        "model": {"preset": "nano", "seqLen": 32, "vocabSize": 300},
        "data": {
            "trainUri": "data/train",
            "valUri": "data/val",
            "uniqueTokens": 20000,
            "epochs": 2,
        },
        "training": {"globalBatch": 16, "microBatch": 8, "lr": lr, "minLr": 1e-4},
        "checkpoint": {"uri": f"runs/{name}/checkpoints", "interval": 20},
        "evaluation": {"tasks": ["arc_easy"]},
        "local": {"processes": 1},
    }
    if s3:
        spec["s3"] = s3
    return {
        "apiVersion": "diffar.io/v1alpha1",
        "kind": "ARRun",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_second_run_of_one_folder_is_refused_and_a_stale_lock_taken_over(tmp_path):
    run = resolve(manifest(), tmp_path)
    with run_lock(run):
        assert run.lock_file.read_text().strip() == str(os.getpid())
        refused = rf"in use by another diffar run \(pid {os.getpid()}\)"
        with pytest.raises(RunInUse, match=refused), run_lock(run):
            pass
    assert not run.lock_file.exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run.lock_file.write_text(f"{dead.pid}\n")  # left by a killed run
    with run_lock(run):
        assert run.lock_file.read_text().strip() == str(os.getpid())


def test_changed_manifest_for_a_trained_folder_is_refused(tmp_path):
    first = resolve(manifest(lr=1e-3), tmp_path)
    first.dir.mkdir(parents=True)
    first.train_json.write_text(first.train_config.to_json())
    check_same_config(first)  # nothing trained yet: a fixed manifest may replace it
    first.log_file.write_text('{"step": 1, "loss": 5.0, "lr": 0.001}\n')
    status = '{"phase": "Succeeded"}'
    first.status_json.write_text(status)
    changed = resolve(manifest(lr=2e-3), tmp_path)
    with pytest.raises(UserError, match=r"trained with another manifest \(changed: optim\.lr\)"):
        check_same_config(changed)
    assert first.status_json.read_text() == status
    check_same_config(resolve(manifest(lr=1e-3), tmp_path))  # the same manifest resumes


def test_progress_ignores_the_previous_attempts_log_until_the_trainer_rewrites_it(tmp_path):
    run = resolve(manifest(), tmp_path)
    run.dir.mkdir(parents=True)
    run.log_file.write_text("".join(json.dumps({"step": s, "loss": 4.0}) + "\n" for s in (10, 90)))
    rate = Rate(time.time() + 5)  # the resumed child starts after the log was last written
    assert read_progress(run, rate).step == 0
    assert read_progress(run).step == 90  # a finished run's status reads the whole log


def test_eta_counts_only_the_steps_of_this_attempt():
    rate = Rate(0.0)
    assert rate.eta_seconds(100, 200, now=10.0) is None  # first sample after a resume at 100
    assert rate.eta_seconds(110, 200, now=20.0) == pytest.approx(90.0)  # 1 step/s, 90 left


def test_eta_is_shown_as_a_duration_not_a_clock_time():
    assert [format_duration(s) for s in (5, 185, 7620)] == ["5s", "3m05s", "2h07m"]

    class Out:
        text = ""

        def write(self, s):
            Out.text += s

        def flush(self):
            pass

        def isatty(self):
            return True

    from datetime import UTC, datetime, timedelta

    from diffar.operator.api import Progress

    eta = (datetime.now(UTC) + timedelta(seconds=185)).strftime("%Y-%m-%dT%H:%M:%SZ")
    _Display("r", Out()).show("Training", Progress(step=1, totalSteps=2, summary="1/2", eta=eta))
    assert " eta 3m0" in Out.text and "Z" not in Out.text.split("eta")[1]


def test_status_results_carry_validation_and_the_training_summary(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(
        json.dumps(
            {
                "objective": "mdm",
                "loss": 5.1,
                "loss_estimator": "elbo",
                "validation": {
                    "elbo": {"loss": 5.1, "stderr": 0.1},
                    "chain_rule_nll": {"loss": 5.0, "stderr": 0.2},
                },
                "tasks": {"piqa": {"acc": 0.5, "n": 4}},
                "training": {
                    "best_val_loss": 5.2,
                    "best_val_epoch": 30.0,
                    "final_val_loss": 5.3,
                    "final_train_loss": 4.9,
                    "wall_seconds": 61.5,
                    "tokens_per_second": 2048.0,
                    "val_curve": [[1.0, 6.0], [30.0, 5.2]],
                },
            }
        )
    )
    results = results_from(path)
    assert results.validation == {"elbo": 5.1, "chain_rule_nll": 5.0}
    assert (results.bestValLoss, results.bestValEpoch, results.wallSeconds) == (5.2, 30.0, 61.5)
    assert results.tokensPerSecond == 2048.0 and results.finalTrainLoss == 4.9


def test_spec_s3_endpoint_reaches_the_local_children(tmp_path):
    run = resolve(manifest(endpoint="http://127.0.0.1:8333", region="eu-x-1"), tmp_path)
    log = tmp_path / "child.log"
    cmd = [
        sys.executable,
        "-c",
        "import os; print(os.environ['AWS_ENDPOINT_URL'], os.environ['AWS_DEFAULT_REGION'])",
    ]
    with open(os.devnull, "w") as quiet:
        _run_child(run, cmd, log, "Evaluating", _Display("r", quiet), 1)
    assert "http://127.0.0.1:8333 eu-x-1" in log.read_text()


def test_unknown_task_in_a_manifest_fails_before_any_work(tmp_path):
    from diffar.evaluator.config import parse_eval_config
    from diffar.trainer.errors import UserError

    body = manifest()
    body["spec"]["evaluation"]["tasks"] = ["arc_easy", "race"]
    # The run API's task enum (the evaluator's own task list) refuses it at parse time.
    with pytest.raises(UserError, match=r"spec\.evaluation\.tasks\.1: Input should be 'arc_easy'"):
        resolve(body, tmp_path)  # before `diffar run --local` trains anything
    assert not (tmp_path / "unit").exists()
    body["spec"]["evaluation"]["tasks"] = ["arc_easy"]
    parse_eval_config(resolve(body, tmp_path).eval_config)


def test_examples_local_declare_what_the_quickstart_fits():
    # The quickstart rewrites these fields from its flags; they must be where it looks.
    import yaml

    for name in ("ar.yaml", "diffusion.yaml"):
        spec = yaml.safe_load((Path(__file__).parents[2] / "examples/local" / name).read_text())[
            "spec"
        ]
        assert {"trainUri", "valUri", "uniqueTokens"} <= set(spec["data"])
        assert spec["validation"]["interval"] > 0 and "uri" in spec["checkpoint"]
