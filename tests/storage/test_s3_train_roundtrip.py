"""Acceptance: `diffar data prepare --out s3://...`, then `diffar train` with its data on S3 and its
checkpoints on S3, killed (SIGKILL) mid-run and restarted on a "fresh node" (an empty cache):
the second run fetches the newest checkpoint from S3 and resumes from it, and its loss sequence
equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from corpus import write_corpus

from diffar.trainer import storage

pytestmark = pytest.mark.slow


def diffar(*args: str) -> list[str]:
    return [sys.executable, "-m", "diffar.operator.cli", *args]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_config(path: Path, data_uri: str, ckpt: str, cache: Path, log: Path) -> Path:
    cfg = {
        "name": "s3-roundtrip",
        "objective": "ar",
        "model": {"preset": "nano", "seq_len": 32, "dropout": 0},
        "data": {"train_uri": data_uri, "cache_dir": str(cache)},
        "epochs": 6,
        "global_batch": 8,
        "micro_batch": 8,
        "optim": {"lr": 3e-3, "min_lr": 3e-4},
        "zero_stage": 0,
        "checkpoint": {"dir": ckpt, "interval": 10, "keep": 2},
        "metrics": {"port": None, "log_interval": 5, "log_file": str(log)},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def test_prepare_to_s3_train_kill_and_resume_from_s3(bucket, tmp_path):
    src = write_corpus(tmp_path / "c.jsonl", docs=200)
    data = f"s3://{bucket}/data"
    r = subprocess.run(
        diffar("data", "prepare", str(src), "--out", data, "--unique-tokens", "4000",
               "--val-tokens", "500", "--quiet"),
        capture_output=True, text=True, env=env(), timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr

    # the reference: the same run, uninterrupted, checkpoints on S3 too
    ref_log = tmp_path / "ref.jsonl"
    ref = write_config(
        tmp_path / "ref.yaml", f"{data}/train", f"s3://{bucket}/runs/ref", tmp_path / "c0", ref_log
    )
    r = subprocess.run(diffar("train", "--config", str(ref)), capture_output=True, text=True,
                       env=env(), timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    total = len(losses(ref_log))
    assert total >= 60

    log = tmp_path / "run.jsonl"
    ckpt = f"s3://{bucket}/runs/r1"
    cfg = write_config(tmp_path / "run.yaml", f"{data}/train", ckpt, tmp_path / "node-a", log)
    proc = subprocess.Popen(
        diffar("train", "--config", str(cfg)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
        start_new_session=True,
    )
    store = storage.open_store(ckpt)
    deadline = time.monotonic() + 300
    # kill once a checkpoint is on S3 and the run has gone past it
    while time.monotonic() < deadline:
        n = len(log.read_text().splitlines()) if log.exists() else 0
        if n >= 25 and store.exists("latest"):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(losses(log))
    assert 25 <= killed_at < total, "the run must be killed mid-way"
    remote_tag = store.get_bytes("latest").decode().strip()

    # restart on a fresh node: nothing cached locally, data and checkpoint come from S3
    fresh = write_config(tmp_path / "run2.yaml", f"{data}/train", ckpt, tmp_path / "node-b", log)
    r = subprocess.run(diffar("train", "--config", str(fresh)), capture_output=True, text=True,
                       env=env(), timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    step = int(remote_tag.split("-")[1])
    assert f"resumed at step {step}" in r.stdout
    assert (tmp_path / "node-b" / "s3" / bucket / "data/train/manifest.json").exists()
    assert losses(log) == losses(ref_log)  # exact: the resumed run replays the reference
    kept = sorted({k.split("/")[0] for k in store.list("") if k.startswith("step-")})
    assert len(kept) == 2 and store.exists(f"{kept[-1]}/.diffar-complete.json")
