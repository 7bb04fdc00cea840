"""`diffar compare` of results on S3 (a real SeaweedFS): a run prefix and a results.json URI."""

import json

from diffar.evaluator.compare import compare
from diffar.trainer.storage import open_store


def test_compare_reads_results_from_s3(bucket, tmp_path):
    def results(run, objective, key):
        return {
            "run": run,
            "objective": objective,
            "params": 1000,
            "unique_tokens": 3000,
            "epochs": 3.0,
            "validation": {key: {"loss": 5.0, "stderr": 0.1}},
            "training": {"val_curve": [[1.0, 6.0], [3.0, 5.0]], "best_val_loss": 5.0,
                         "best_val_epoch": 3.0},
        }  # fmt: skip

    store = open_store(f"s3://{bucket}")
    store.put_bytes("runs/a/results.json", json.dumps(results("a", "ar", "nll")).encode())
    store.put_bytes("elsewhere/b.json", json.dumps(results("b", "mdm", "elbo")).encode())
    png = tmp_path / "cmp.png"
    text = compare([f"s3://{bucket}/runs/a", f"s3://{bucket}/elsewhere/b.json"], png)
    assert text.splitlines()[0].split() == ["a", "b"]
    assert "5.000 (3.0)" in text
    assert png.read_bytes()[:4] == b"\x89PNG"
