"""`diffar eval` with s3:// model, data and results (moto's in-process S3 stand-in)."""

from __future__ import annotations

import json

import boto3
import pytest
from evalhelpers import save_byte_model, write_byte_dataset
from moto import mock_aws

from diffar.operator.cli import main


@pytest.fixture
def fake_s3(monkeypatch):
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="runs")
        yield client


def _upload(client, local_dir, prefix):
    for path in local_dir.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "runs", f"{prefix}/{path.relative_to(local_dir)}")


def test_eval_reads_and_writes_s3(fake_s3, tmp_path):
    data = write_byte_dataset(tmp_path / "val")
    ckpt = save_byte_model(tmp_path / "ckpt", "ar", data)
    _upload(fake_s3, ckpt, "ckpt")
    _upload(fake_s3, data, "val")
    rc = main(
        [
            "eval",
            "--model",
            "s3://runs/ckpt",
            "--data",
            "s3://runs/val",
            "--tasks",
            "none",
            "--val-sequences",
            "2",
            "--no-progress",
            "--name",
            "s3-run",
        ]
    )
    assert rc == 0
    body = fake_s3.get_object(Bucket="runs", Key="ckpt/results.json")["Body"].read()
    results = json.loads(body)
    assert results["run"] == "s3-run" and results["results_uri"] == "s3://runs/ckpt/results.json"
    assert results["validation"]["nll"]["sequences"] == 2


def test_tokenizer_json_beside_an_s3_dataset(fake_s3, tmp_path):
    from evalhelpers import TEXT

    from diffar.evaluator.tokenizers import resolve_tokenizer
    from diffar.trainer.bpe import train_bpe

    path = train_bpe([TEXT * 4], 300, tmp_path / "tokenizer.json")
    fake_s3.upload_file(str(path), "runs", "data/tokenizer.json")
    tok = resolve_tokenizer(None, [None, "s3://runs/data"], 300, str(tmp_path / "cache"))
    assert tok.vocab_size == 300 and tok.name.startswith("bpe300-")
    # Nothing beside the dataset: the vocabulary decides.
    assert resolve_tokenizer(None, ["s3://runs/none"], 257, str(tmp_path)).name == "bytes"
    explicit = resolve_tokenizer("s3://runs/data/tokenizer.json", [], 1, str(tmp_path / "c2"))
    assert explicit.name == tok.name
