"""results.json as data: reading it (path, file:// or s3://), the training summary it carries,
and the compact form the operator reads. Light on imports (no torch) so that `diffar compare`
and the local runner's status read results without loading a model stack.

The training summary comes from the trainer's step log (`metrics.log_file`, JSON lines): rows
with `loss` for each step, rows with `val_loss` and `epoch` at each validation, and on the last
row of each logging window the window's `seconds` of training (validation excluded).
"""

from __future__ import annotations

import json

from diffar.trainer.errors import UserError

RESULTS_NAME = "results.json"


def parse_log(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: the rows before it still count
        if isinstance(row, dict):
            rows.append(row)
    return rows


def validation_curve(rows: list[dict]) -> list[tuple[float, float]]:
    """(epoch, validation loss) at each validation, in order."""
    return [
        (float(r["epoch"]), float(r["val_loss"]))
        for r in rows
        if isinstance(r.get("val_loss"), int | float) and isinstance(r.get("epoch"), int | float)
    ]


def training_summary(rows: list[dict], tokens_per_step: int | None = None) -> dict:
    """Best validation loss and its epoch, the final validation and training losses, training
    wall time and throughput, and the validation curve; fields without data are None."""
    curve = validation_curve(rows)
    steps = [r for r in rows if isinstance(r.get("loss"), int | float)]
    seconds = sum(float(r["seconds"]) for r in steps if isinstance(r.get("seconds"), int | float))
    best = min(curve, key=lambda p: p[1]) if curve else None
    tps = None
    if seconds > 0 and tokens_per_step and steps:
        timed = [r for r in steps if "seconds" in r]
        if timed:  # steps of logged windows only (a log from before `seconds` has none)
            tps = len(steps) * tokens_per_step / seconds
    return {
        "best_val_loss": best[1] if best else None,
        "best_val_epoch": best[0] if best else None,
        "final_val_loss": curve[-1][1] if curve else None,
        "final_train_loss": float(steps[-1]["loss"]) if steps else None,
        "steps_logged": len(steps),
        "wall_seconds": round(seconds, 3) if seconds > 0 else None,
        "tokens_per_second": round(tps, 1) if tps else None,
        "val_curve": [[e, v] for e, v in curve],
    }


def read_uri_text(uri: str) -> str:
    """A small text file at a path, file:// or s3:// URI."""
    from diffar.trainer.errors import read_text
    from diffar.trainer.storage import is_remote, local_path, open_store

    if not is_remote(uri):
        return read_text(local_path(uri), "JSON file")
    root, key = uri.rstrip("/").rsplit("/", 1)
    data = open_store(root).get_bytes(key)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{uri} is a binary file, not results.json") from None


def load_results(text: str, where: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or "objective" not in data:
        raise UserError(f"{where}: not a diffar results.json (no objective field)")
    return data


def summary(results: dict, limit: int = 4096) -> str:
    """The compact results the operator reads from the eval pod's termination message (at most
    4 KiB): loss, its estimator, validation losses, task accuracies, the training summary's
    scalars and where results.json is."""
    training = results.get("training") or {}
    doc = {
        "loss": results.get("loss"),
        "loss_estimator": results.get("loss_estimator"),
        "validation": {k: v.get("loss") for k, v in (results.get("validation") or {}).items()},
        "tasks": {k: v.get("acc") for k, v in (results.get("tasks") or {}).items()},
        "training": {k: v for k, v in training.items() if k != "val_curve" and v is not None},
        "results_uri": results.get("results_uri"),
    }
    text = json.dumps(finite(doc), separators=(",", ":"))
    if len(text.encode()) > limit:  # many custom tasks: keep the headline numbers
        doc["tasks"] = {}
        text = json.dumps(finite(doc), separators=(",", ":"))
    return text


def finite(obj):
    """JSON has no NaN: a standard error of one sample is written as null."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj
