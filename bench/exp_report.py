"""Tables and plots of the crossover experiment (bench/exp_crossover.py results).

Runs are grouped by name without the seed suffix (`-sN`); for each group: the best validation
loss of every seed (padded and text vocabulary), mean and standard error over seeds, and the
epoch of the best. Writes a Markdown table and JSON next to --out, and one PNG of validation loss
against training tokens (same model size within a panel, so tokens are compute), one line per
run, per configuration.

    python bench/exp_report.py --results runs/exp/results --out bench/exp_results/crossover-cpu
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def load(results: Path) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for path in sorted(results.glob("*.jsonl")):
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        curve = [r for r in lines if "val" in r]
        if not curve:
            continue
        meta = lines[0]["meta"]
        stopped = "best" not in lines[-1]  # stopped early to free the cores: its curve so far
        if stopped:
            top = min(curve, key=lambda r: r["val"]["padded"])
            lines.append(
                {
                    "best": {**top["val"], "epoch": top["epoch"]},
                    "train_seconds": curve[-1]["train_seconds"],
                }
            )
        group = path.stem.rsplit("-s", 1)[0]
        groups.setdefault(group, []).append(
            {
                "meta": meta,
                "curve": curve,
                "best": lines[-1]["best"],
                "name": path.stem,
                "seconds": lines[-1]["train_seconds"],
                "stopped_at": curve[-1]["epoch"] if stopped else None,
            }
        )
    return groups


def mean_se(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


def table(groups: dict[str, list[dict]]) -> tuple[str, dict]:
    rows = [
        "| configuration | seeds | params | U | epochs | best val, padded vocab | best val, "
        "text vocab | epoch of best | tokens/s (1 thread) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    out = {}
    for name, runs in sorted(groups.items()):
        pad = mean_se([r["best"]["padded"] for r in runs])
        txt = mean_se([r["best"]["text"] for r in runs])
        ep = [round(r["best"]["epoch"]) for r in runs]
        m = runs[0]["meta"]
        args = m.get("args", m)
        tps = [r["curve"][-1]["tokens_per_second"] for r in runs]
        stops = [round(r["stopped_at"]) for r in runs if r["stopped_at"] is not None]
        out[name] = {"seeds": len(runs), "padded": pad, "text": txt, "best_epochs": ep}
        if stops:
            out[name]["stopped_at_epoch"] = stops
        epochs = f"{args['epochs']:g}" + (f" (stopped at {stops[0]})" if stops else "")

        def pm(v: tuple[float, float]) -> str:
            return f"{v[0]:.3f}" + ("" if math.isnan(v[1]) else f" ± {v[1]:.3f}")

        rows.append(
            f"| {name} | {len(runs)} | {m['params'] / 1e3:.0f}k | {m['unique_tokens']:,} | "
            f"{epochs} | {pm(pad)} | {pm(txt)} | {ep} | {min(tps):,.0f}-{max(tps):,.0f} |"
        )
    return "\n".join(rows) + "\n", out


def plot(groups: dict[str, list[dict]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A panel per configuration that has at least one finished run.
    configs = sorted(
        {
            g.split("-ar")[0].split("-mdm")[0]
            for g, runs in groups.items()
            if any(r["stopped_at"] is None for r in runs)
        }
    )
    fig, axes = plt.subplots(1, len(configs), figsize=(4.2 * len(configs), 3.4), dpi=70)
    axes = [axes] if len(configs) == 1 else axes
    for ax, cfg in zip(axes, configs, strict=True):
        for name, runs in sorted(groups.items()):
            if not name.startswith(cfg + "-"):
                continue
            kind = name[len(cfg) + 1 :]
            color = {"mdmS": "C3", "mdmI": "C1"}.get(kind[:4], "C2" if "mask" in kind else "C0")
            for i, r in enumerate(runs):
                xs = [p["tokens"] for p in r["curve"]]
                ys = [p["val"]["padded"] for p in r["curve"]]
                # dotted: stopped early; dashed: the higher of two learning rates
                style = ":" if r["stopped_at"] is not None else "--" if "lr3e-3" in kind else "-"
                ax.plot(xs, ys, style, color=color, lw=1, alpha=0.7, label=kind if i == 0 else None)
        ax.set_xscale("log")
        ax.set_title(cfg, fontsize=9)
        ax.set_xlabel("training tokens (= compute: same model)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("validation loss, padded vocab (nats)")
    fig.tight_layout()
    fig.savefig(png)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path, default=Path("runs/exp/results"))
    ap.add_argument("--out", type=Path, default=Path("bench/exp_results/crossover-cpu"))
    ap.add_argument("--png", type=Path, default=Path("docs/img/crossover-cpu.png"))
    args = ap.parse_args()
    groups = load(args.results)
    md, summary = table(groups)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(md)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    plot(groups, args.png)
    print(md)


if __name__ == "__main__":
    main()
