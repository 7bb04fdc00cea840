"""Acceptance (issue 13): two "nodes" (two processes, gloo, world size 2, each its own cache
dir) share one checkpoint store on S3. Node 1's upload of a checkpoint fails after every rank
saved it locally (node 0's copy is complete and its `latest` names it); the job dies and is
started again. Every rank must resume from the same committed step, and the final weights must
equal an uninterrupted run's bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from testsupport.servers import free_port
from weed import FaultProxy

from diffar.trainer import checkpoint_store as cs
from diffar.trainer.export import load_export
from diffar.trainer.shards import Manifest, write_manifest, write_shard

pytestmark = pytest.mark.slow

VOCAB = 128
FAILED_TAG = "step-00000020"
FINAL_TAG = "step-00000047"


def dataset(root: Path) -> Path:
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=8192)
    root.mkdir(parents=True)
    shard = write_shard(root / "shard-00000.bin", tokens, "uint16")
    write_manifest(
        root, Manifest("synthetic", VOCAB, VOCAB - 1, len(tokens), 1, (shard,), "uint16")
    )
    return root


def config(path: Path, data: Path, ckpt: str) -> Path:
    cfg = {
        "name": "two-nodes",
        "objective": "mdm",
        "model": {"preset": "nano", "seq_len": 32, "vocab_size": VOCAB, "dropout": 0.1},
        "data": {"train_uri": str(data)},
        "epochs": 3,
        "global_batch": 16,
        "micro_batch": 8,
        "optim": {"lr": 3e-3, "min_lr": 3e-4},
        "zero_stage": 1,  # each rank holds its own optimizer shard: both nodes' files matter
        "checkpoint": {"dir": ckpt, "interval": 10, "keep": 2},
        "metrics": {"port": None, "log_interval": 5},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(cfg: Path, tmp: Path, log: Path, endpoints: tuple[str, str]) -> list[subprocess.Popen]:
    """Rank 0 on "node-0", rank 1 on "node-1": LOCAL_RANK 0 on both, separate caches."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "RANK": str(rank),
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "AWS_ENDPOINT_URL": endpoints[rank],
        }
        cmd = [
            sys.executable, "-m", "diffar.operator.cli", "train", "--config", str(cfg),
            "--set", f"data.cache_dir={tmp / f'node-{rank}'}",
            "--set", f"metrics.log_file={log}",
        ]  # fmt: skip
        out = open(tmp / f"{log.stem}-rank{rank}.out", "w")  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def finish(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    # One node gone: the job is over. Its peer gets a little time to stop by itself, then it
    # is killed, as a job controller would.
    grace = time.monotonic() + 30
    while time.monotonic() < grace and any(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    return [p.returncode for p in procs]


def losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def output(tmp: Path, stem: str, rank: int) -> str:
    return (tmp / f"{stem}-rank{rank}.out").read_text()


def test_two_nodes_failed_upload_resume_same_committed_step_bit_exact(bucket, s3env, tmp_path):
    started = time.monotonic()
    data = dataset(tmp_path / "data")
    direct = (s3env.endpoint, s3env.endpoint)

    ref_cfg = config(tmp_path / "ref.yaml", data, f"s3://{bucket}/ref")
    (tmp_path / "ref").mkdir()
    ref = launch(ref_cfg, tmp_path / "ref", tmp_path / "ref.jsonl", direct)
    assert finish(ref, 600) == [0, 0], output(tmp_path / "ref", "ref", 0)[-3000:]
    total = len(losses(tmp_path / "ref.jsonl"))
    assert total >= 40

    # Node 1 reaches S3 through a proxy that refuses every upload of step 20.
    proxy = FaultProxy(s3env.endpoint)
    try:
        proxy.fail(1000, status=500, code="InternalError", match=f"/run/{FAILED_TAG}/")
        cfg = config(tmp_path / "run.yaml", data, f"s3://{bucket}/run")
        log = tmp_path / "run.jsonl"
        codes = finish(launch(cfg, tmp_path, log, (s3env.endpoint, proxy.endpoint)), 600)
        assert proxy.injected > 0, "the upload of step 20 was never attempted"
    finally:
        proxy.close()
    assert codes != [0, 0], "the run must stop when a checkpoint cannot be stored"
    assert 20 <= len(losses(log)) < total
    node0 = tmp_path / "node-0" / "checkpoints" / bucket / "run"
    # Node 0 saved step 20 completely; a DeepSpeed `latest` there names it (as DeepSpeed
    # writes it before any upload). Neither may make node 0 resume from step 20.
    assert (node0 / FAILED_TAG / "mp_rank_00_model_states.pt").exists()
    (node0 / "latest").write_text(FAILED_TAG)
    assert "checkpoint step-00000020 was not committed" in output(tmp_path, "run", 1)

    codes = finish(launch(cfg, tmp_path, log, direct), 600)
    assert codes == [0, 0], output(tmp_path, "run", 0)[-3000:] + output(tmp_path, "run", 1)[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} resumes from the committed checkpoint step-00000010" in output(
            tmp_path, "run", rank
        )
    assert losses(log) == losses(tmp_path / "ref.jsonl")  # exact
    ref_w = load_export(tmp_path / "ref" / "node-0" / "checkpoints" / bucket / "ref").model
    got_w = load_export(node0).model
    for (name, a), (_, b) in zip(
        ref_w.state_dict().items(), got_w.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    print(f"two-node failed-upload resume test: {time.monotonic() - started:.1f} s")


def test_a_checkpoint_damaged_in_the_store_gives_way_to_the_one_before(bucket, s3env, tmp_path):
    data = dataset(tmp_path / "data")
    cfg = config(tmp_path / "one.yaml", data, f"s3://{bucket}/one")
    log = tmp_path / "one.jsonl"

    def train(cache: str) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable, "-m", "diffar.operator.cli", "train", "--config", str(cfg),
            "--set", f"data.cache_dir={tmp_path / cache}", "--set", f"metrics.log_file={log}",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)

    first = train("node-a")
    assert first.returncode == 0, first.stderr[-3000:]
    reference = losses(log)
    key = "one/step-00000047/mp_rank_00_model_states.pt"
    client = s3env.client()
    meta = client.head_object(Bucket=bucket, Key=key)["Metadata"]
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body[:-8] + b"damaged!", Metadata=meta)

    again = train("node-b")  # a fresh node: everything comes from the store
    assert again.returncode == 0, again.stderr[-3000:]
    assert "step-00000047 is damaged in the store" in again.stderr
    assert "rank 0 resumes from the committed checkpoint step-00000040" in again.stderr
    assert losses(log) == reference
    # the step was saved again, whole: a third node fetches it, every file verified
    assert cs.fetch_latest_checkpoint(f"s3://{bucket}/one", tmp_path / "node-c") == FINAL_TAG
