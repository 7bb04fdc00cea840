"""A shrunken `make reproduce` end to end: the quickstart's data, a small ScalingStudy run with
`diffar reproduce --study` (children side by side, the fit, the report from the status), then
`diffar run study.yaml --local` on the same study, which reuses every child and refits."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def shrunken_study() -> dict:
    body = yaml.safe_load((REPO / "examples" / "local" / "study-reproduce.yaml").read_text())
    body["metadata"]["name"] = "mini"
    spec = body["spec"]
    spec["grid"].update(
        models=[{"name": "a", "dim": 32, "layers": 1, "heads": 2},
                {"name": "b", "dim": 48, "layers": 1, "heads": 2}],
        uniqueTokens=[3000],
        epochs=[4],
    )  # fmt: skip
    spec["perRun"] = {"validations": 8, "checkpoints": 1}
    spec["template"]["model"].update(seqLen=32, vocabSize=300)
    spec["template"]["training"].update(globalBatch=8, microBatch=8)
    spec["template"]["validation"]["maxTokens"] = 1000
    spec["fit"]["bootstrap"] = 2
    return body


def diffar(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffar.operator.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def test_reproduce_runs_a_local_study_and_writes_the_report_from_its_status(tmp_path):
    (tmp_path / "examples" / "local").mkdir(parents=True)
    for name in ("ar.yaml", "diffusion.yaml"):
        shutil.copy(REPO / "examples" / "local" / name, tmp_path / "examples" / "local" / name)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(shrunken_study()))
    (tmp_path / "docs").mkdir()
    r = diffar(tmp_path, "reproduce", "--study", "study.yaml", "--report", "docs/reproduction.md")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    status = json.loads((tmp_path / "runs" / "mini" / "status.json").read_text())
    assert status["phase"] == "Succeeded" and status["reason"] == "Fitted", status
    assert status["counts"] == {"total": 4, "waiting": 0, "active": 0, "succeeded": 4, "failed": 0}
    names = [c["name"] for c in status["children"]]
    assert names == [
        "mini-ar-a-u3k-e4",
        "mini-mdm-a-u3k-e4",
        "mini-ar-b-u3k-e4",
        "mini-mdm-b-u3k-e4",
    ]
    for child in status["children"]:
        assert child["phase"] == "Succeeded" and child["bestLoss"] > 0
        # Each child's intervals follow its own length: 46 steps / 8 validations.
        train = json.loads((tmp_path / "runs" / child["name"] / "train.json").read_text())
        assert train["validation"]["interval"] == 5
    for obj in ("ar", "mdm"):
        law = status["fit"][obj]
        assert law["fixed"] == ["alpha"] and law["values"]["alpha"] == 0.353
        assert law["points"] >= 7 and law["values"]["R_D_star"] > 0
        assert law["identified"]["R_D_star"] is True
    assert [c["uniqueTokens"] for c in status["fit"]["criticalCompute"]] == [3000]
    report = (tmp_path / "docs" / "reproduction.md").read_text()
    assert "| mini-ar-a-u3k-e4 |" in report and "R_D* (fit)" in report
    assert "the grid took" in report and "## What matches the paper and what does not" in report
    assert (tmp_path / "docs" / "img" / "reproduction" / "loss_vs_epochs.png").is_file()

    # The same study, reading the data reproduce prepared (its folder is named by U and vocab).
    from diffar.operator.local.quickstart import default_plan
    from diffar.operator.local.reproduce import with_data

    plan = default_plan(tmp_path / "examples" / "local", Path("runs"), unique_tokens=3000,
                        vocab_size=300)  # fmt: skip
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(with_data(shrunken_study(), plan.data_dir)))
    again = diffar(tmp_path, "run", "study.yaml", "--local")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already complete: nothing to do") == 4
    printed = yaml.safe_load(again.stdout[again.stdout.index("name: mini\n") :])
    assert printed["status"]["fit"]["ar"]["values"] == status["fit"]["ar"]["values"]
