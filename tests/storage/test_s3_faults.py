"""Faults against a real S3 server: throttling and 5xx, dropped and resumed downloads, a server
restart mid-download, a corrupted object, and the one-line messages for what the user must fix."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from corpus import write_corpus
from weed import DENIED_ACCESS_KEY, DENIED_SECRET_KEY, SECRET_KEY, Weed, free_port

from diffar.operator.cli import main
from diffar.trainer import storage
from diffar.trainer.prepare import prepare
from diffar.trainer.shards import DatasetError, Manifest, load_tokens


@pytest.fixture
def dataset(bucket, tmp_path) -> str:
    src = write_corpus(tmp_path / "c.jsonl")
    uri = f"s3://{bucket}/ds"
    prepare([src], uri, 6000, 500, shard_tokens=2000, progress=False)
    return f"{uri}/train"


def one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.strip()


# ---------------------------------------------------------------- retries


@pytest.mark.parametrize(
    ("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (429, "TooManyRequests")]
)
def test_throttling_and_5xx_are_retried(dataset, tmp_path, proxy, status, code, caplog):
    proxy.fail(2, status=status, code=code, match="GET")  # manifest GET and more
    proxy.fail(2, status=status, code=code, match="shard-00001.bin")
    with caplog.at_level(logging.WARNING, logger="diffar.trainer.storage"):
        local = storage.resolve_dataset(dataset, tmp_path / "cache")
    assert proxy.injected == 4
    assert len(load_tokens(local, verify=True)) == 6000
    retries = [r.getMessage() for r in caplog.records]
    assert any(code in m and "retry" in m for m in retries)
    assert all(SECRET_KEY not in m for m in retries)


def test_uploads_are_retried(bucket, tmp_path, proxy):
    proxy.fail(3, status=503, code="SlowDown", match="PUT")
    src = write_corpus(tmp_path / "c.jsonl")
    prepare([src], f"s3://{bucket}/up", 3000, 0, shard_tokens=1000, progress=False)
    assert proxy.injected == 3
    assert storage.verify_dataset(f"s3://{bucket}/up/train") == []


def test_persistent_throttling_gives_up_with_one_line(dataset, proxy, capsys):
    proxy.fail(50, status=503, code="SlowDown", match="manifest.json")
    err = one_line_error(capsys, ["data", "inspect", dataset])
    assert f"{dataset}/manifest.json: the store kept failing (HTTP 503) after 4 attempts" in err


# ---------------------------------------------------------------- resume


def test_dropped_download_resumes_with_a_ranged_get(bucket, tmp_path, proxy):
    tokens = (np.arange(1_000_000) % 50257).astype(np.uint16)  # 2 MB, every id in the vocab
    uri = f"s3://{bucket}/one"
    w = storage.dataset_writer(uri)
    w.begin()
    info = w.put_shard("shard-00000.bin", tokens)
    w.finish(Manifest("gpt2", 50257, 50256, tokens.size, 1, (info,)))
    proxy.cut(after=300_000, match="shard-00000.bin")
    proxy.cut(after=500_000, match="shard-00000.bin")
    local = storage.resolve_dataset(uri, tmp_path / "cache")
    assert np.array_equal(load_tokens(local, verify=True), tokens.astype(np.int64))
    gets = [r for r in proxy.requests if r.startswith("GET") and "shard-00000.bin" in r]
    assert len(gets) == 3  # full, then two resumes
    assert not list(local.glob("*.part"))


def test_interrupted_part_file_is_resumed_by_a_later_process(bucket, tmp_path, proxy):
    tokens = (np.arange(400_000) % 50257).astype(np.uint16)
    uri = f"s3://{bucket}/one"
    w = storage.dataset_writer(uri)
    w.begin()
    info = w.put_shard("shard-00000.bin", tokens)
    w.finish(Manifest("gpt2", 50257, 50256, tokens.size, 1, (info,)))
    cache = tmp_path / "cache"
    dest = cache / "s3" / bucket / "one"
    dest.mkdir(parents=True)
    (dest / "shard-00000.bin.part").write_bytes(tokens.tobytes()[:123_456])  # a killed fetch
    storage.resolve_dataset(uri, cache)
    assert np.array_equal(load_tokens(dest), tokens.astype(np.int64))


@pytest.fixture
def own_weed(tmp_path, s3env, monkeypatch):
    """A server of this test's own, so stopping it does not disturb the others."""
    w = Weed(tmp_path / "weed")
    w.start(new_ports_on_failure=2)
    monkeypatch.setenv("AWS_ENDPOINT_URL", w.endpoint)
    monkeypatch.setenv(
        "DIFFAR_S3_MAX_ATTEMPTS", "40"
    )  # ~70 s: a loaded machine restarts weed slowly
    monkeypatch.setenv("DIFFAR_S3_BACKOFF", "0.2")
    monkeypatch.setenv("DIFFAR_S3_BACKOFF_MAX", "2")
    monkeypatch.setenv("DIFFAR_S3_READ_TIMEOUT", "5")
    yield w
    w.stop()


