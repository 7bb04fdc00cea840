"""The one-GPU check behind bench/gpu_check.sh: correctness, measured peak, throughput and MFU.

    python bench/gpu_bench.py [--size paper|tiny] [--device cuda|cpu] [--budget-s 420]

No DeepSpeed (the GPU image has none): our Transformer + objective + fused AdamW directly, with
bf16 autocast over fp32 master weights (what DeepSpeed's bf16 mode computes in), gradient
clipping 1.0, the paper's AdamW. In order, printing as it goes and rewriting the JSON after each
row, so a timeout keeps what was measured:

1. correctness: from weights trained 10 fp32 steps, one training step in bf16 autocast matches the
   same step in fp32 (TF32 off): loss within 2%, gradient cosine similarity >= 0.99 and AdamW
   update cosine >= 0.9, for AR and MDM; our fp32 logits equal the reference's with our weights
   copied in; flash-attn (if installed) matches SDPA;
2. the card's dense bf16 peak: median of 20 products of 8192^3 random bf16 matrices;
3. tokens/s and MFU for 140M AR and 425M MDM at L = 2048 (micro batch --batch): ours and the
   reference (transformers' Llama at the same dims, if importable), eager (then 5., the same
   under torch.compile, last because compiling is what a timeout would cut);
   MFU = tokens/s x (6N + 12 * n_layers * L * h) / measured peak (and / 989 TFLOP/s, the H100
   datasheet); "syncs": CUDA calls that made the host wait during one eager step (none wanted);
   "ours" computes the loss with the fused, chunked unembedding + cross-entropy
   (trainer/fused_ce.py) as the trainer does; plus, eager, "ours-unfused": the same model with the
   loss from its full logits (the step before that change), its column showing x(speed-up of
   ours over it); the two losses and gradients are checked against each other in bf16 in 1.;
4. the host side: EpochSampler batch time, pageable vs pinned host-to-device copy, and 140M AR
   steps fed a pageable copy or through the trainer's DevicePrefetcher (trainer/loader.py).

`--size tiny --device cpu` runs the same code on nano/tiny shapes on a CPU, to test the script.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stepbench as sb  # noqa: E402
import torch  # noqa: E402
from stepbench import LossFromLogits, ModelConfig, Stepper, Transformer  # noqa: E402

H100_DATASHEET = 989e12
SIZES = {
    # (preset, objective, seq_len, micro batch)
    "paper": [("140M", "ar", 2048, 8), ("425M", "mdm", 2048, 8)],
    "tiny": [("nano", "ar", 128, 4), ("tiny", "mdm", 128, 4)],
}


def log(msg: str = "") -> None:
    print(msg, flush=True)


def flash_available() -> bool:
    from diffar.trainer import model as model_mod

    return model_mod.flash_attn_func is not None


# -- 1. correctness ----------------------------------------------------------------------------


def trained_state(cfg, objective, device, steps: int = 10) -> dict:
    """Weights after a few fp32 steps at lr 1e-2: logits away from the uniform ones at init, so
    the comparison below can see precision loss."""
    torch.manual_seed(0)
    model = Transformer(cfg, objective == "ar").to(device)
    s = Stepper(model, objective, cfg, device)
    for group in s.opt.param_groups:
        group["lr"] = 1e-2
    gen = torch.Generator().manual_seed(2)
    windows = torch.randint(0, cfg.vocab_size, (4, cfg.seq_len + 1), generator=gen).to(device)
    for _ in range(steps):
        s.step(windows)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def one_step(cfg, objective, device, state, windows, autocast):
    """Loss, gradients and the AdamW update of one step from `state`."""
    model = Transformer(cfg, objective == "ar").to(device)
    model.load_state_dict(state)
    s = Stepper(model, objective, cfg, device, autocast=autocast)
    loss = s.loss(windows)
    loss.backward()
    grads = torch.cat([p.grad.flatten().double() for p in model.parameters()])
    before = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    s.opt.step()
    after = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    return float(loss.detach()), grads, after - before


def check_correctness(device, size: str) -> dict:
    preset, seq = ("small", 256) if size == "paper" else ("nano", 64)
    cfg = ModelConfig(preset=preset, seq_len=seq, dropout=0.0)
    out = {"preset": preset, "seq_len": seq}
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        gen = torch.Generator().manual_seed(1)
        windows = torch.randint(0, cfg.vocab_size, (4, seq + 1), generator=gen).to(device)
        cosine = torch.nn.functional.cosine_similarity
        for objective in ("ar", "mdm"):
            state = trained_state(cfg, objective, device)
            l32, g32, u32 = one_step(cfg, objective, device, state, windows, None)
            l16, g16, u16 = one_step(cfg, objective, device, state, windows, torch.bfloat16)
            cos = float(cosine(g32, g16, dim=0))
            ucos = float(cosine(u32, u16, dim=0))
            rel = abs(l16 - l32) / abs(l32)
            finite = bool(torch.isfinite(g16).all() and torch.isfinite(u16).all())
            ok = rel < 0.02 and cos >= 0.99 and ucos >= 0.9 and finite
            out[objective] = {
                "loss_fp32": l32,
                "loss_bf16": l16,
                "loss_rel_diff": rel,
                "grad_cosine": cos,
                "update_cosine": ucos,
                "ok": ok,
            }
            log(
                f"  {objective}: bf16 step vs fp32 (after 10 fp32 steps): loss {l16:.5f} vs "
                f"{l32:.5f} (rel {rel:.2e}), grad cosine {cos:.5f}, AdamW update cosine "
                f"{ucos:.4f} -> {'ok' if ok else 'FAIL'}"
            )
        for objective in ("ar", "mdm"):  # the fused loss: same loss and gradients as from logits
            state = trained_state(cfg, objective, device)
            pair = []
            for fused in (False, True):
                model = Transformer(cfg, objective == "ar").to(device)
                model.load_state_dict(state)
                s = Stepper(model, objective, cfg, device, autocast=torch.bfloat16)
                g = torch.Generator(device=device).manual_seed(5)
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    loss = s.obj.loss(model if fused else LossFromLogits(model), windows, g)
                loss.backward()
                grads = torch.cat([p.grad.flatten().double() for p in model.parameters()])
                pair.append((float(loss.detach()), grads))
            rel = abs(pair[1][0] - pair[0][0]) / abs(pair[0][0])
            cos = float(cosine(pair[0][1], pair[1][1], dim=0))
            out[f"fused_ce_{objective}"] = {"loss_rel_diff": rel, "grad_cosine": cos}
            log(
                f"  {objective}: fused chunked CE vs CE from logits (bf16): loss rel {rel:.2e}, "
                f"grad cosine {cos:.5f}"
            )
        if sb.reference_available():
            for objective in ("ar", "mdm"):
                err = sb.check_equivalent(cfg, objective == "ar", device, tol=1e-3)
                out[f"reference_logits_{objective}"] = err
                log(f"  {objective}: reference logits with our weights, max |diff| {err:.2e}")
        if device.type == "cuda" and flash_available():
            torch.manual_seed(0)
            a = Transformer(cfg.model_copy(update={"attention": "sdpa"}), True).to(device).eval()
            b = Transformer(cfg.model_copy(update={"attention": "flash"}), True).to(device).eval()
            b.load_state_dict(a.state_dict())
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                diff = (a(windows[:, :-1]) - b(windows[:, :-1])).abs().max().item()
            out["flash_vs_sdpa_max_diff"] = diff
            log(f"  flash-attn vs SDPA logits (bf16), max |diff| {diff:.3e}")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    out["ok"] = all(out[o]["ok"] for o in ("ar", "mdm"))
    return out


# -- 3. throughput -----------------------------------------------------------------------------


def time_steps(stepper, windows, warmup: int, steps: int, device) -> float:
    """Seconds per step: `steps` back-to-back steps between two synchronisations."""
    for _ in range(warmup):
        stepper.step(windows)
    sb.sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        stepper.step(windows)
    sb.sync(device)
    return (time.perf_counter() - t) / steps


def count_host_syncs(stepper, windows, device) -> int | None:
    """CUDA calls that make the host wait for the GPU during one step (torch's sync debug
    mode, which warns on each): a fast step has none."""
    if device.type != "cuda":
        return None
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            stepper.step(windows)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def throughput_row(preset, objective, seq, batch, side, compiled, device, dtype, steps):
    cfg = ModelConfig(preset=preset, seq_len=seq, dropout=0.0)
    causal = objective == "ar"
    torch.manual_seed(0)
    if side == "reference":
        model = sb.build_reference(cfg, causal).to(device)
    else:
        model = Transformer(cfg, causal).to(device)
        if side == "ours-unfused":
            model = LossFromLogits(model)
    if compiled:
        model = torch.compile(model)
    stepper = Stepper(model, objective, cfg, device, autocast=dtype)
    gen = torch.Generator().manual_seed(0)
    windows = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=gen).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    stepper.step(windows)  # first step: compilation, allocator warm-up
    sb.sync(device)
    first = time.perf_counter() - t0
    syncs = count_host_syncs(stepper, windows, device) if not compiled else None
    sec = time_steps(stepper, windows, warmup=2, steps=steps, device=device)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del stepper, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return cfg, {"step_s": sec, "first_step_s": first, "max_mem_gib": mem, "host_syncs": syncs}


def host_side(device, preset: str, objective: str, seq: int, micro: int, steps: int) -> dict:
    """The sampler's batch time, a pageable vs a pinned host-to-device copy of it, and the
    effect on training: `steps` eager steps fed a pageable copy of `next_batch()` or through the
    trainer's DevicePrefetcher (pinned, copied a step ahead on a side stream)."""
    import numpy as np

    from diffar.trainer.loader import DevicePrefetcher
    from diffar.trainer.sampler import EpochSampler

    tokens = np.random.default_rng(0).integers(0, 50257, size=20_000_000, dtype=np.int64)
    sampler = EpochSampler(tokens, seq, 256, seed=0)
    times = {"next_batch_256_ms": [], "pageable_copy_ms": [], "pinned_copy_ms": []}
    for _ in range(10):
        t = time.perf_counter()
        b = sampler.next_batch()
        times["next_batch_256_ms"].append(time.perf_counter() - t)
        if device.type != "cuda":
            continue
        t = time.perf_counter()
        b.to(device, non_blocking=True)
        sb.sync(device)
        times["pageable_copy_ms"].append(time.perf_counter() - t)
        t = time.perf_counter()
        b.pin_memory().to(device, non_blocking=True)
        sb.sync(device)
        times["pinned_copy_ms"].append(time.perf_counter() - t)
    out = {k: statistics.median(v) * 1e3 for k, v in times.items() if v}

    cfg = ModelConfig(preset=preset, seq_len=seq, dropout=0.0)
    torch.manual_seed(0)
    model = Transformer(cfg, objective == "ar").to(device)
    stepper = Stepper(model, objective, cfg, device, autocast=torch.bfloat16)
    small = EpochSampler(tokens, seq, micro, seed=0)
    modes = ("pageable", "prefetched") * 2  # alternating, twice each
    for mode in modes:
        # pageable: the trainer's feed before DevicePrefetcher; prefetched: the trainer's feed.
        prefetcher = DevicePrefetcher(small, device) if mode == "prefetched" else None

        def batch(p=prefetcher) -> torch.Tensor:
            if p is not None:
                return p.next_batch()
            return small.next_batch().to(device, non_blocking=True)

        stepper.step(batch())
        sb.sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            stepper.step(batch())
        sb.sync(device)
        key = f"{preset}_{objective}_tokens_per_s_{mode}"
        out.setdefault(key, []).append(micro * seq * steps / (time.perf_counter() - t))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="paper")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row")
    ap.add_argument("--batch", type=int, default=0, help="micro batch (0: the size's default)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip rows past this")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    dtype = torch.bfloat16
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    report = {
        "benchmark": "gpu",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": name,
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": sb.reference_available(),
            "flash_attn": flash_available(),
            "python": platform.python_version(),
        },
        "precision": "bf16 autocast, fp32 master weights, fused AdamW (CUDA)",
        "flops_formula": "6N + 12 * n_layers * L * h",
        "rows": [],
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    log(f"== device: {name}; torch {torch.__version__}; {report['versions']}")
    log("== 1. correctness: one bf16 step vs fp32, both objectives")
    report["correctness"] = check_correctness(device, args.size)
    save()
    if not report["correctness"]["ok"]:
        log("correctness FAILED: throughput not measured")
        return 1

    log("== 2. dense bf16 peak (8192^3 matmul, median of 20)")
    n = 8192 if device.type == "cuda" else 512
    peak = sb.measure_peak(device, dtype, n=n, reps=20)
    report["peak_flops"] = peak
    log(f"  measured {peak / 1e12:.1f} TFLOP/s (datasheet H100 dense bf16: 989)")
    save()

    log("== 3. throughput and MFU, eager")
    log(
        f"  {'run':<10} {'side':<12} {'compile':<7} {'tokens/s':>10} {'MFU':>7} "
        f"{'MFU/989':>8} {'step ms':>8} {'mem GiB':>8} {'ours/ref':>8} {'syncs':>5}"
    )
    sides = ["ours"] + (["reference"] if sb.reference_available() else [])
    before = ["ours-unfused"]  # eager only: what the fused loss gave
    compiles = [False] if args.no_compile else [False, True]

    def host_section() -> None:
        log(
            "== 4. host side: sampler batch, host-to-device copy, pageable vs prefetched in the loop"
        )
        preset, objective, seq, micro = SIZES[args.size][0]
        if time.perf_counter() - start < args.budget_s:
            report["host"] = host_side(
                device, preset, objective, seq, args.batch or micro, args.steps
            )
            for k, v in report["host"].items():
                shown = f"{v:.2f}" if isinstance(v, float) else ", ".join(f"{x:,.0f}" for x in v)
                log(f"  {k}: {shown}")
        else:
            log("  (budget spent: skipped)")

    for compiled in compiles:  # every eager row first: compilation is what a timeout cuts
        if compiled:
            log("== 5. throughput and MFU under torch.compile (default mode; same columns)")
        for preset, objective, seq, batch in SIZES[args.size]:
            batch = args.batch or batch
            for side in sides + ([] if compiled else before):
                if time.perf_counter() - start > args.budget_s:
                    log(f"  (budget of {args.budget_s:.0f}s spent: {preset} {side} skipped)")
                    continue
                try:
                    cfg, r = throughput_row(
                        preset, objective, seq, batch, side, compiled, device, dtype, args.steps
                    )
                except Exception as e:  # one failing row (OOM, compile error) keeps the rest
                    log(f"  {preset} {side} compile={compiled}: FAILED {type(e).__name__}: {e}")
                    report["rows"].append(
                        {
                            "run": f"{preset} {objective}",
                            "side": side,
                            "compile": compiled,
                            "error": f"{type(e).__name__}: {e}"[:500],
                        }
                    )
                    save()
                    continue
                fpt = sb.model_flops_per_token(cfg)
                tps = batch * seq / r["step_s"]
                row = {
                    "run": f"{preset} {objective}",
                    "params": sb.count_parameters(cfg),
                    "seq_len": seq,
                    "micro_batch": batch,
                    "side": side,
                    "compile": compiled,
                    "tokens_per_s": tps,
                    "flops_per_token": fpt,
                    "mfu": tps * fpt / peak,
                    "mfu_datasheet": tps * fpt / H100_DATASHEET,
                    **r,
                }
                report["rows"].append(row)
                save()
                ratio = ""
                ours = [
                    x
                    for x in report["rows"]
                    if x["run"] == row["run"]
                    and x["side"] == "ours"
                    and x.get("compile") == compiled
                    and "tokens_per_s" in x
                ]
                if side == "ours-unfused" and ours:
                    row["ratio_ours_vs_unfused"] = ours[-1]["tokens_per_s"] / tps
                    ratio = f"x{row['ratio_ours_vs_unfused']:.3f}"
                if side == "reference" and ours:
                    ratio = f"{ours[-1]['tokens_per_s'] / tps:.3f}"
                    ours[-1]["ratio_vs_reference"] = ours[-1]["tokens_per_s"] / tps
                mem = f"{r['max_mem_gib']:.1f}" if r["max_mem_gib"] is not None else "-"
                log(
                    f"  {row['run']:<10} {side:<12} {compiled!s:<7} {tps:>10,.0f} "
                    f"{row['mfu']:>7.1%} {row['mfu_datasheet']:>8.1%} {r['step_s'] * 1e3:>8.1f} "
                    f"{mem:>8} {ratio:>8} {'-' if r['host_syncs'] is None else r['host_syncs']:>5}"
                )
        if not compiled:
            host_section()  # before any compilation, so a timeout cannot cut it
    save()

    report["elapsed_s"] = time.perf_counter() - start
    save()
    log(f"== done in {report['elapsed_s']:.0f}s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
