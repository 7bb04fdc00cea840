"""Storage pieces that need no server: URIs, options, the local store, client set-up errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffar.operator.cli import main
from diffar.trainer import storage


def test_uris():
    assert storage.is_remote("s3://b/p") and not storage.is_remote("/data")
    assert storage.join("s3://b/p/", "train", "/manifest.json") == "s3://b/p/train/manifest.json"
    assert storage.split_s3("s3://bucket/a/b/") == ("bucket", "a/b")
    assert storage.local_path("file:///data/x") == Path("/data/x")
    assert storage.local_path("rel/dir") == Path("rel/dir")
    with pytest.raises(storage.StorageError, match="unsupported storage scheme 'gs'"):
        storage.local_path("gs://b/x")
    with pytest.raises(storage.StorageError, match="needs a bucket"):
        storage.split_s3("s3:///x")


def test_options_from_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9001")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("DIFFAR_S3_ADDRESSING_STYLE", "virtual")
    monkeypatch.setenv("DIFFAR_S3_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("DIFFAR_S3_CONCURRENCY", "6")
    o = storage.StorageOptions.from_env(read_timeout=5)
    assert (o.endpoint_url, o.region, o.addressing_style) == (
        "http://127.0.0.1:9001",
        "eu-west-1",
        "virtual",
    )
    assert (o.max_attempts, o.concurrency, o.read_timeout) == (3, 6, 5)
    monkeypatch.setenv("DIFFAR_S3_MAX_ATTEMPTS", "many")
    with pytest.raises(storage.StorageError, match="DIFFAR_S3_MAX_ATTEMPTS='many' is not a number"):
        storage.StorageOptions.from_env()


def test_local_store(tmp_path):
    s = storage.open_store(f"file://{tmp_path}/root")
    s.put_bytes("a/b.txt", b"hi")
    (tmp_path / "src").write_bytes(b"x" * 10)
    s.put_file("c/d.bin", tmp_path / "src")
    assert s.list("") == ["a/b.txt", "c/d.bin"]
    assert s.exists("a/b.txt") and not s.exists("nope")
    assert s.size("c/d.bin") == 10 and s.get_bytes("a/b.txt") == b"hi"
    s.get_file("c/d.bin", tmp_path / "out/d.bin", sha256=storage.sha256_file(tmp_path / "src"))
    assert (tmp_path / "out/d.bin").read_bytes() == b"x" * 10
    with pytest.raises(storage.ChecksumError, match="nothing was cached"):
        s.get_file("c/d.bin", tmp_path / "out/e.bin", sha256="0" * 64)
    assert not (tmp_path / "out/e.bin").exists() and not (tmp_path / "out/e.bin.part").exists()
    with pytest.raises(storage.NotFoundError, match="no such file"):
        s.get_bytes("missing")
    s.delete(["a/b.txt", "c/d.bin"])
    assert s.list("") == [] and not (tmp_path / "root/a").exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"AWS_ENDPOINT_URL": "localhost:9000"},
            "cannot set up the S3 client for endpoint localhost:9000 (Invalid endpoint",
        ),
        ({"AWS_PROFILE": "no-such-profile"}, "AWS profile 'no-such-profile' not found"),
    ],
)
def test_client_setup_errors_are_one_line(monkeypatch, capsys, env, message):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["data", "inspect", "s3://bucket/x"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
