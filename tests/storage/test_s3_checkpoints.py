"""Checkpoint upload, prune and fetch on a real S3 server (the trainer's checkpoint API)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from diffar.trainer import storage


def fake_checkpoint(root: Path, tag: str, seed: int, big: bool = False) -> dict[str, bytes]:
    """A DeepSpeed-like tag dir: per-rank model and optimizer files."""
    files = {
        "mp_rank_00_model_states.pt": os.urandom(1000 + seed),
        "zero_pp_rank_0_mp_rank_00_optim_states.pt": os.urandom(7 << 20 if big else 3000),
        "zero_pp_rank_1_mp_rank_00_optim_states.pt": os.urandom(2000),
        "sub/extra.json": json.dumps({"seed": seed}).encode(),
    }
    for rel, data in files.items():
        p = root / tag / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "latest").write_text(tag)
    return files


def test_sync_up_prune_and_fetch_latest(bucket, tmp_path):
    remote = f"s3://{bucket}/runs/r1/ckpt"
    local = tmp_path / "node-a"
    assert storage.fetch_latest_checkpoint(remote, tmp_path / "empty") is None

    saved = {}
    pruned_all = []
    for step in (100, 200, 300, 400):
        tag = f"step-{step:08d}"
        saved[tag] = fake_checkpoint(local, tag, step, big=step == 400)
        pruned_all += storage.sync_checkpoint_up(local, remote, tag, keep=2)
    assert pruned_all == ["step-00000100", "step-00000200"]

    store = storage.open_store(remote)
    assert store.get_bytes("latest").decode().strip() == "step-00000400"
    tags = sorted({k.split("/")[0] for k in store.list("") if "/" in k})
    assert tags == ["step-00000300", "step-00000400"]
    # every file carries its sha256; the marker lists the files
    marker = json.loads(store.get_bytes("step-00000400/.diffar-complete.json"))
    assert sorted(marker["files"]) == sorted(saved["step-00000400"])
    assert store.metadata("step-00000400/sub/extra.json")["sha256"]

    # a fresh node resumes from the newest checkpoint
    other = tmp_path / "node-b"
    assert storage.fetch_latest_checkpoint(remote, other) == "step-00000400"
    assert (other / "latest").read_text().strip() == "step-00000400"
    for rel, data in saved["step-00000400"].items():
        assert (other / "step-00000400" / rel).read_bytes() == data
    # calling again downloads nothing new and gives the same tag
    assert storage.fetch_latest_checkpoint(remote, other) == "step-00000400"


def test_upload_is_idempotent_and_latest_is_written_last(bucket, tmp_path, proxy):
    remote = f"s3://{bucket}/ck"
    fake_checkpoint(tmp_path, "step-00000010", 1)
    storage.sync_checkpoint_up(tmp_path, remote, "step-00000010", keep=3)
    puts = [r.split("?")[0] for r in proxy.requests if r.startswith("PUT")]
    assert puts[-1].endswith("/ck/latest")
    assert puts[-2].endswith("/ck/step-00000010/.diffar-complete.json")
    n = len(proxy.requests)
    storage.sync_checkpoint_up(tmp_path, remote, "step-00000010", keep=3)
    data_puts = [
        r for r in proxy.requests[n:] if r.startswith("PUT") and (".pt" in r or "extra" in r)
    ]
    assert data_puts == []  # same files, same sha256: not sent again


def test_incomplete_remote_checkpoint_is_not_resumed(bucket, tmp_path):
    remote = f"s3://{bucket}/ck"
    fake_checkpoint(tmp_path / "a", "step-00000001", 1)
    storage.sync_checkpoint_up(tmp_path / "a", remote, "step-00000001", keep=3)
    # a later upload that died before its commit: files but no marker, `latest` unchanged
    fake_checkpoint(tmp_path / "a", "step-00000002", 2)
    storage.upload_checkpoint_files(tmp_path / "a", remote, "step-00000002")
    assert storage.fetch_latest_checkpoint(remote, tmp_path / "b") == "step-00000001"


def test_corrupted_checkpoint_file_is_refused(bucket, tmp_path, s3env):
    remote = f"s3://{bucket}/ck"
    fake_checkpoint(tmp_path / "a", "step-00000001", 1)
    storage.sync_checkpoint_up(tmp_path / "a", remote, "step-00000001", keep=3)
    key = "ck/step-00000001/mp_rank_00_model_states.pt"
    c = s3env.client()
    meta = c.head_object(Bucket=bucket, Key=key)["Metadata"]
    c.put_object(Bucket=bucket, Key=key, Body=os.urandom(1001), Metadata=meta)
    with pytest.raises(
        storage.ChecksumError, match=r"mp_rank_00_model_states\.pt: sha256 does not"
    ):
        storage.fetch_latest_checkpoint(remote, tmp_path / "b")
    assert not (tmp_path / "b" / "latest").exists()


def test_local_checkpoint_dir_is_a_no_op(tmp_path):
    fake_checkpoint(tmp_path, "step-00000005", 5)
    assert storage.sync_checkpoint_up(tmp_path, str(tmp_path), "step-00000005", keep=1) == []
    assert storage.fetch_latest_checkpoint(f"file://{tmp_path}", tmp_path) == "step-00000005"
    assert storage.local_checkpoint_dir(str(tmp_path)) == tmp_path
    assert storage.local_checkpoint_dir("s3://b/runs/x", "/c") == Path("/c/checkpoints/b/runs/x")


def test_checkpoint_to_a_file_uri_elsewhere(tmp_path):
    fake_checkpoint(tmp_path / "work", "step-00000005", 5)
    fake_checkpoint(tmp_path / "work", "step-00000006", 6)
    dest = f"file://{tmp_path}/backup"
    storage.sync_checkpoint_up(tmp_path / "work", dest, "step-00000005", keep=1)
    storage.sync_checkpoint_up(tmp_path / "work", dest, "step-00000006", keep=1)
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == ["latest", "step-00000006"]
    assert storage.fetch_latest_checkpoint(dest, tmp_path / "restore") == "step-00000006"
