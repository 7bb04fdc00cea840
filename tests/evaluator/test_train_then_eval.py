"""Acceptance: a tiny model trained by `diffar train`, then `diffar eval` -> results.json."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml
from evalhelpers import write_alphabet_task, write_byte_dataset

pytestmark = pytest.mark.slow

TEXT = "".join(chr(97 + (i * 7 + i // 26) % 26) for i in range(6000))  # a learnable byte stream


def diffar(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_diffar_train_then_diffar_eval(tmp_path, objective):
    train = write_byte_dataset(tmp_path / "train", TEXT[:5000])
    val = write_byte_dataset(tmp_path / "val", TEXT[5000:])
    ckpt = tmp_path / "ckpt"
    config = {
        "name": f"tiny-{objective}",
        "objective": objective,
        "model": {"preset": "nano", "seq_len": 32, "vocab_size": 257, "dropout": 0.0},
        "data": {"train_uri": str(train), "val_uri": str(val)},
        "epochs": 2,
        "global_batch": 16,
        "micro_batch": 16,
        "optim": {"lr": 3e-3, "min_lr": 3e-4},
        "checkpoint": {"dir": str(ckpt)},
        "metrics": {"port": None},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    result = diffar("train", "--config", str(tmp_path / "train.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (ckpt / "export" / "model.pt").is_file()

    task = write_alphabet_task(tmp_path / "alpha.jsonl", 4)
    (tmp_path / "eval.yaml").write_text(
        yaml.safe_dump(
            {
                "model_uri": str(ckpt),
                "tasks": ["arc_easy", "lambada", str(task)],
                "limit": 2,
                "samples": 4,
                "val_sequences": 8,
                "chain_rule_sequences": 2,
                "progress": False,
            }
        )
    )
    result = diffar("eval", "--config", str(tmp_path / "eval.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((ckpt / "results.json").read_text())
    assert results["run"] == f"tiny-{objective}" and results["objective"] == objective
    assert results["unique_tokens"] == 5000
    assert results["epochs"] == pytest.approx(2.0, rel=0.1)
    assert results["tokens_seen"] > 0 and results["flops"] > 0 and results["params"] > 0
    names = ["nll"] if objective == "ar" else ["chain_rule_nll", "elbo", "elbo_paired"]
    # Each over the padded vocabulary (the paper's convention) and the text one.
    assert sorted(results["validation"]) == sorted(names + [n + "_text" for n in names])
    for est in results["validation"].values():
        assert 0 < est["loss"] < math.log(257) and est["bits_per_byte"] > 0
        assert est["stderr"] is not None
    assert (
        results["loss"] == results["validation"][names[0] if objective == "ar" else "elbo"]["loss"]
    )
    assert sorted(results["tasks"]) == ["alpha", "arc_easy", "lambada"]
    for res in results["tasks"].values():
        assert res["n"] == 2 and "acc_stderr" in res

    # The fit reads results.json files too (one point per objective is too few to fit).
    result = diffar("fit", str(ckpt / "results.json"))
    assert result.returncode == 2 and "cannot fit" in result.stderr
