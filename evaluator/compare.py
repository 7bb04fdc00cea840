"""`diffar compare`: runs side by side, as a table and a plot of validation loss against epochs.

The quickstart prints its AR-vs-MDM comparison with this same code. A run is given as a local
run folder (runs/<name>/, holding results.json and the trainer's train-log.jsonl), a
results.json file, or an s3:// URI of either. The validation curve comes from results.json's
training summary (`training.val_curve`), or from the folder's train-log.jsonl for results
written before that summary existed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from diffar.evaluator.results import (
    RESULTS_NAME,
    load_results,
    parse_log,
    read_uri_text,
    training_summary,
)
from diffar.trainer.errors import UserError

LOG_NAME = "train-log.jsonl"


@dataclass
class RunResults:
    label: str
    source: str
    results: dict
    curve: list[tuple[float, float]] = field(default_factory=list)

    @property
    def objective(self) -> str:
        return str(self.results.get("objective", "?"))

    @property
    def training(self) -> dict:
        return self.results.get("training") or {}


def load_run(source: str) -> RunResults:
    """One run's results and validation curve from a folder, a results.json, or an s3:// URI."""
    from diffar.trainer.storage import is_remote

    if is_remote(source):
        uri = (
            source
            if source.rstrip("/").endswith(".json")
            else f"{source.rstrip('/')}/{RESULTS_NAME}"
        )
        results = load_results(read_uri_text(uri), uri)
        log_text = None
    else:
        path = Path(source.removeprefix("file://"))
        if path.is_dir():
            folder, file = path, path / RESULTS_NAME
        elif path.is_file():
            folder, file = path.parent, path
        else:
            raise UserError(f"{source}: no such run folder or results.json")
        if not file.is_file():
            raise UserError(
                f"{source}: no {RESULTS_NAME} (has the run finished its evaluation? "
                f"`diffar run RUN.yaml --local` writes it at the end)"
            )
        results = load_results(read_uri_text(str(file)), str(file))
        log = folder / LOG_NAME
        log_text = log.read_text(errors="replace") if log.is_file() else None
    curve = [(float(e), float(v)) for e, v in (results.get("training") or {}).get("val_curve", [])]
    if not curve and log_text:
        summary = training_summary(parse_log(log_text))
        curve = [(e, v) for e, v in summary["val_curve"]]
        # Fill what the log can tell for results that predate the training summary.
        results = {**results, "training": {**summary, **(results.get("training") or {})}}
    return RunResults(str(results.get("run") or source), source, results, curve)


def load_runs(sources: list[str]) -> list[RunResults]:
    runs = [load_run(s) for s in sources]
    seen: dict[str, int] = {}
    for r in runs:  # two runs of one name (results from two folders) stay apart
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            r.label = f"{r.label} ({seen[r.label]})"
    return runs


# ------------------------------------------------------------------------------ table


def comparison_table(columns: list[tuple[str, dict | None]]) -> str:
    """One row per measure, one column per run: size, validation losses (each estimator,
    with its standard error), bits per byte, the training summary and task accuracies."""
    rows: list[tuple[str, list[str]]] = []

    def row(name: str, fn) -> None:
        rows.append((name, [fn(res) if res else "-" for _, res in columns]))

    row("objective", lambda r: str(r.get("objective", "-")))
    row("params", lambda r: _num(r.get("params")))
    row("unique tokens x epochs", _ue)
    row("val loss: AR exact NLL (nats/token)", lambda r: _val(r, "nll"))
    row("val loss: MDM ELBO bound", lambda r: _val(r, "elbo"))
    row("val loss: MDM chain-rule NLL", lambda r: _val(r, "chain_rule_nll"))
    row("bits per byte (NLL / ELBO)", _bpb)
    row("best val loss in training (epoch)", _best)
    row("final val loss in training", lambda r: _float(_training(r).get("final_val_loss")))
    row("final training loss", lambda r: _float(_training(r).get("final_train_loss")))
    row("training wall time", lambda r: _duration(_training(r).get("wall_seconds")))
    row("training tokens/s", lambda r: _num(_training(r).get("tokens_per_second")))
    tasks = sorted({t for _, res in columns for t in ((res or {}).get("tasks") or {})})
    for task in tasks:
        row(f"{task} acc", lambda r, t=task: _acc(r, t))
    width = max(len(name) for name, _ in rows)
    col = max(12, *(len(label) for label, _ in columns), *(len(c) for _, cs in rows for c in cs))
    lines = [f"{'':<{width}}" + "".join(f"  {label:>{col}}" for label, _ in columns)]
    lines += [f"{name:<{width}}" + "".join(f"  {c:>{col}}" for c in cells) for name, cells in rows]
    return "\n".join(lines)