def test_server_restart_mid_download_resumes_and_verifies(own_weed, tmp_path):
    own_weed.client().create_bucket(Bucket="restart")
    tokens = np.random.default_rng(1).integers(0, 50257, size=24_000_000, dtype=np.uint16)
    uri = "s3://restart/ds"
    w = storage.dataset_writer(uri)
    w.begin()
    info = w.put_shard("shard-00000.bin", tokens)  # 48 MB
    w.finish(Manifest("gpt2", 50257, 50256, tokens.size, 1, (info,)))

    store = storage.open_store(uri)
    seen = {"bytes": 0, "restarted": False}
    restart_done = threading.Event()

    def restart():
        own_weed.start()
        restart_done.set()

    def progress(n: int) -> None:
        seen["bytes"] += n
        if not seen["restarted"] and seen["bytes"] >= 8 << 20:
            seen["restarted"] = True
            own_weed.stop(kill=True)  # crash the server mid-stream
            time.sleep(0.5)
            threading.Thread(target=restart, daemon=True).start()

    dest = tmp_path / "shard.bin"
    store.get_file(
        "shard-00000.bin", dest, sha256=info.sha256, size=tokens.nbytes, progress=progress
    )
    assert seen["restarted"]
    assert restart_done.wait(60)
    assert dest.stat().st_size == tokens.nbytes
    assert storage.sha256_file(dest) == info.sha256
    assert not Path(str(dest) + ".part").exists()


# ---------------------------------------------------------------- corruption


def test_corrupted_object_is_a_clear_error_and_nothing_is_cached(dataset, tmp_path, s3env, capsys):
    bucket = dataset.split("/")[2]
    key = "ds/train/shard-00001.bin"
    client = s3env.client()
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[100] ^= 0x5A
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    cache = tmp_path / "cache"
    with pytest.raises(storage.ChecksumError) as e:
        storage.resolve_dataset(dataset, cache)
    msg = str(e.value)
    assert msg == (
        f"{dataset}/shard-00001.bin: sha256 does not match the manifest (corrupted shard); "
        "nothing was cached; re-upload it or re-run `diffar data prepare --overwrite`"
    )
    cached = sorted(p.name for p in (cache / "s3" / bucket / "ds/train").iterdir())
    assert "shard-00001.bin" not in cached and "shard-00001.bin.part" not in cached
    assert "manifest.json" not in cached  # the cached dataset is not complete

    # the CLI says the same in one line; --verify lists the bad shard
    rc = main(["data", "inspect", dataset, "--verify"])
    assert rc == 1
    assert (
        f"{dataset}/shard-00001.bin: sha256 mismatch (corrupted shard)" in capsys.readouterr().out
    )


# ---------------------------------------------------------------- one-line messages


def test_missing_bucket(s3env, capsys):
    err = one_line_error(capsys, ["data", "inspect", "s3://no-such-bucket-xyz/ds"])
    assert err == (
        f"diffar data: error: s3://no-such-bucket-xyz: bucket does not exist (at {s3env.endpoint}); "
        "create it or fix the bucket name in the URI"
    )


def test_missing_bucket_on_prepare(s3env, tmp_path, capsys):
    src = write_corpus(tmp_path / "c.jsonl", docs=20)
    err = one_line_error(
        capsys,
        ["data", "prepare", str(src), "--out", "s3://no-such-bucket-xyz/ds", "--unique-tokens",
         "100", "--quiet"],
    )  # fmt: skip
    assert "s3://no-such-bucket-xyz: bucket does not exist" in err


def test_missing_manifest(bucket, capsys):
    err = one_line_error(capsys, ["data", "inspect", f"s3://{bucket}/nothing/here"])
    assert err == (
        f"diffar data: error: s3://{bucket}/nothing/here/manifest.json: no manifest; prepare the "
        "dataset with `diffar data prepare ... --out` (or it is incomplete)"
    )


def test_missing_shard_key(dataset, s3env, tmp_path):
    bucket = dataset.split("/")[2]
    s3env.client().delete_object(Bucket=bucket, Key="ds/train/shard-00002.bin")
    with pytest.raises(storage.NotFoundError) as e:
        storage.resolve_dataset(dataset, tmp_path / "cache")
    assert str(e.value) == (
        f"{dataset}/shard-00002.bin: object not found in bucket {bucket}; check the URI (or the "
        "dataset/checkpoint was never written there)"
    )


def test_access_denied(dataset, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DENIED_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DENIED_SECRET_KEY)
    err = one_line_error(capsys, ["data", "inspect", dataset])
    bucket = dataset.split("/")[2]
    assert err == (
        f"diffar data: error: {dataset}/manifest.json: access denied; grant these credentials "
        f"s3:GetObject on bucket {bucket} (IAM role or bucket policy)"
    )


def test_wrong_secret(dataset, monkeypatch, capsys):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    err = one_line_error(capsys, ["data", "inspect", dataset])
    assert "access denied (SignatureDoesNotMatch): the credentials are not valid for" in err
    assert "not-the-secret" not in err


def test_no_credentials(dataset, monkeypatch, capsys):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    err = one_line_error(capsys, ["data", "inspect", dataset])
    assert err.endswith(
        "no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
        "AWS_PROFILE, or a web-identity role (IRSA)"
    )


