"""`diffar run study.yaml --local`: a ScalingStudy on this machine, no cluster.

The study is expanded by the operator's own code (`diffar.operator.study.plan`), so the children
are the runs the cluster would create; each is resolved like `diffar run --local` and they train
side by side (`runner.run_side_by_side`), min(maxConcurrent, cores) at a time, one thread each.
A child that fails is reported and the others go on. Then the law is fitted in this process
(`study_fit.run_fit`) and the study's status, in the custom resource's shape, goes to
`<root>/<study>/status.json`, with the fitted points in `<root>/<study>/points.csv`.

Fit points: `final` takes one point per child (its evaluated validation loss, else the best of
its validation curve); `validationCurve` takes every validation at epoch >= 1 with the best loss
so far (early stopping: the law is monotone in epochs and cannot describe a loss that rises).
Running the command again reuses complete children and refits.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from diffar.trainer.errors import UserError


@dataclass
class LocalStudyResult:
    name: str
    dir: Path
    status: dict  # StudyStatus as JSON
    points: list[dict]
    seconds: float
    reused: int  # children already complete before this invocation


def curve_points(child, log_file: Path) -> list[dict]:
    """One point per validation at epoch >= 1: the best loss so far, and the raw one."""
    out, best = [], float("inf")
    if not log_file.is_file():
        return out
    for line in log_file.read_text().splitlines():
        row = json.loads(line)
        if "val_loss" not in row:
            continue
        best = min(best, row["val_loss"])
        if row["epoch"] >= 1.0:
            out.append(
                {
                    "objective": child.point.objective,
                    "params": child.params,
                    "unique_tokens": child.point.unique_tokens,
                    "epochs": round(row["epoch"], 4),
                    "loss": best,
                    "raw_loss": row["val_loss"],
                    "source": child.name,
                }
            )
    return out


def best_loss(run_status, log_file: Path) -> float | None:
    """The evaluated validation loss, else the lowest of the validation curve."""
    if run_status.results is not None and run_status.results.valLoss is not None:
        return run_status.results.valLoss
    losses = [
        json.loads(line)["val_loss"]
        for line in (log_file.read_text().splitlines() if log_file.is_file() else [])
        if "val_loss" in line
    ]
    return min(losses) if losses else None


def run_study_local(manifest: dict, root: Path, *, workers: int | None = None, log=print):
    from diffar.operator.local.runner import resolve, run_side_by_side
    from diffar.operator.runs import SpecError
    from diffar.operator.status import rfc3339
    from diffar.operator.study import Study, fit_input, fit_points, fit_status, fittable, plan
    from diffar.operator.study_api import StudyStatus
    from diffar.operator.study_fit import FitInput, run_fit

    started_at, started = datetime.now(UTC), time.monotonic()
    try:
        study = Study.from_body(manifest)
        children = plan(study, local=True)
    except SpecError as e:
        raise UserError(f"invalid study manifest: {e}") from None
    resolved = [resolve(c.body, root, processes=1) for c in children]
    slots = workers or max(1, min(study.spec.maxConcurrent, os.cpu_count() or 1))
    log(f"{study.name}: {len(children)} children, {slots} at a time, under {root}/")
    statuses = run_side_by_side(resolved, workers=slots, keep_going=True)
    reused = sum(s.reason == "AlreadyComplete" for s in statuses)

    rows, losses, curve = [], {}, []
    for c, run, st in zip(children, resolved, statuses, strict=True):
        loss = best_loss(st, run.log_file) if st.phase == "Succeeded" else None
        if loss is not None:
            losses[c.name] = loss
        if st.phase == "Succeeded":
            curve += curve_points(c, run.log_file)
        rows.append(
            {
                "name": c.name, "kind": c.kind, "objective": c.point.objective,
                "model": c.point.model.label, "params": c.params,
                "uniqueTokens": c.point.unique_tokens, "epochs": c.point.epochs,
                "phase": st.phase or "Failed",
                **({"bestLoss": loss} if loss is not None else {}),
                **({"message": st.message[-500:]} if st.phase == "Failed" and st.message else {}),
            }
        )  # fmt: skip
    failed = [r["name"] for r in rows if r["phase"] != "Succeeded"]
    points = curve if study.spec.fit.points == "validationCurve" else fit_points(children, losses)
    status: dict = {
        "observedGeneration": 1,
        "counts": {
            "total": len(rows),
            "waiting": 0,
            "active": 0,
            "succeeded": len(rows) - len(failed),
            "failed": len(failed),
        },
        "summary": f"{len(rows) - len(failed)}/{len(rows)} succeeded"
        + (f", {len(failed)} failed" if failed else ""),
        "children": rows,
        "failedChildren": failed,
        "startTime": rfc3339(started_at),
    }
    ok, short = fittable(study, points)
    if not study.spec.fit.enabled:
        status.update(phase="Succeeded" if len(failed) < len(rows) else "Failed",
                      reason="ChildrenFinished", message=status["summary"])  # fmt: skip
    elif not ok:
        status.update(phase="Failed", reason="TooFewResults",
                      message="cannot fit: " + "; ".join(short))  # fmt: skip
    else:
        keys = ("objective", "params", "unique_tokens", "epochs", "loss", "source")
        doc = fit_input(study, [{k: p[k] for k in keys} for p in points if p["objective"] in ok])
        log(f"{study.name}: fitting {len(doc['points'])} points ({', '.join(ok)})")
        result = run_fit(FitInput.model_validate(doc), log=log)
        status["fit"] = fit_status(result)
        note = f"; not fitted: {'; '.join(short)}" if short else ""
        status.update(phase="Succeeded", reason="Fitted",
                      message=f"law fitted to {len(doc['points'])} points{note}")  # fmt: skip
    status["completionTime"] = rfc3339(datetime.now(UTC))
    status = StudyStatus.model_validate(status).model_dump(mode="json", exclude_none=True)
    out = root / study.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "status.json").write_text(json.dumps(status, indent=2) + "\n")
    if points:
        with (out / "points.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(points[0]))
            writer.writeheader()
            writer.writerows(points)
    return LocalStudyResult(study.name, out, status, points, time.monotonic() - started, reused)


def format_study_status(name: str, status: dict) -> str:
    """The study's status as `kubectl get scalingstudy -o yaml` would show it."""
    import yaml

    return yaml.safe_dump({"name": name, "status": status}, sort_keys=False)