def _training(res: dict) -> dict:
    return res.get("training") or {}


def _val(res: dict, key: str, field: str = "loss") -> str:
    v = (res.get("validation") or {}).get(key)
    if not v or v.get(field) is None:
        return "-"
    err = v.get("stderr") if field == "loss" else None
    return f"{v[field]:.3f}" + (f" ± {err:.3f}" if err else "")


def _bpb(res: dict) -> str:
    key = "nll" if res.get("objective") == "ar" else "elbo"
    return _val(res, key, "bits_per_byte")


def _best(res: dict) -> str:
    t = _training(res)
    if t.get("best_val_loss") is None:
        return "-"
    return f"{t['best_val_loss']:.3f} ({t['best_val_epoch']:.1f})"


def _float(v) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) else "-"


def _num(v) -> str:
    return f"{v:,.0f}" if isinstance(v, int | float) else "-"


def _ue(res: dict) -> str:
    u, e = res.get("unique_tokens"), res.get("epochs")
    if u is None or e is None:
        return "-"
    return f"{u:,} x {e:.0f}"


def _acc(res: dict, task: str) -> str:
    t = (res.get("tasks") or {}).get(task)
    return f"{t['acc']:.3f} (n={t['n']})" if t else "-"


def _duration(seconds) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    s = round(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


# ------------------------------------------------------------------------------ plot


def plot_validation(
    curves: list[tuple[str, list[tuple[float, float]]]], out: Path, title: str
) -> Path:
    """Validation loss against epochs over the unique tokens, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, points in curves:
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel("epochs over the unique tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if any(points for _, points in curves):
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def curve_label(run: RunResults) -> str:
    estimator = {"ar": "exact NLL", "mdm": "ELBO bound"}.get(run.objective, run.objective)
    return f"{run.label} ({run.objective.upper()}, {estimator})"


# ------------------------------------------------------------------------------ command


def compare(sources: list[str], plot: Path | None, as_json: bool = False) -> str:
    """The comparison as text (or JSON); writes the plot unless `plot` is None."""
    runs = load_runs(sources)
    written = None
    if plot is not None:
        if not any(r.curve for r in runs):
            written = None
        else:
            written = plot_validation(
                [(curve_label(r), r.curve) for r in runs],
                plot,
                "validation loss vs epochs",
            )
    if as_json:
        doc = {
            "runs": [
                {
                    "label": r.label,
                    "source": r.source,
                    "objective": r.objective,
                    "params": r.results.get("params"),
                    "unique_tokens": r.results.get("unique_tokens"),
                    "epochs": r.results.get("epochs"),
                    "loss": r.results.get("loss"),
                    "loss_estimator": r.results.get("loss_estimator"),
                    "validation": r.results.get("validation") or {},
                    "training": {**r.training, "val_curve": [list(p) for p in r.curve]},
                    "tasks": r.results.get("tasks") or {},
                }
                for r in runs
            ],
            "plot": str(written) if written else None,
        }
        from diffar.evaluator.results import finite

        return json.dumps(finite(doc), indent=2)
    text = comparison_table([(r.label, r.results) for r in runs])
    if plot is not None:
        text += (
            f"\nplot: {written}" if written else "\nplot: none (no run logged a validation curve)"
        )
    return text
