"""Datasets on a real S3 server (SeaweedFS): prepare --out s3://, inspect, fetch into a cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from corpus import write_corpus

from diffar.operator.cli import main
from diffar.trainer import storage
from diffar.trainer.prepare import prepare
from diffar.trainer.shards import load_tokens, read_manifest


def test_prepare_to_s3_then_inspect_and_fetch(bucket, tmp_path, capsys, proxy):
    src = write_corpus(tmp_path / "c.jsonl")
    uri = f"s3://{bucket}/datasets/small"
    rc = main(
        ["data", "prepare", str(src), "--out", uri, "--unique-tokens", "6000",
         "--val-tokens", "1000", "--shard-tokens", "2500", "--quiet"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"-> {uri}/train" in out

    # the manifest is each dataset's last write: a half-written dataset never looks complete
    puts = [r.split("?")[0] for r in proxy.requests if r.startswith(("PUT", "POST"))]
    train_puts = [p for p in puts if "/small/train/" in p]
    assert train_puts[-1].endswith("/train/manifest.json")
    assert len(train_puts) == 4  # 3 shards + manifest

    keys = sorted(o["Key"] for o in proxy_client(bucket).list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [
        "datasets/small/train/manifest.json",
        "datasets/small/train/shard-00000.bin",
        "datasets/small/train/shard-00001.bin",
        "datasets/small/train/shard-00002.bin",
        "datasets/small/val/manifest.json",
        "datasets/small/val/shard-00000.bin",
    ]

    assert main(["data", "inspect", uri, "--verify"]) == 0
    text = capsys.readouterr().out
    assert f"{uri}/train\n  tokens        6,000 (unique tokens asked: 6,000)" in text
    assert "shards        3 (uint16)" in text
    assert text.count("verify        ok") == 2

    # the same bytes as a local prepare of the same input
    prepare([src], tmp_path / "local", 6000, 1000, shard_tokens=2500, progress=False)
    cache = tmp_path / "cache"
    capsys.readouterr()
    local = storage.resolve_dataset(f"{uri}/train", cache)
    assert local == cache / "s3" / bucket / "datasets/small/train"
    err = capsys.readouterr().err  # progress and throughput, a plain line when not a terminal
    assert f"fetch {uri}/train: 12.0 kB/12.0 kB (100%) in" in err and "MB/s done" in err
    assert np.array_equal(load_tokens(local, verify=True), load_tokens(tmp_path / "local/train"))
    assert read_manifest(local) == read_manifest(tmp_path / "local/train")

    # reused when present and valid: no shard GETs the second time
    before = len(proxy.requests)
    assert storage.resolve_dataset(f"{uri}/train", cache) == local
    again = [r for r in proxy.requests[before:] if r.startswith("GET") and ".bin" in r]
    assert again == []


def proxy_client(bucket):
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def test_fetch_only_the_shards_for_unique_tokens(bucket, tmp_path, proxy):
    src = write_corpus(tmp_path / "c.jsonl")
    uri = f"s3://{bucket}/ds"
    prepare([src], uri, 9000, 0, shard_tokens=2000, progress=False)
    local = storage.resolve_dataset(f"{uri}/train", tmp_path / "cache", unique_tokens=3000)
    assert sorted(p.name for p in local.glob("*.bin")) == ["shard-00000.bin", "shard-00001.bin"]
    assert len(load_tokens(local, limit=3000)) == 3000
    # a larger U later fetches the rest and reuses the two already there
    before = len(proxy.requests)
    storage.resolve_dataset(f"{uri}/train", tmp_path / "cache")
    got = sorted(
        r.split("/")[-1] for r in proxy.requests[before:] if r.startswith("GET ") and ".bin" in r
    )
    assert got == ["shard-00002.bin", "shard-00003.bin", "shard-00004.bin"]


def test_multipart_upload_and_parallel_parts(bucket, tmp_path, monkeypatch):
    # 3.5M tokens = 7 MB shard; 5 MB parts -> a 2-part multipart upload
    tokens = np.random.default_rng(0).integers(0, 50257, size=3_500_000, dtype=np.uint16)
    uri = f"s3://{bucket}/big"
    w = storage.dataset_writer(uri, {"part_size": 5 << 20})
    w.begin()
    info = w.put_shard("shard-00000.bin", tokens)
    from diffar.trainer.shards import Manifest

    w.finish(Manifest("gpt2", 50257, 50256, tokens.size, 1, (info,)))
    assert storage.verify_dataset(uri) == []
    local = storage.resolve_dataset(uri, tmp_path / "cache")
    assert np.array_equal(load_tokens(local), tokens.astype(np.int64))


def test_one_download_per_node(bucket, tmp_path, proxy):
    """Four ranks on one node resolve the same dataset at once: each shard is fetched once."""
    src = write_corpus(tmp_path / "c.jsonl")
    uri = f"s3://{bucket}/ds"
    prepare([src], uri, 8000, 0, shard_tokens=2000, progress=False)
    before = len(proxy.requests)
    code = (
        "import sys; from diffar.trainer.storage import resolve_dataset; "
        "from diffar.trainer.shards import load_tokens; "
        "p = resolve_dataset(sys.argv[1], sys.argv[2]); print(len(load_tokens(p, verify=True)))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, f"{uri}/train", str(tmp_path / "cache")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert [o[0].strip() for o in outs] == ["8000"] * 4
    shard_gets = [r for r in proxy.requests[before:] if r.startswith("GET ") and ".bin" in r]
    assert len(shard_gets) == 4  # 4 shards, one GET each, not one per rank


def test_overwrite_on_s3(bucket, tmp_path):
    src = write_corpus(tmp_path / "c.jsonl")
    uri = f"s3://{bucket}/ds"
    prepare([src], uri, 6000, 0, shard_tokens=1000, progress=False)
    with pytest.raises(
        storage.StorageError, match=r"manifest.json already exists; pass --overwrite"
    ):
        prepare([src], uri, 3000, 0, progress=False)
    prepare([src], uri, 3000, 0, shard_tokens=1500, progress=False, overwrite=True)
    store = storage.open_store(uri)
    assert store.list("train") == [
        "train/manifest.json",
        "train/shard-00000.bin",
        "train/shard-00001.bin",
    ]
    assert storage.verify_dataset(f"{uri}/train") == []


def test_a_trained_tokenizer_travels_with_its_dataset(bucket, tmp_path):
    from diffar.trainer.shards import Manifest

    tokens = np.arange(5000, dtype=np.uint16) % 300
    uri = f"s3://{bucket}/bpe"
    w = storage.dataset_writer(uri)
    w.begin()
    info = w.put_shard("shard-00000.bin", tokens)
    w.store.put_bytes("tokenizer.json", b'{"model": {}}')
    w.finish(Manifest("bpe-300", 300, 299, tokens.size, 1, (info,)))
    local = storage.resolve_dataset(uri, tmp_path / "cache", tokenizer="bpe-300", vocab_size=300)
    assert (local / "tokenizer.json").read_bytes() == b'{"model": {}}'


def test_cli_fetch(bucket, tmp_path, capsys):
    src = write_corpus(tmp_path / "c.jsonl")
    uri = f"s3://{bucket}/ds"
    prepare([src], uri, 5000, 0, shard_tokens=2000, progress=False)
    cache = tmp_path / "cache"
    rc = main(["data", "fetch", f"{uri}/train", "--cache-dir", str(cache), "--unique-tokens", "3k"])
    out = capsys.readouterr().out.strip()
    assert rc == 0
    assert out == str(cache / "s3" / bucket / "ds/train")
    assert len(load_tokens(out, limit=3000, verify=True)) == 3000
    assert sorted(p.name for p in Path(out).glob("*.bin")) == ["shard-00000.bin", "shard-00001.bin"]
