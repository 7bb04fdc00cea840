"""End-to-end training runs on CPU: one process, two (torchrun and torchx), kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import torch
from runhelpers import diffar_cmd, free_port, run, torchrun_cmd

from diffar.trainer.export import load_export
from diffar.trainer.metrics import METRIC_NAMES

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def losses(path: Path) -> list[float]:
    return [row["loss"] for row in rows(path) if "loss" in row]


def assert_loss_falls(path: Path, steps: int, factor: float = 0.85) -> None:
    # MDM's loss is a noisy bound (random mask rates), so it gets a looser factor than AR's.
    values = losses(path)
    assert len(values) == steps
    first, last = sum(values[:10]) / 10, sum(values[-10:]) / 10
    assert last < first * factor, f"loss did not fall: {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_single_process_trains_and_loss_falls(objective, write_config, tmp_path):
    cfg = write_config(objective=objective, epochs=8, checkpoint={"dir": str(tmp_path / "ckpt")})
    result = run(diffar_cmd("train", "--config", str(cfg)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_loss_falls(tmp_path / "loss.jsonl", 312, factor=0.85 if objective == "ar" else 0.93)
    exported = load_export(tmp_path / "ckpt")
    assert exported.step == 312 and exported.config.objective == objective


@pytest.mark.parametrize("zero_stage", [1, 3])
def test_two_processes_torchrun_matches_one_process(zero_stage, write_config, tmp_path):
    # The global batch is the same for any world size, so without dropout the losses agree.
    # ZeRO-3 partitions the tied embedding, which the fused loss reads outside its module.
    one = write_config(
        metrics={"port": None, "log_interval": 10, "log_file": str(tmp_path / "one.jsonl")}
    )
    two = write_config(
        zero_stage=zero_stage,
        metrics={"port": None, "log_interval": 10, "log_file": str(tmp_path / "two.jsonl")},
    )
    assert run(diffar_cmd("train", "--config", str(one))).returncode == 0
    result = run(torchrun_cmd(2, "train", "--config", str(two)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_loss_falls(tmp_path / "two.jsonl", 156)
    a, b = losses(tmp_path / "one.jsonl"), losses(tmp_path / "two.jsonl")
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


def test_two_processes_torchx_mdm(write_config, tmp_path):
    cfg = write_config(objective="mdm", epochs=8)
    result = run(
        [
            str(Path(sys.executable).parent / "torchx"),
            "run",
            "-s",
            "local_cwd",
            str(REPO / "trainer" / "components.py") + ":train",
            "--config",
            str(cfg),
            "--nproc",
            "2",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert_loss_falls(tmp_path / "loss.jsonl", 312, factor=0.93)


def _final_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_export(ckpt).model.state_dict()


def test_sigkill_and_resume_is_bit_for_bit(write_config, tmp_path):
    common = {"objective": "mdm", "epochs": 6, "model__dropout": 0.1}
    ref = write_config(
        **common,
        checkpoint={"dir": str(tmp_path / "ref"), "interval": 20},
        metrics={"port": None, "log_interval": 5, "log_file": str(tmp_path / "ref.jsonl")},
    )
    assert run(torchrun_cmd(2, "train", "--config", str(ref))).returncode == 0

    cfg = write_config(
        **common,
        checkpoint={"dir": str(tmp_path / "ckpt"), "interval": 20, "keep": 2},
        metrics={"port": None, "log_interval": 5, "log_file": str(tmp_path / "killed.jsonl")},
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        torchrun_cmd(2, "train", "--config", str(cfg)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    log = tmp_path / "killed.jsonl"
    deadline = time.monotonic() + 120
    # Kill between checkpoints, so the resumed run has steps to redo.
    while time.monotonic() < deadline and not (
        log.exists() and len(log.read_text().splitlines()) >= 50
    ):
        time.sleep(0.05)
    # Like a node failure: torchrun and every worker die at once (workers may sit in their own
    # sessions, so a process-group kill alone can miss them).
    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for victim in victims:
        victim.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(victims, timeout=10)
    steps_before_kill = len(log.read_text().splitlines())
    assert 50 <= steps_before_kill < 234, "the run must be killed mid-way"
    assert (tmp_path / "ckpt" / "latest").exists()

    result = run(torchrun_cmd(2, "train", "--config", str(cfg)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed at step" in result.stdout
    assert losses(log) == losses(tmp_path / "ref.jsonl")  # exact, not approximate
    ref_w, got_w = _final_weights(tmp_path / "ref"), _final_weights(tmp_path / "ckpt")
    assert ref_w.keys() == got_w.keys()
    for key in ref_w:
        assert torch.equal(ref_w[key], got_w[key]), key
    assert len([p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("step-")]) == 2


def test_metrics_endpoint_serves_training_metrics(write_config, tmp_path):
    port = free_port()
    cfg = write_config(epochs=400, metrics={"port": port, "log_interval": 5})
    proc = subprocess.Popen(
        diffar_cmd("train", "--config", str(cfg)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body, deadline = "", time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                body = (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                    .read()
                    .decode()
                )
                if (
                    'diffar_train_step{objective="ar",run="test"}' in body
                    and "diffar_train_loss{" in body
                ):
                    step_line = next(
                        ln for ln in body.splitlines() if ln.startswith("diffar_train_step{")
                    )
                    if float(step_line.split()[-1]) >= 5:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        for name in METRIC_NAMES:
            assert f"\n{name}{{" in body or body.startswith(f"{name}{{"), name
    finally:
        proc.kill()
        proc.wait()


def test_dry_run_sizes_the_paper_runs(tmp_path):
    cfg = tmp_path / "ar.yaml"
    cfg.write_text(
        "objective: ar\nmodel: {preset: 140M}\n"
        "data: {train_uri: s3://bucket/c4, unique_tokens: 99952399}\nepochs: 50\n"
    )
    result = run(diffar_cmd("train", "--config", str(cfg), "--dry-run", "--json"))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["params"] == 144_825_600
    assert plan["total_steps"] == 9532
    assert plan["total_tokens"] == 9532 * 256 * 2048
    text = run(diffar_cmd("train", "--config", str(cfg), "--dry-run", "--set", "model.preset=425M"))
    assert "416.9M" in text.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("objective: gpt\nmodel: {preset: tiny}\ndata: {train_uri: x}\n", "objective"),
        ("objective: ar\nmodel: {preset: 9B}\ndata: {train_uri: x}\n", "unknown model preset '9B'"),
        ("objective: ar\nmodel: {preset: tiny}\n", "data: Field required"),
        ("objective: [ar\n", "not valid YAML"),
        ("objective: ar\nmodel: {preset: tiny}\ndata: {train_uri: /nonexistent}\n", "no manifest"),
    ],
)
def test_bad_configs_fail_in_one_line(tmp_path, content, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    result = run(diffar_cmd("train", "--config", str(cfg)))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_resume_refuses_a_checkpoint_of_another_run(write_config, tmp_path):
    cfg = write_config(max_steps=4, checkpoint={"dir": str(tmp_path / "ckpt"), "interval": 2})
    assert run(diffar_cmd("train", "--config", str(cfg))).returncode == 0
    again = run(diffar_cmd("train", "--config", str(cfg)))
    assert again.returncode == 0 and "already complete at step 4" in again.stdout
    changed = run(
        diffar_cmd("train", "--config", str(cfg), "--set", "epochs=5", "--set", "optim.lr=0.01")
    )
    assert changed.returncode == 2
    assert "holds a checkpoint of a different run (changed: epochs, optim.lr)" in changed.stderr
    assert "Traceback" not in changed.stderr


def test_periodic_validation_loss(write_config, tmp_path, markov_splits):
    cfg = write_config(
        objective="mdm",
        data={"train_uri": str(markov_splits[0]), "val_uri": str(markov_splits[1])},
        validation={"interval": 50, "max_tokens": 2000},
    )
    result = run(diffar_cmd("train", "--config", str(cfg)))
    assert result.returncode == 0, result.stderr[-3000:]
    val = [row for row in rows(tmp_path / "loss.jsonl") if "val_loss" in row]
    assert [row["step"] for row in val] == [50, 100, 150, 156]
    assert val[-1]["epoch"] == pytest.approx(4.0)
    assert val[-1]["val_loss"] < val[0]["val_loss"] < 6.0
    assert "validation loss" in result.stdout
    assert len(losses(tmp_path / "loss.jsonl")) == 156


def test_validation_needs_val_uri(write_config):
    cfg = write_config(validation={"interval": 5})
    result = run(diffar_cmd("train", "--config", str(cfg)))
    assert result.returncode == 2
    assert "validation.interval is set but data.val_uri is not" in result.stderr


def test_nonfinite_loss_stops_the_run_and_keeps_the_good_checkpoint(write_config, tmp_path):
    # A peak lr this large blows the weights up once warmup has raised it a few steps.
    cfg = write_config(
        optim={"lr": 1e8, "min_lr": 0.0, "warmup_fraction": 0.5},
        max_steps=40,
        max_nonfinite_steps=3,
        checkpoint={"dir": str(tmp_path / "ckpt"), "interval": 1, "keep": 1},
        metrics={"port": None, "log_interval": 1, "log_file": str(tmp_path / "loss.jsonl")},
    )
    result = run(diffar_cmd("train", "--config", str(cfg)))
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("diffar train: error: training diverged: 3 consecutive step(s)")
    assert "Traceback" not in result.stderr
    first_bad, last_bad = map(int, error.split("(steps ")[1].split(")")[0].split("-"))
    assert last_bad == first_bad + 2 and first_bad > 1
    steps = rows(tmp_path / "loss.jsonl")  # valid JSON: a non-finite loss is written as null
    assert steps[-1]["step"] == last_bad and steps[-1]["loss"] is None
    # the last finite checkpoint stays; nothing was saved, pruned or exported after it
    tags = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("step-"))
    assert tags == [f"step-{first_bad - 1:08d}"]
    assert (tmp_path / "ckpt" / tags[0] / ".diffar-complete.json").exists()
    assert not (tmp_path / "ckpt" / "export").exists()


def test_sigterm_saves_a_checkpoint_and_the_resume_is_bit_for_bit(write_config, tmp_path):
    common = {"objective": "mdm", "epochs": 4, "model__dropout": 0.1}
    ref = write_config(
        **common,
        checkpoint={"dir": str(tmp_path / "ref"), "interval": 1000},
        metrics={"port": None, "log_interval": 5, "log_file": str(tmp_path / "ref.jsonl")},
    )
    assert run(diffar_cmd("train", "--config", str(ref))).returncode == 0
    log = tmp_path / "run.jsonl"
    cfg = write_config(
        **common,
        # no periodic checkpoint before the signal: only SIGTERM's own can save the progress
        checkpoint={"dir": str(tmp_path / "ckpt"), "interval": 1000},
        metrics={"port": None, "log_interval": 5, "log_file": str(log)},
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        diffar_cmd("train", "--config", str(cfg)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (log.exists() and len(rows(log)) >= 30):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    stopped = int(stderr.split("stopped by SIGTERM at step ")[1].split()[0])
    assert 30 <= stopped < 156
    assert f"(checkpoint at step {stopped})" in stderr
    assert (tmp_path / "ckpt" / f"step-{stopped:08d}" / ".diffar-complete.json").exists()

    result = run(diffar_cmd("train", "--config", str(cfg)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed at step {stopped}" in result.stdout
    assert losses(log) == losses(tmp_path / "ref.jsonl")
    ref_w, got_w = _final_weights(tmp_path / "ref"), _final_weights(tmp_path / "ckpt")
    for key in ref_w:
        assert torch.equal(ref_w[key], got_w[key]), key
