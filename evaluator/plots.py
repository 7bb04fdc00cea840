"""PNG plots of a scaling-law fit (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLORS = {"ar": "tab:blue", "mdm": "tab:red"}
LABELS = {"ar": "autoregressive", "mdm": "masked diffusion"}


def write_plots(directory: Path, points, fits: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffar.evaluator.scaling import critical_compute, effective_data

    directory.mkdir(parents=True, exist_ok=True)
    written = []

    # 1. Loss vs epochs, one panel per unique-token budget U; points and fitted curves per
    # (objective, params).
    us = sorted({p.unique_tokens for p in points})
    fig, axes = plt.subplots(1, len(us), figsize=(5 * len(us), 4), squeeze=False)
    for ax, u in zip(axes[0], us, strict=True):
        for obj, fit in fits.items():
            sel = [p for p in points if p.objective == obj and p.unique_tokens == u]
            sizes = sorted({p.params for p in sel})
            for k, n in enumerate(sizes):
                pts = sorted((p for p in sel if p.params == n), key=lambda p: p.epochs)
                alpha = 0.35 + 0.65 * (k + 1) / len(sizes)
                ax.scatter(
                    [p.epochs for p in pts],
                    [p.loss for p in pts],
                    color=COLORS[obj],
                    alpha=alpha,
                    s=14,
                )
                ep = np.geomspace(min(p.epochs for p in pts), max(p.epochs for p in pts) * 1.5, 100)
                ax.plot(
                    ep,
                    fit.predict(n, u, ep),
                    color=COLORS[obj],
                    alpha=alpha,
                    label=f"{obj} N={n:.3g}",
                )
        ax.set_xscale("log")
        ax.set_xlabel("epochs")
        ax.set_ylabel("validation loss")
        ax.set_title(f"U = {u:.3g} unique tokens")
        ax.legend(fontsize=6)
    fig.tight_layout()
    written.append(_save(fig, directory / "loss_vs_epochs.png"))

    # 2. Effective data D'/U vs epochs: how much a repeated token is worth to each objective.
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ep = np.geomspace(1, 2000, 200)
    ax.plot(ep, ep, color="gray", linestyle=":", label="fresh data (D' = D)")
    for obj, fit in fits.items():
        rd = fit.values["R_D_star"]
        ax.plot(
            ep,
            effective_data(1.0, ep, rd),
            color=COLORS[obj],
            label=f"{LABELS[obj]} (R_D* = {rd:.3g})",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("epochs")
    ax.set_ylabel("effective data D' / U")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, directory / "effective_data.png"))

    # 3. Fitted vs observed loss.
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for obj, fit in fits.items():
        sel = [p for p in points if p.objective == obj]
        obs = np.array([p.loss for p in sel])
        pred = fit.predict(
            np.array([p.params for p in sel]),
            np.array([p.unique_tokens for p in sel]),
            np.array([p.epochs for p in sel]),
        )
        ax.scatter(obs, pred, s=10, color=COLORS[obj], label=LABELS[obj])
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], color="gray", linestyle=":")
    ax.set_xlabel("observed loss")
    ax.set_ylabel("fitted loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, directory / "fit_vs_observed.png"))

    # 4. Critical compute vs unique tokens, where both objectives were fitted.
    if "ar" in fits and "mdm" in fits:
        grid = np.logspace(7, 11, 9)
        cs = [critical_compute(fits["ar"].values, fits["mdm"].values, u) for u in grid]
        ok = [(u, c) for u, c in zip(grid, cs, strict=True) if c is not None]
        if ok:
            fig, ax = plt.subplots(figsize=(5.5, 4))
            ax.plot([u for u, _ in ok], [c for _, c in ok], "o-", color="black")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("unique tokens U")
            ax.set_ylabel("C_crit (FLOPs): diffusion better above")
            fig.tight_layout()
            written.append(_save(fig, directory / "critical_compute.png"))
    return written


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
