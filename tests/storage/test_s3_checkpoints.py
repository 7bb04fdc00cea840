"""Checkpoint upload, prune and fetch on a real S3 server (the trainer's checkpoint API)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from diffar.trainer import checkpoint_store as cs
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
    assert cs.fetch_latest_checkpoint(remote, tmp_path / "empty") is None

    saved = {}
    pruned_all = []
    for step in (100, 200, 300, 400):
        tag = f"step-{step:08d}"
        saved[tag] = fake_checkpoint(local, tag, step, big=step == 400)
        pruned_all += cs.sync_checkpoint_up(local, remote, tag, keep=2)
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
    assert cs.fetch_latest_checkpoint(remote, other) == "step-00000400"
    assert (other / "latest").read_text().strip() == "step-00000400"
    for rel, data in saved["step-00000400"].items():
        assert (other / "step-00000400" / rel).read_bytes() == data
    # calling again downloads nothing new and gives the same tag
    assert cs.fetch_latest_checkpoint(remote, other) == "step-00000400"


def test_upload_is_idempotent_and_latest_is_written_last(bucket, tmp_path, proxy):
    remote = f"s3://{bucket}/ck"
    fake_checkpoint(tmp_path, "step-00000010", 1)
    cs.sync_checkpoint_up(tmp_path, remote, "step-00000010", keep=3)
    puts = [r.split("?")[0] for r in proxy.requests if r.startswith("PUT")]
    assert puts[-1].endswith("/ck/latest")
    assert puts[-2].endswith("/ck/step-00000010/.diffar-complete.json")
    n = len(proxy.requests)
    cs.sync_checkpoint_up(tmp_path, remote, "step-00000010", keep=3)
    data_puts = [
        r for r in proxy.requests[n:] if r.startswith("PUT") and (".pt" in r or "extra" in r)
    ]
    assert data_puts == []  # same files, same sha256: not sent again


def test_incomplete_remote_checkpoint_is_not_resumed(bucket, tmp_path):
    remote = f"s3://{bucket}/ck"
    fake_checkpoint(tmp_path / "a", "step-00000001", 1)
    cs.sync_checkpoint_up(tmp_path / "a", remote, "step-00000001", keep=3)
    # a later upload that died before its commit: files but no marker, `latest` unchanged
    fake_checkpoint(tmp_path / "a", "step-00000002", 2)
    cs.upload_checkpoint_files(tmp_path / "a", remote, "step-00000002")
    assert cs.fetch_latest_checkpoint(remote, tmp_path / "b") == "step-00000001"


def test_corrupted_checkpoint_file_is_refused(bucket, tmp_path, s3env):
    remote = f"s3://{bucket}/ck"
    fake_checkpoint(tmp_path / "a", "step-00000001", 1)
    cs.sync_checkpoint_up(tmp_path / "a", remote, "step-00000001", keep=3)
    key = "ck/step-00000001/mp_rank_00_model_states.pt"
    c = s3env.client()
    meta = c.head_object(Bucket=bucket, Key=key)["Metadata"]
    c.put_object(Bucket=bucket, Key=key, Body=os.urandom(1001), Metadata=meta)
    with pytest.raises(
        storage.ChecksumError, match=r"mp_rank_00_model_states\.pt: sha256 does not"
    ):
        cs.fetch_latest_checkpoint(remote, tmp_path / "b")
    assert not (tmp_path / "b" / "latest").exists()


def test_local_checkpoint_dir_is_committed_in_place(tmp_path):
    fake_checkpoint(tmp_path, "step-00000005", 5)
    assert cs.sync_checkpoint_up(tmp_path, str(tmp_path), "step-00000005", keep=1) == []
    assert cs.fetch_latest_checkpoint(f"file://{tmp_path}", tmp_path) == "step-00000005"
    assert cs.local_checkpoint_dir(str(tmp_path)) == tmp_path
    assert cs.local_checkpoint_dir("s3://b/runs/x", "/c") == Path("/c/checkpoints/b/runs/x")


def test_checkpoint_to_a_file_uri_elsewhere(tmp_path):
    fake_checkpoint(tmp_path / "work", "step-00000005", 5)
    fake_checkpoint(tmp_path / "work", "step-00000006", 6)
    dest = f"file://{tmp_path}/backup"
    cs.sync_checkpoint_up(tmp_path / "work", dest, "step-00000005", keep=1)
    cs.sync_checkpoint_up(tmp_path / "work", dest, "step-00000006", keep=1)
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == ["latest", "step-00000006"]
    assert cs.fetch_latest_checkpoint(dest, tmp_path / "restore") == "step-00000006"


def test_remote_prune_leaves_other_prefixes(bucket, tmp_path):
    remote = f"s3://{bucket}/runs/r1"
    store = storage.open_store(remote)
    store.put_bytes("export/model.pt", b"weights")
    store.put_bytes("export/model.pt.sha256", b"0" * 64)
    store.put_bytes("results.json", b"{}")
    store.put_bytes("notes/step-00000001/readme", b"not a checkpoint")
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, f"step-{step:08d}", step)
        cs.sync_checkpoint_up(tmp_path, remote, f"step-{step:08d}", keep=1)
    keys = store.list("")
    assert {"export/model.pt", "export/model.pt.sha256", "results.json"} <= set(keys)
    assert "notes/step-00000001/readme" in keys
    assert sorted({k.split("/")[0] for k in keys if k.startswith("step-")}) == ["step-00000003"]


def test_a_node_with_a_newer_uncommitted_latest_resumes_the_committed_step(bucket, tmp_path):
    remote = f"s3://{bucket}/ck"
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    fake_checkpoint(node0, "step-00000010", 10)
    cs.sync_checkpoint_up(node0, remote, "step-00000010", keep=3)
    # node 0 saved step 20 (DeepSpeed wrote its `latest`) and uploaded; node 1's upload failed,
    # so rank 0 never committed it
    fake_checkpoint(node0, "step-00000020", 20)
    cs.upload_checkpoint_files(node0, remote, "step-00000020")
    assert (node0 / "latest").read_text().strip() == "step-00000020"
    assert cs.fetch_latest_checkpoint(remote, node0) == "step-00000010"
    assert cs.fetch_latest_checkpoint(remote, node1) == "step-00000010"
    assert (node0 / "latest").read_text().strip() == "step-00000010"
