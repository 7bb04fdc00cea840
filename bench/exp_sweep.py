"""Run a named batch of crossover-experiment runs (bench/exp_crossover.py), two at a time.

Each run is one process at one thread under `nice -n 5` (the machine is shared); a run whose
result file already ends with its summary is skipped, so a batch can be resumed or extended.

    python bench/exp_sweep.py explore --root runs/exp
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DATA = {
    "q25k": "q25k/quickstart/data",  # the quickstart's 2048-id BPE
    "v256": "v256/quickstart/data",  # a 257-id BPE learned from the first 64k characters
}
VOCAB = {"q25k": 2048, "v256": 257}


def run_args(
    name: str, data: str, objective: str, epochs: float, eval_every: float, **kw
) -> tuple[str, list[str]]:
    args = ["--data", data, "--objective", objective, "--epochs", str(epochs)]
    args += ["--eval-every", str(eval_every)]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return name, args


def batch(which: str, root: Path) -> list[tuple[str, list[str]]]:
    d25 = str(root / DATA["q25k"])
    runs = []
    if which == "explore":
        # One seed each: where does MDM get closest to AR at a CPU cost we can repeat?
        for U, ar_ep, mdm_ep in ((25000, 80, 300), (10000, 150, 600)):
            tag = f"u{U // 1000}k-h64x2"
            ev_ar, ev_mdm = ar_ep / 40, mdm_ep / 30
            runs.append(run_args(f"{tag}-ar-lr2e-3-s1", d25, "ar", ar_ep, ev_ar, unique=U, seed=1))
            runs.append(
                run_args(
                    f"{tag}-mdmS-lr2e-3-s1",
                    d25,
                    "mdm",
                    mdm_ep,
                    ev_mdm,
                    unique=U,
                    seed=1,
                    time_sampling="stratified",
                )
            )
    elif which == "mini":
        # The 3-seed configuration that fits a crowded 2-core machine: U = 4k tokens of the
        # 257-id BPE, h64 x 2 (about 8 parameters per unique token without the embedding).
        d = str(root / DATA["v256"])
        shape = {"unique": 4096, "dim": 64, "layers": 2, "heads": 2, "vocab_size": 257}
        for seed in (1, 2, 3):
            tag = "u4k-v256-h64x2"
            runs.append(
                run_args(
                    f"{tag}-mdmS-lr1e-3-s{seed}",
                    d,
                    "mdm",
                    200,
                    8,
                    lr=1e-3,
                    seed=seed,
                    time_sampling="stratified",
                    val_samples=4,
                    **shape,
                )
            )
            runs.append(
                run_args(f"{tag}-ar-lr1e-3-s{seed}", d, "ar", 60, 2, lr=1e-3, seed=seed, **shape)
            )
            runs.append(
                run_args(
                    f"{tag}-armask0.25-lr1e-3-s{seed}",
                    d,
                    "ar-mask",
                    60,
                    2,
                    lr=1e-3,
                    seed=seed,
                    input_mask_rate=0.25,
                    **shape,
                )
            )
    elif which == "mini-lr":
        # The seeded configuration's second learning rate (seed 1), for every objective.
        d = str(root / DATA["v256"])
        shape = {"unique": 4096, "dim": 64, "layers": 2, "heads": 2, "vocab_size": 257}
        tag = "u4k-v256-h64x2"
        runs.append(
            run_args(
                f"{tag}-mdmS-lr3e-3-s1",
                d,
                "mdm",
                200,
                8,
                lr=3e-3,
                seed=1,
                time_sampling="stratified",
                val_samples=4,
                **shape,
            )
        )
        runs.append(run_args(f"{tag}-ar-lr3e-3-s1", d, "ar", 60, 2, lr=3e-3, seed=1, **shape))
        runs.append(
            run_args(
                f"{tag}-armask0.25-lr3e-3-s1",
                d,
                "ar-mask",
                60,
                2,
                lr=3e-3,
                seed=1,
                input_mask_rate=0.25,
                **shape,
            )
        )
    elif which == "mini-iid":
        # The same MDM runs with the paper's i.i.d. t: what stratified t is worth.
        d = str(root / DATA["v256"])
        shape = {"unique": 4096, "dim": 64, "layers": 2, "heads": 2, "vocab_size": 257}
        for seed in (1, 2, 3):
            runs.append(
                run_args(
                    f"u4k-v256-h64x2-mdmI-lr1e-3-s{seed}",
                    d,
                    "mdm",
                    200,
                    8,
                    lr=1e-3,
                    seed=seed,
                    time_sampling="iid",
                    val_samples=4,
                    **shape,
                )
            )
    elif which.startswith("sweep:"):
        # sweep:DATA:U:dim:layers:heads:ar_epochs:mdm_epochs:lrs:seeds:maskrates
        _, data, U, dim, layers, heads, ar_ep, mdm_ep, lrs, seeds, masks = which.split(":")
        d25 = str(root / DATA[data])
        vtag = "" if data == "q25k" else f"-{data}"
        tag = f"u{int(U) // 1000}k{vtag}-h{dim}x{layers}"
        shape = {"unique": U, "dim": dim, "layers": layers, "heads": heads}
        shape["vocab_size"] = VOCAB[data]
        for lr, seed in itertools.product(lrs.split(","), seeds.split(",")):
            ar_e, mdm_e = float(ar_ep), float(mdm_ep)
            # The longest runs first, so that two workers finish together.
            runs.append(
                run_args(
                    f"{tag}-mdmS-lr{lr}-s{seed}",
                    d25,
                    "mdm",
                    mdm_e,
                    mdm_e / 25,
                    time_sampling="stratified",
                    lr=lr,
                    seed=seed,
                    val_samples=4,
                    **shape,
                )
            )
            runs.append(
                run_args(
                    f"{tag}-ar-lr{lr}-s{seed}",
                    d25,
                    "ar",
                    ar_e,
                    ar_e / 40,
                    lr=lr,
                    seed=seed,
                    **shape,
                )
            )
            for m in (x for x in masks.split(",") if x):
                runs.append(
                    run_args(
                        f"{tag}-armask{m}-lr{lr}-s{seed}",
                        d25,
                        "ar-mask",
                        ar_e,
                        ar_e / 40,
                        input_mask_rate=m,
                        lr=lr,
                        seed=seed,
                        **shape,
                    )
                )
    else:
        raise SystemExit(f"unknown batch {which!r}")
    return runs


def complete(path: Path) -> bool:
    if not path.is_file():
        return False
    lines = path.read_text().splitlines()
    return bool(lines) and "best" in json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("batch", nargs="+")
    ap.add_argument("--root", default="runs/exp")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--after", type=int, help="a running process: the last worker waits until it exits"
    )
    args = ap.parse_args()
    root = Path(args.root)
    runs = [r for b in args.batch for r in batch(b, root)]
    todo = [(n, a) for n, a in runs if not complete(root / "results" / f"{n}.jsonl")]
    print(f"{len(runs)} runs, {len(todo)} to do", flush=True)

    slots = threading.Semaphore(args.workers - (1 if args.after else 0))
    if args.after:

        def release_when_done(pid: int) -> None:
            while Path(f"/proc/{pid}").exists():
                time.sleep(5)
            slots.release()

        threading.Thread(target=release_when_done, args=(args.after,), daemon=True).start()

    def one(item):
        with slots:
            run_one(item)

    def run_one(item):
        name, a = item
        out = root / "results" / f"{name}.jsonl"
        t0 = time.time()
        cmd = ["nice", "-n", "5", sys.executable, "bench/exp_crossover.py", *a, "--out", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        status = "ok" if r.returncode == 0 else f"FAILED: {r.stderr.strip()[-300:]}"
        print(f"{name}: {status} ({time.time() - t0:.0f}s)", flush=True)

    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(one, todo))


if __name__ == "__main__":
    main()