def test_wrong_endpoint(dataset, monkeypatch, capsys):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("DIFFAR_S3_MAX_ATTEMPTS", "2")
    err = one_line_error(capsys, ["data", "inspect", dataset])
    assert err.startswith(
        f"diffar data: error: {dataset}/manifest.json: cannot reach the S3 endpoint "
        f"http://127.0.0.1:{port} after 2 attempts ("
    )
    assert err.endswith("check AWS_ENDPOINT_URL and that the store is up")


def test_manifest_does_not_match_the_run(dataset, tmp_path):
    with pytest.raises(
        DatasetError, match=r"dataset tokenizer 'gpt2' does not match the run's 'llama'"
    ):
        storage.resolve_dataset(dataset, tmp_path / "c", tokenizer="llama")
    with pytest.raises(
        DatasetError, match=r"vocab_size 50257 does not match the run's model.vocab_size 32000"
    ):
        storage.resolve_dataset(dataset, tmp_path / "c", vocab_size=32000)
    with pytest.raises(
        DatasetError, match=r"asked for 1,000,000 unique tokens but the dataset holds 6,000"
    ):
        storage.resolve_dataset(dataset, tmp_path / "c", unique_tokens=1_000_000)
    assert not list((tmp_path / "c").rglob("*.bin"))  # checked before any download


def _one_shard(bucket: str, n: int, name: str = "one") -> tuple[str, np.ndarray, str]:
    tokens = np.random.default_rng(n).integers(0, 50257, size=n, dtype=np.uint16)
    uri = f"s3://{bucket}/{name}"
    w = storage.dataset_writer(uri)
    w.begin()
    info = w.put_shard("shard-00000.bin", tokens)
    w.finish(Manifest("gpt2", 50257, 50256, tokens.size, 1, (info,)))
    return uri, tokens, info.sha256


def test_parallel_ranged_download_survives_a_cut(bucket, tmp_path, proxy):
    uri, tokens, sha = _one_shard(bucket, 3_000_000)  # 6 MB: six 1 MiB ranges
    proxy.cut(after=200_000, match="shard-00000.bin")
    store = storage.open_store(uri, {"range_size": 1 << 20, "concurrency": 3})
    dest = tmp_path / "s.bin"
    store.get_file("shard-00000.bin", dest, sha256=sha, size=tokens.nbytes)
    assert dest.read_bytes() == tokens.tobytes()
    gets = [r for r in proxy.requests if r.startswith("GET") and "shard-00000.bin" in r]
    assert len(gets) == 7  # six pieces, one of them resumed once
    assert not (tmp_path / "s.bin.part.ranges").exists()


def test_parallel_download_resumes_finished_pieces_of_a_killed_process(bucket, tmp_path, proxy):
    uri, tokens, sha = _one_shard(bucket, 3_000_000)
    raw = tokens.tobytes()
    dest = tmp_path / "s.bin"
    piece = 1 << 20
    # a killed earlier fetch: pieces 0, 2 and 5 written in place and logged
    part = bytearray(len(raw))
    for i in (0, 2, 5):
        part[i * piece : (i + 1) * piece] = raw[i * piece : (i + 1) * piece]
    (tmp_path / "s.bin.part").write_bytes(bytes(part))
    (tmp_path / "s.bin.part.ranges").write_text("0\n2\n5\n")
    store = storage.open_store(uri, {"range_size": piece, "concurrency": 2})
    store.get_file("shard-00000.bin", dest, sha256=sha, size=len(raw))
    assert dest.read_bytes() == raw
    gets = [r for r in proxy.requests if r.startswith("GET") and "shard-00000.bin" in r]
    assert len(gets) == 3  # only pieces 1, 3 and 4


def test_failed_upload_leaves_no_manifest(bucket, tmp_path, proxy, capsys):
    src = write_corpus(tmp_path / "c.jsonl")
    proxy.fail(1000, status=503, code="SlowDown", match="shard-00001.bin")
    err = one_line_error(
        capsys,
        ["data", "prepare", str(src), "--out", f"s3://{bucket}/ds", "--unique-tokens", "3000",
         "--shard-tokens", "1000", "--quiet"],
    )  # fmt: skip
    assert f"s3://{bucket}/ds/train/shard-00001.bin: the store kept failing (SlowDown)" in err
    assert not storage.open_store(f"s3://{bucket}/ds").exists("train/manifest.json")


def test_train_refuses_a_dataset_of_another_vocabulary(dataset, tmp_path):
    import subprocess
    import sys

    import yaml

    cfg = {
        "objective": "ar",
        "model": {"preset": "nano", "seq_len": 32, "vocab_size": 128, "dropout": 0},
        "data": {"train_uri": dataset, "cache_dir": str(tmp_path / "cache")},
        "metrics": {"port": None},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", "train", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip() == (
        f"diffar train: error: {dataset}: dataset vocab_size 50257 does not match the run's "
        "model.vocab_size 128; fix model.vocab_size or re-prepare the data"
    )
