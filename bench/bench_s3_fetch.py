"""Shard fetch throughput vs raw boto3 GET, on the same S3 server in the same run.

    python bench/bench_s3_fetch.py [--shards 4] [--shard-mb 64] [--repeats 5] [--json] [--out F]

Starts its own SeaweedFS (`weed mini` on loopback, telemetry off), uploads a dataset of random
uint16 shards with diffar's writer, then alternates, `--repeats` times:

  raw     boto3 `get_object` of each shard object, body streamed in 1 MiB chunks to a local
          file (one plain single-object GET per shard, no checks);
  diffar  `resolve_dataset` into an empty cache: manifest, ranged/retrying GET per shard,
          sha256 of every byte, atomic rename, sidecar.

and prints each side's median throughput (MB/s), the client CPU per GB and the ratio
diffar / raw (goal >= 0.8); the JSON also goes to bench/results/s3_fetch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "storage"))

import numpy as np  # noqa: E402
from weed import ACCESS_KEY, SECRET_KEY, Weed  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--shard-mb", type=int, default=64, help="MB per shard (uint16 tokens)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--out",
        default=str(ROOT / "bench" / "results" / "s3_fetch.json"),
        help="also write the result JSON here ('' to skip)",
    )
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="diffar-bench-s3-"))
    server = Weed(work / "weed")
    server.start(new_ports_on_failure=2)
    try:
        os.environ.update(
            AWS_ENDPOINT_URL=server.endpoint,
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_REGION="us-east-1",
        )
        from diffar.trainer import storage
        from diffar.trainer.shards import Manifest

        client = server.client()
        client.create_bucket(Bucket="bench")
        uri = "s3://bench/dataset"
        rng = np.random.default_rng(0)
        tokens_per_shard = args.shard_mb * 1_000_000 // 2
        writer = storage.dataset_writer(uri, {"verbose": False})
        writer.begin(overwrite=True)
        infos = []
        t = time.perf_counter()
        for i in range(args.shards):
            arr = rng.integers(0, 50257, size=tokens_per_shard, dtype=np.uint16)
            infos.append(writer.put_shard(f"shard-{i:05d}.bin", arr))
        total_tokens = tokens_per_shard * args.shards
        writer.finish(Manifest("gpt2", 50257, 50256, total_tokens, 1, tuple(infos)))
        upload_s = time.perf_counter() - t
        nbytes = total_tokens * 2

        defaults = storage.StorageOptions.from_env()
        other = 4 if defaults.concurrency == 1 else 1
        modes = {"default": defaults.concurrency, "other": other}
        cpu = {"raw": 0.0, "default": 0.0, "other": 0.0}

        def label(c: int) -> str:
            return "1 stream" if c == 1 else f"{c} ranges"

        def raw(count: bool = True) -> float:
            dest = work / "raw"
            dest.mkdir(exist_ok=True)
            c0, t = time.process_time(), time.perf_counter()
            for info in infos:
                body = client.get_object(Bucket="bench", Key=f"dataset/{info.name}")["Body"]
                with open(dest / info.name, "wb") as f:
                    for chunk in body.iter_chunks(1 << 20):
                        f.write(chunk)
            secs = time.perf_counter() - t
            if count:
                cpu["raw"] += time.process_time() - c0
            shutil.rmtree(dest)
            return nbytes / secs / 1e6

        def ours(mode: str) -> float:
            cache = work / "cache"
            opts = {"verbose": False, "concurrency": modes[mode]}
            c0, t = time.process_time(), time.perf_counter()
            storage.resolve_dataset(uri, cache, options=opts)
            secs = time.perf_counter() - t
            cpu[mode] += time.process_time() - c0
            shutil.rmtree(cache)
            return nbytes / secs / 1e6

        # warm the server's caches, the connection pools and each mode's client once
        raw(count=False)
        for mode in modes:
            ours(mode)
        cpu.update(default=0.0, other=0.0)
        runs: dict[str, list[float]] = {"raw": [], "default": [], "other": []}
        for _ in range(args.repeats):  # interleaved, so load changes hit all of them alike
            runs["raw"].append(raw())
            runs["default"].append(ours("default"))
            runs["other"].append(ours("other"))
        med = {k: statistics.median(v) for k, v in runs.items()}
        gb = nbytes * args.repeats / 1e9
        cpu_s_per_gb = {k: round(v / gb, 2) for k, v in cpu.items()}
        result = {
            "shards": args.shards,
            "bytes": nbytes,
            "cpus": os.cpu_count(),
            "upload_mb_s": round(nbytes / upload_s / 1e6, 1),
            "raw_boto3_get_mb_s": round(med["raw"], 1),
            "diffar_fetch_mb_s": round(med["default"], 1),
            "ratio": round(med["default"] / med["raw"], 3),
            "concurrency": defaults.concurrency,
            "other_concurrency": other,
            "other_fetch_mb_s": round(med["other"], 1),
            "other_ratio": round(med["other"] / med["raw"], 3),
            "runs_mb_s": {k: [round(x, 1) for x in v] for k, v in runs.items()},
            "client_cpu_s_per_gb": cpu_s_per_gb,
            "goal": 0.8,
        }
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        if args.json:
            print(json.dumps(result))
        else:
            d, o = label(defaults.concurrency), label(other)
            print(
                f"S3 shard fetch, {args.shards} x {args.shard_mb} MB, SeaweedFS on loopback, "
                f"{os.cpu_count()} CPUs, median of {args.repeats} (MB/s; client CPU s/GB)"
            )
            print(f"  upload (diffar writer)                    {result['upload_mb_s']:8.1f}")
            rows = [
                ("raw boto3 GET", "raw"),
                (f"diffar fetch+verify, {d} (default)", "default"),
                (f"diffar fetch+verify, {o}", "other"),
            ]
            for name, k in rows:
                print(
                    f"  {name:<42}{med[k]:8.1f}   cpu {cpu_s_per_gb[k]:5.2f}   "
                    f"runs {result['runs_mb_s'][k]}"
                )
            for name, key in (("(default)", "ratio"), (f"({o})", "other_ratio")):
                goal = "   (goal >= 0.8)" if key == "ratio" else ""
                print(f"  {'ratio diffar / raw ' + name:<42}{result[key]:8.3f}{goal}")
        return 0
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
