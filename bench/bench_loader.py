"""The data path alone: EpochSampler tokens/s on this CPU against what one GPU consumes.

    python bench/bench_loader.py [--unique-tokens 50000000] [--seconds 5] [--json]

The loader is `EpochSampler.next_batch()` as trainer/train.py calls it once per optimizer step:
one rank's slice of the global batch (256 windows of 2049 tokens, the paper's shape), gathered
from the unique-token array (int64, as `shards.load_tokens` returns it) in the epoch's
permutation. Measured in CPU seconds of this process and on the wall clock (the machine is
shared), for 1 rank and for one of 8 ranks, plus the pinned-memory copy where CUDA exists.

What the GPU consumes: tokens/s = MFU x peak / FLOPs-per-token, with FLOPs/token = 6N + 12 * layers
* L * h (sizing.flops_per_token) at L = 2048, MFU 45% (the goal) and the H100's dense bf16
datasheet peak, 989 TFLOP/s. The requirement is 10x that; the margin printed is measured / (10x
consumed). Writes bench/results/loader-cpu.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffar.trainer.config import ModelConfig
from diffar.trainer.sampler import EpochSampler
from diffar.trainer.sizing import count_parameters, flops_per_token

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchio import stamp, write_report  # noqa: E402

H100_BF16_DENSE = 989e12
MFU_GOAL = 0.45
REQUIRED_FACTOR = 10.0
GPU_RUNS = (("140M", "ar"), ("425M", "mdm"))


def consumed_tokens_per_s(preset: str, seq_len: int) -> tuple[float, float]:
    cfg = ModelConfig(preset=preset, seq_len=seq_len)
    fpt = flops_per_token(cfg)
    return MFU_GOAL * H100_BF16_DENSE / fpt, fpt


def measure(sampler: EpochSampler, seconds: float, pin: bool) -> dict:
    """Batches for about `seconds` of wall time; tokens/s per CPU-second and per wall-second."""
    for _ in range(3):
        sampler.next_batch()
    per_batch_cpu, per_batch_wall = [], []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(per_batch_cpu) < 10:
        t, c = time.perf_counter(), time.process_time()
        batch = sampler.next_batch()
        if pin:
            batch = batch.pin_memory()
        per_batch_cpu.append(time.process_time() - c)
        per_batch_wall.append(time.perf_counter() - t)
    tokens = sampler.per_rank * (sampler.seq_len + 1)
    return {
        "batches": len(per_batch_cpu),
        "tokens_per_batch": tokens,
        "batch_cpu_s_median": statistics.median(per_batch_cpu),
        "batch_wall_s_median": statistics.median(per_batch_wall),
        "tokens_per_s": tokens / statistics.median(per_batch_cpu),
        "tokens_per_s_wall": tokens / statistics.median(per_batch_wall),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unique-tokens", type=int, default=50_000_000)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--global-batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "loader-cpu.json")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50257, size=args.unique_tokens, dtype=np.int64)
    pin = torch.cuda.is_available()
    print(
        f"unique tokens {args.unique_tokens:,} (int64, {tokens.nbytes / 2**20:.0f} MiB), "
        f"windows of {args.seq_len + 1}, global batch {args.global_batch}"
        + (", pinned copy included" if pin else ", no CUDA: pinning not measured")
    )

    rows = {}
    for world in (1, 8):
        sampler = EpochSampler(tokens, args.seq_len, args.global_batch, seed=1234, world_size=world)
        rows[f"rank 0 of {world}"] = measure(sampler, args.seconds, pin)

    needs = {}
    for preset, objective in GPU_RUNS:
        tps, fpt = consumed_tokens_per_s(preset, args.seq_len)
        params = count_parameters(ModelConfig(preset=preset))
        needs[f"{preset} {objective}"] = {
            "params": params,
            "flops_per_token": fpt,
            "gpu_tokens_per_s": tps,
            "required_tokens_per_s": REQUIRED_FACTOR * tps,
        }

    print()
    print(f"{'loader':<12} {'batch ms':>9} {'tokens/s (cpu)':>15} {'tokens/s (wall)':>16}")
    for name, r in rows.items():
        print(
            f"{name:<12} {r['batch_cpu_s_median'] * 1e3:>9.2f} {r['tokens_per_s']:>15,.0f} "
            f"{r['tokens_per_s_wall']:>16,.0f}"
        )
    print()
    print(
        f"one H100 at {MFU_GOAL:.0%} MFU of {H100_BF16_DENSE / 1e12:.0f} TFLOP/s consumes "
        f"(tokens/s = MFU x peak / FLOPs-per-token):"
    )
    print(
        f"{'run':<9} {'FLOPs/token':>12} {'GPU tokens/s':>13} {'10x needed':>12} "
        f"{'margin 1 rank':>14} {'margin 1 of 8':>14}"
    )
    margins = {}
    for name, n in needs.items():
        m1 = rows["rank 0 of 1"]["tokens_per_s"] / n["required_tokens_per_s"]
        m8 = rows["rank 0 of 8"]["tokens_per_s"] / n["required_tokens_per_s"]
        margins[name] = {"rank_0_of_1": m1, "rank_0_of_8": m8}
        print(
            f"{name:<9} {n['flops_per_token']:>12.3e} {n['gpu_tokens_per_s']:>13,.0f} "
            f"{n['required_tokens_per_s']:>12,.0f} {m1:>13.1f}x {m8:>13.1f}x"
        )
    ok = all(min(m.values()) >= 1.0 for m in margins.values())
    print(f"loader sustains 10x the GPU's consumption: {'yes' if ok else 'NO'}")

    report = {
        **stamp("loader"),
        "unique_tokens": args.unique_tokens,
        "seq_len": args.seq_len,
        "global_batch": args.global_batch,
        "pinned": pin,
        "loader": rows,
        "gpu_consumption": {
            "peak_flops": H100_BF16_DENSE,
            "mfu": MFU_GOAL,
            "formula": "tokens/s = mfu * peak / (6N + 12 * n_layers * L * h)",
            "runs": needs,
        },
        "margin_vs_10x": margins,
        "meets_10x": ok,
    }
    write_report(report, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
