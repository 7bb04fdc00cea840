"""bench/gpu_repro.sh in its CPU smoke mode: the GPU reproduction's whole path (manifests ->
the operator's TrainConfig -> training -> validation in both vocabulary conventions -> summary),
at toy sizes, so that the script that runs offline on a GPU is exercised here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from diffar.trainer.shards import Manifest, write_manifest, write_shard

ROOT = Path(__file__).resolve().parents[2]


def _dataset(directory: Path, tokens: np.ndarray) -> None:
    directory.mkdir(parents=True)
    shard = write_shard(directory / "shard-00000.bin", tokens, "uint16")
    write_manifest(directory, Manifest("bytes", 257, 256, len(tokens), 1, (shard,), "uint16"))


@pytest.mark.slow
def test_gpu_repro_smoke_mode_runs_every_manifest_and_summarizes(tmp_path):
    text = (ROOT / "docs" / "reproduction.md").read_bytes() * 4
    tokens = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
    _dataset(tmp_path / "data" / "train", tokens[:3000])
    _dataset(tmp_path / "data" / "val", tokens[3000:4000])
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "bench/gpu_repro.sh", "--smoke", "--data", str(tmp_path / "data"),
         "--out", str(out), "--seeds", "1,2", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["smoke"] and summary["device"] == "cpu"
    assert set(summary["runs"]) == {"ar", "ar-mask", "diffusion"}
    for entry in summary["runs"].values():
        assert entry["seeds"] == [1, 2]
        for vocab in ("padded", "text"):
            assert 0 < entry[vocab]["mean"] < 10 and entry[vocab]["stderr"] >= 0
    assert "AR best - MDM best" in proc.stdout
    curve = [json.loads(x) for x in (out / "ar-mask-s1.jsonl").read_text().splitlines()]
    assert curve[0]["meta"]["input_mask_rate"] == 0.25
