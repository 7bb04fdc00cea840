"""`make reproduce`: a ScalingStudy on this machine, written up in docs/reproduction.md.

The grid lives in `examples/local/study-reproduce.yaml` (both objectives x two model sizes x two
unique-token budgets x 100 epochs, validation about 25 times per run); this module prepares the
quickstart's data, points the study's template at it, runs the study locally
(`operator/local/study.py`, the same expansion the operator uses) and renders the report from the
study's status: its children's best losses, the fitted law, C_crit, and plots.

A point at epoch e of a run planned for E > e epochs sits mid-way through a cosine schedule, so
its loss is a little above that of a run planned for exactly e epochs (the paper trains one run
per epoch count). The report says so; it is the price of a grid that fits in minutes of CPU.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import yaml

from diffar.trainer.errors import UserError

STUDY = Path("examples") / "local" / "study-reproduce.yaml"
PAPER_R_D = {"ar": 31.0, "mdm": 500.0}
ANALYSIS_HEADING = "## What matches the paper and what does not"


def load_study(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def with_data(manifest: dict, data_dir: Path) -> dict:
    """The study reading the data that reproduce prepared (wherever --root put it)."""
    body = copy.deepcopy(manifest)
    data = body["spec"]["template"]["data"]
    data.update(trainUri=str(data_dir / "train"), valUri=str(data_dir / "val"))
    return body


def reproduce(repo: Path, root: Path, report: Path, study_path: Path | None = None, log=print):
    from diffar.operator.local.quickstart import default_plan, prepare_data
    from diffar.operator.local.study import run_study_local

    manifest = load_study(study_path or repo / STUDY)
    try:
        grid_u = manifest["spec"]["grid"]["uniqueTokens"]
        vocab = manifest["spec"]["template"]["model"]["vocabSize"]
    except (KeyError, TypeError):
        raise UserError("the reproduce study needs spec.grid.uniqueTokens and "
                        "spec.template.model.vocabSize") from None  # fmt: skip
    started = time.monotonic()
    plan = default_plan(repo / "examples" / "local", root, unique_tokens=max(grid_u),
                        vocab_size=vocab)  # fmt: skip
    prepare_data(plan, log=log)
    result = run_study_local(with_data(manifest, plan.data_dir), root, log=log)
    if result.status.get("phase") != "Succeeded":
        raise UserError(
            f"the study ended {result.status.get('phase')}: {result.status.get('message')} "
            f"(status in {result.dir / 'status.json'})"
        )
    plots = write_plots(result, report.parent / "img" / "reproduction")
    analysis = "(to be written after the run)\n"
    if report.is_file() and ANALYSIS_HEADING in report.read_text():
        analysis = report.read_text().split(ANALYSIS_HEADING, 1)[1].lstrip("\n")
    text = render_report(manifest, result.status, result.points, plots, report.parent,
                         time.monotonic() - started, result.reused)  # fmt: skip
    report.write_text(text + "\n" + ANALYSIS_HEADING + "\n\n" + analysis)
    log(f"reproduction: {len(result.points)} points from {len(result.status['children'])} "
        f"runs; report {report}")  # fmt: skip
    return 0


def write_plots(result, directory: Path) -> list[str]:
    """The fit's plots, from the study's status (no refit)."""
    from diffar.evaluator.plots import write_plots as plot
    from diffar.evaluator.scaling import LawFit, Point

    points = [Point(p["objective"], p["params"], p["unique_tokens"], p["epochs"], p["loss"])
              for p in result.points]  # fmt: skip
    fit = result.status.get("fit") or {}
    fits = {o: LawFit(o, dict(fit[o]["values"])) for o in ("ar", "mdm") if o in fit}
    return plot(directory, points, fits)


def _minutes(seconds: float) -> str:
    n = round(seconds / 60)
    return f"{n} minute" if n == 1 else f"{n} minutes"


def _fixed(manifest: dict) -> list[str]:
    fixed = ((manifest.get("spec") or {}).get("fit") or {}).get("fixed") or {}
    return [f"{o}.{k}={v}" for o in ("ar", "mdm") for k, v in (fixed.get(o) or {}).items()]


def _describe(manifest: dict) -> str:
    spec = manifest["spec"]
    g, t = spec["grid"], spec["template"]
    models = ", ".join(m.get("name") or m.get("preset") for m in g["models"])
    us = " and ".join(f"{u:,}" for u in g["uniqueTokens"])
    eps = ", ".join(f"{e:g}" for e in g["epochs"])
    per = (spec.get("perRun") or {}).get("validations")
    return (
        f"The ScalingStudy `{manifest['metadata']['name']}` (`{STUDY.as_posix()}`): objectives "
        f"{', '.join(g['objectives'])}; models {models} (L = {t['model']['seqLen']}; the "
        f"quickstart's {t['model']['vocabSize']}-id BPE on Shakespeare); U = {us} unique tokens; "
        f"{eps} epochs" + (f"; validation about {per} times per run" if per else "") + "."
    )


def render_report(manifest, status, points, plots, docs: Path, seconds: float, reused: int = 0):
    runs = status["children"]
    took = f"the grid took {_minutes(seconds)}."
    if reused:  # an earlier invocation trained those runs: this one's time is not the grid's
        took = (
            f"this invocation took {_minutes(seconds)}, reusing {reused} of {len(runs)} "
            "runs already complete (delete the study's runs under runs/ to time the whole grid)."
        )
    lines = [
        "# Reproduction on CPU (`make reproduce`)",
        "",
        f"Measured on this project's 2-core machine; {took}",
        _describe(manifest),
        "Each validation point is one row for the fit, with the best loss up to that epoch",
        "(early stopping: the law cannot describe a loss that rises). See",
        "`operator/local/reproduce.py` for the caveat: mid-schedule points overstate the loss of a run",
        "planned for exactly that many epochs. This page is written from the study's status",
        f"(`runs/{manifest['metadata']['name']}/status.json`).",
        "",
        "| run | params | best val loss (epoch) | final val loss (epoch) |",
        "| --- | --- | --- | --- |",
    ]
    for run in runs:
        mine = [p for p in points if p.get("source") == run["name"]]
        if not mine:
            lines.append(f"| {run['name']} | {run['params']:,} | {run['phase']} | |")
            continue
        best = min(mine, key=lambda p: p.get("raw_loss", p["loss"]))
        last = max(mine, key=lambda p: p["epochs"])
        lines.append(
            f"| {run['name']} | {run['params']:,} | {best.get('raw_loss', best['loss']):.3f} "
            f"({best['epochs']:.0f}) | {last.get('raw_loss', last['loss']):.3f} "
            f"({last['epochs']:.0f}) |"
        )
    lines += ["", "## Fitted data-constrained law (Muennighoff et al. 2023)", ""]
    fixed = _fixed(manifest)
    lines += [f"Held fixed: {', '.join(fixed) or 'nothing'}; bootstrap standard errors.", ""]
    lines += ["| objective | R_D* (fit) | R_D* (paper) | R_N* | E | alpha | beta | rmse log loss |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    fit = status.get("fit") or {}
    for obj in ("ar", "mdm"):
        if obj not in fit:
            continue
        f = fit[obj]
        v, se = f["values"], f.get("stderr", {})

        def fmt(name, v=v, se=se):
            err = se.get(name)
            return f"{v[name]:.3g}" + (f" ± {err:.2g}" if err is not None else "")

        rmse = f.get("rmseLogLoss")
        lines.append(
            f"| {obj} | {fmt('R_D_star')} | ~{PAPER_R_D[obj]:.0f} | {fmt('R_N_star')} | "
            f"{fmt('E')} | {fmt('alpha')} | {fmt('beta')} | "
            f"{'' if rmse is None else f'{rmse:.4f}'} |"
        )
    if fit.get("criticalCompute"):
        lines += ["", "Critical compute where diffusion starts to beat AR at equal unique tokens:",
                  ""]  # fmt: skip
        for row in fit["criticalCompute"]:
            flops = row.get("flops")
            lines.append(
                f"- U = {row['uniqueTokens']:,.0f}: "
                + (f"{flops:.3g} FLOPs" if flops else "none found")
            )
    lines += ["", "## Plots", ""]
    for p in plots:
        rel = Path(p).resolve().relative_to(docs.resolve())
        lines.append(f"![{rel.stem}]({rel.as_posix()})")
    return "\n".join(lines) + "\n"


def main(repo: Path, root: Path, report: Path, study: Path | None = None) -> int:
    if not (repo / "examples" / "local" / "ar.yaml").is_file():
        raise UserError(f"{repo} is not a diffar checkout (no examples/local/ar.yaml)")
    return reproduce(repo, root, report, study)
