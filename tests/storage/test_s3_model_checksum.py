"""`fetch_model` (how `diffar eval` gets an exported model) checks the sha256 written at export:
a model altered or cut short in the store, or one with no checksum, is refused in one line."""

from __future__ import annotations

import os

import pytest
import torch

from diffar.evaluator.run import fetch_model
from diffar.trainer import storage
from diffar.trainer.config import parse_config
from diffar.trainer.errors import UserError
from diffar.trainer.export import EXPORT_CHECKSUM, EXPORT_NAME, load_export, save_export
from diffar.trainer.model import Transformer


def export(root):
    cfg = parse_config(
        {
            "objective": "ar",
            "model": {"preset": "nano", "vocab_size": 64, "seq_len": 16},
            "data": {"train_uri": "/unused"},
        }
    )
    torch.manual_seed(0)
    save_export(
        root / EXPORT_NAME, Transformer(cfg.model, causal=True).state_dict(), cfg, 3, 48, 1.0
    )
    return root


def test_remote_model_is_verified(bucket, tmp_path):
    local = export(tmp_path / "run")
    uri = f"s3://{bucket}/runs/a"
    store = storage.open_store(uri)
    for rel in (EXPORT_NAME, EXPORT_CHECKSUM):
        store.put_file(rel, local / rel)
    got = fetch_model(uri, str(tmp_path / "cache"))
    assert load_export(got).step == 3

    data = (local / EXPORT_NAME).read_bytes()
    store.put_bytes(EXPORT_NAME, data[:-10] + os.urandom(10))  # altered in the store
    with pytest.raises(UserError, match=r"model\.pt: sha256 does not match"):
        fetch_model(uri, str(tmp_path / "cache2"))

    store.delete([EXPORT_CHECKSUM])
    with pytest.raises(UserError, match=r"model\.pt\.sha256: missing"):
        fetch_model(f"{uri}/{EXPORT_NAME}", str(tmp_path / "cache3"))


def test_local_model_is_verified(tmp_path):
    local = export(tmp_path / "run")
    assert fetch_model(str(local), str(tmp_path / "c")) == local / EXPORT_NAME
    path = local / EXPORT_NAME
    path.write_bytes(path.read_bytes()[:-1])  # a cut-short copy
    with pytest.raises(UserError, match=r"sha256 does not match model\.pt\.sha256"):
        fetch_model(f"file://{path}", str(tmp_path / "c"))
