"""The checkpoint commit protocol on local and file:// stores (no server): what counts as
committed, what a resume picks, what pruning may delete."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from diffar.trainer import checkpoint_store as cs
from diffar.trainer.storage import StorageError


def write_tag(root: Path, step: int, seed: int = 0) -> cs.Committed | None:
    """A DeepSpeed-like tag dir (model and two optimizer shards), uncommitted."""
    tag = cs.tag_for(step)
    files = {
        "mp_rank_00_model_states.pt": os.urandom(500 + seed),
        "zero_pp_rank_0_mp_rank_00_optim_states.pt": os.urandom(900),
        "zero_pp_rank_1_mp_rank_00_optim_states.pt": os.urandom(900),
    }
    for rel, data in files.items():
        (root / tag).mkdir(parents=True, exist_ok=True)
        (root / tag / rel).write_bytes(data)
    return tag


def commit(root: Path, step: int, keep: int = 5) -> list[str]:
    return cs.commit_checkpoint(str(root), cs.tag_for(step), keep)


def test_only_marked_tags_are_committed(tmp_path):
    write_tag(tmp_path, 10)
    commit(tmp_path, 10)
    write_tag(tmp_path, 20)  # saved, never committed (the upload or the commit failed)
    (tmp_path / "latest").write_text("step-00000020\n")  # as DeepSpeed would have written it
    found = cs.newest_intact_local(tmp_path, log=lambda m: None)
    assert found is not None and found.tag == "step-00000010"
    marker = json.loads((tmp_path / "step-00000010" / cs.CKPT_MARKER).read_text())
    assert set(marker["files"]) == {
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    }
    assert all(len(f["sha256"]) == 64 for f in marker["files"].values())


def test_empty_latest_and_truncated_shard_fall_back(tmp_path):
    for step in (10, 20, 30):
        write_tag(tmp_path, step)
        commit(tmp_path, step)
    (tmp_path / "latest").write_text("")  # an empty `latest` file
    shard = tmp_path / "step-00000030" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:100])  # a truncated optimizer shard
    flipped = tmp_path / "step-00000020" / "mp_rank_00_model_states.pt"
    data = bytearray(flipped.read_bytes())
    data[7] ^= 0xFF
    flipped.write_bytes(bytes(data))  # same size, other bytes
    lines: list[str] = []
    found = cs.newest_intact_local(tmp_path, log=lines.append)
    assert found is not None and found.tag == "step-00000010"
    assert "truncated (100 of 900 bytes)" in lines[0] and "step-00000030" in lines[0]
    assert "does not match its sha256" in lines[1]
    assert cs.fetch_latest_checkpoint(f"file://{tmp_path}", tmp_path) == "step-00000010"


def test_unreadable_marker_is_not_committed(tmp_path):
    write_tag(tmp_path, 10)
    commit(tmp_path, 10)
    write_tag(tmp_path, 20)
    commit(tmp_path, 20)
    (tmp_path / "step-00000020" / cs.CKPT_MARKER).write_text("{not json")
    assert cs.newest_intact_local(tmp_path, log=lambda m: None).tag == "step-00000010"


def test_pruning_touches_only_step_tags_and_keeps_the_newest_committed(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.pt").write_bytes(b"weights")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results.json").write_text("{}")
    (tmp_path / "step-notes").mkdir()  # not a tag: step- without digits
    (tmp_path / "step-notes" / "a.txt").write_text("keep me")
    pruned = []
    for step in (10, 20, 30):
        write_tag(tmp_path, step)
        pruned += commit(tmp_path, step, keep=1)
    assert pruned == ["step-00000010", "step-00000020"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["export", "latest", "results", "step-00000030", "step-notes"]
    # a newer save that never committed does not count: the committed one stays
    write_tag(tmp_path, 40)
    assert cs.prune_checkpoints(str(tmp_path), keep=1) == []
    assert (tmp_path / "step-00000030" / cs.CKPT_MARKER).exists()


def test_incomplete_tags_older_than_the_kept_ones_go(tmp_path):
    write_tag(tmp_path, 10)  # died before its commit
    write_tag(tmp_path, 20)
    assert commit(tmp_path, 20, keep=1) == ["step-00000010"]


def test_fetch_ignores_a_newer_uncommitted_local_latest(tmp_path):
    store, node = tmp_path / "store", tmp_path / "node0"
    write_tag(node, 10)
    cs.sync_checkpoint_up(node, f"file://{store}", "step-00000010", keep=3)
    # the node saved step 20 and wrote its `latest`, then the upload failed
    write_tag(node, 20)
    (node / "latest").write_text("step-00000020\n")
    assert cs.fetch_latest_checkpoint(f"file://{store}", node) == "step-00000010"
    assert (node / "latest").read_text().strip() == "step-00000010"


def test_fetch_repairs_a_damaged_local_copy(tmp_path):
    store, node = tmp_path / "store", tmp_path / "node0"
    write_tag(node, 10)
    cs.sync_checkpoint_up(node, f"file://{store}", "step-00000010", keep=3)
    shard = node / "step-00000010" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.write_bytes(b"")
    assert cs.fetch_checkpoint(f"file://{store}", node, "step-00000010") == "step-00000010"
    assert shard.read_bytes() == (store / "step-00000010" / shard.name).read_bytes()


def test_uncommit_then_recommit(tmp_path):
    write_tag(tmp_path, 10)
    commit(tmp_path, 10)
    cs.uncommit(str(tmp_path), "step-00000010")
    assert cs.newest_committed(str(tmp_path)) is None
    commit(tmp_path, 10)
    assert cs.newest_committed(str(tmp_path)).tag == "step-00000010"


def test_all_committed_damaged_is_an_error_not_a_fresh_start(tmp_path):
    write_tag(tmp_path, 10)
    commit(tmp_path, 10)
    (tmp_path / "step-00000010" / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(StorageError, match=r"every committed checkpoint \(step-00000010\) is"):
        cs.newest_intact_local(tmp_path, log=lambda m: None)


def test_only_incomplete_tags_start_afresh(tmp_path):
    write_tag(tmp_path, 10)
    lines: list[str] = []
    assert cs.newest_intact_local(tmp_path, log=lines.append) is None
    assert "only incomplete tags (step-00000010)" in lines[0]
