"""The study's fit: `evaluator/scaling.py`'s law fitted to the children's results.

On a cluster the fit runs as a small Job (`<study>-fit-<hash>`, the evaluator image, which has
numpy and scipy; the operator image has neither): `diffar study-fit --config fit.json` prints the
compact result and writes it to the container's termination message, which the operator copies
into the study's status. Locally (`diffar run study.yaml --local`) `run_fit` is called directly.

`fit.json` (built by `study.fit_input`): points (objective, params, unique_tokens, epochs, loss,
source), the U values for C_crit, fixed constants per objective, bootstrap resamples and seed.
The result stays under the 4 KiB of a termination message: numbers are rounded to 6 digits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from diffar.trainer.errors import UserError

TERMINATION_LIMIT = 4096


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FitPoint(_Doc):
    objective: Literal["ar", "mdm"]
    params: float = Field(..., gt=0)
    unique_tokens: float = Field(..., gt=0)
    epochs: float = Field(..., gt=0)
    loss: float = Field(..., gt=0, lt=1000)
    source: str = Field("", max_length=256)


Fixed = dict[
    Literal["E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star"], Annotated[float, Field(gt=0)]
]


class FitInput(_Doc):
    points: list[FitPoint] = Field(..., min_length=1, max_length=100_000)
    unique_tokens: list[Annotated[float, Field(gt=1)]] = Field(default_factory=list, max_length=16)
    fixed: dict[Literal["ar", "mdm"], Fixed] = Field(default_factory=dict)
    bootstrap: int = Field(50, ge=0, le=1000)
    seed: int = Field(0, ge=0)


def _round(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.6g}")


def run_fit(inp: FitInput, log=None) -> dict:
    """Fit each objective present; C_crit where both are. Compact, JSON-ready."""
    from diffar.evaluator.scaling import (
        PARAMS,
        Point,
        critical_compute,
        critical_compute_law,
        fit_law,
    )

    points = [
        Point(p.objective, p.params, p.unique_tokens, p.epochs, p.loss, p.source)
        for p in inp.points
    ]
    out: dict = {}
    for obj in ("ar", "mdm"):
        if not any(p.objective == obj for p in points):
            continue
        if log:
            log(f"fitting {obj}: {sum(p.objective == obj for p in points)} points")
        fit = fit_law(
            points, obj, dict(inp.fixed.get(obj) or {}), bootstrap=inp.bootstrap, seed=inp.seed
        )
        out[obj] = {
            "values": {p: _round(fit.values[p]) for p in PARAMS},
            "stderr": {p: _round(fit.stderr[p]) for p in PARAMS if p in fit.stderr},
            "identified": fit.identified,
            "fixed": sorted(fit.fixed),
            "points": fit.points,
            "rmse_log_loss": _round(fit.rmse_log),
        }
    if "ar" in out and "mdm" in out:
        ar = {p: float(v) for p, v in out["ar"]["values"].items()}
        mdm = {p: float(v) for p, v in out["mdm"]["values"].items()}
        out["c_crit"] = [
            {"unique_tokens": u, "flops": _round(critical_compute(ar, mdm, u))}
            for u in inp.unique_tokens
        ]
        law = critical_compute_law(ar, mdm)
        if law:
            out["c_crit_law"] = {
                "exponent": _round(law["exponent"]),
                "coefficient": _round(law["coefficient"]),
            }
    return out


def read_input(path: str) -> FitInput:
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not JSON: {e}") from None
    try:
        return FitInput.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{path}: {where}: {first['msg']} ({e.error_count()} problems)") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study-fit",
        help="fit a ScalingStudy's children (what the study's fit Job runs)",
        description="Read fit.json (points, fixed constants, bootstrap), fit the data-constrained "
        "law per objective and C_crit, print the result as one line of JSON and write it to "
        "$DIFFAR_TERMINATION_LOG when set (the operator reads it from there).",
    )
    p.add_argument("--config", required=True, help="fit.json, as the operator writes it")
    p.set_defaults(handler=_study_fit)


def _study_fit(args: argparse.Namespace) -> int:
    inp = read_input(args.config)
    result = run_fit(inp, log=lambda s: print(s, file=sys.stderr, flush=True))
    text = json.dumps(result, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > TERMINATION_LIMIT:
        raise UserError(
            f"the fit's result is {len(text)} bytes, over the {TERMINATION_LIMIT} of a "
            "termination message; lower fit.criticalComputeAt"
        )
    target = os.environ.get("DIFFAR_TERMINATION_LOG")
    if target:
        Path(target).write_text(text)
    print(text)
    return 0
