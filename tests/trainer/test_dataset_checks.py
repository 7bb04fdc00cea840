"""Datasets the trainer refuses in one line: ids outside the vocabulary, empty shards, a disk
that fills up while shards are written."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from diffar.trainer.errors import DiskFullError, disk_space
from diffar.trainer.shards import (
    DatasetError,
    Manifest,
    load_tokens,
    write_manifest,
    write_shard,
)


def dataset(root: Path, parts: list[np.ndarray], vocab: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shards = tuple(
        write_shard(root / f"shard-{i:05d}.bin", p, "uint16") for i, p in enumerate(parts)
    )
    total = sum(len(p) for p in parts)
    write_manifest(root, Manifest("synthetic", vocab, vocab - 1, total, 1, shards, "uint16"))
    return root


def test_token_ids_outside_the_vocab_name_the_shard(tmp_path):
    good = np.arange(100) % 50
    bad = good.copy()
    bad[37] = 50  # == vocab_size: one past the last id
    root = dataset(tmp_path / "d", [good, bad], vocab=50)
    with pytest.raises(DatasetError, match=r"shard-00001\.bin: token id 50 is outside the "
                       r"vocabulary \(vocab_size 50; first bad id at token 37"):  # fmt: skip
        load_tokens(root)
    assert len(load_tokens(root, limit=100)) == 100  # the first shard alone is fine


def test_empty_shard_is_a_clear_error(tmp_path):
    root = dataset(tmp_path / "d", [np.zeros(0, dtype=np.int64), np.arange(10)], vocab=50)
    with pytest.raises(DatasetError, match=r"shard-00000\.bin: empty shard \(0 tokens\)"):
        load_tokens(root)
    empty = dataset(tmp_path / "e", [], vocab=50)
    with pytest.raises(DatasetError, match="holds no tokens"):
        load_tokens(empty)


def test_full_disk_while_writing_a_shard(tmp_path):
    # /dev/full fails every write with ENOSPC, as a full volume does
    (tmp_path / "shard-00000.bin.tmp").symlink_to("/dev/full")
    with pytest.raises(DiskFullError, match=r"no space left on the device while writing shard "
                       r"shard-00000\.bin .*GB free"):  # fmt: skip
        write_shard(tmp_path / "shard-00000.bin", np.arange(1 << 16), "uint16")
    assert not (tmp_path / "shard-00000.bin").exists()


def test_full_disk_while_torch_saves(tmp_path):
    target = tmp_path / "ckpt" / "model.pt"
    target.parent.mkdir()
    target.symlink_to("/dev/full")
    with pytest.raises(DiskFullError) as e, disk_space("checkpoint step-00000010", target.parent):
        torch.save({"w": torch.zeros(1 << 16)}, target)
    assert "\n" not in str(e.value) and "checkpoint step-00000010" in str(e.value)


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(PermissionError), disk_space("x", tmp_path):
        raise PermissionError(13, "Permission denied")
    assert os.path.exists("/dev/full")
