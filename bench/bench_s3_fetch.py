"""Shard fetch throughput vs raw boto3 GET, on the same S3 server in the same run.

    python bench/bench_s3_fetch.py [--shards 4] [--shard-mb 64] [--repeats 5] [--json]

Starts its own SeaweedFS (`weed mini` on loopback, telemetry off), uploads a dataset of random
uint16 shards with diffar's writer, then alternates, `--repeats` times:

  raw     boto3 `get_object` of each shard object, body streamed in 1 MiB chunks to a local
          file (one plain single-object GET per shard, no checks);
  diffar  `resolve_dataset` into an empty cache: manifest, ranged/retrying GET per shard,
          sha256 of every byte, atomic rename, sidecar.

and prints each side's median throughput (MB/s) and the ratio diffar / raw (goal >= 0.8).
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
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="diffar-bench-s3-"))
    server = Weed(work / "weed")
    server.start()
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

        def raw() -> float:
            dest = work / "raw"
            dest.mkdir(exist_ok=True)
            t = time.perf_counter()
            for info in infos:
                body = client.get_object(Bucket="bench", Key=f"dataset/{info.name}")["Body"]
                with open(dest / info.name, "wb") as f:
                    for chunk in body.iter_chunks(1 << 20):
                        f.write(chunk)
            secs = time.perf_counter() - t
            shutil.rmtree(dest)
            return nbytes / secs / 1e6

        defaults = storage.StorageOptions.from_env()

        def ours(concurrency: int) -> float:
            cache = work / "cache"
            t = time.perf_counter()
            opts = {"verbose": False, "concurrency": concurrency}
            storage.resolve_dataset(uri, cache, options=opts)
            secs = time.perf_counter() - t
            shutil.rmtree(cache)
            return nbytes / secs / 1e6

        raw()  # warm the server's caches and the connection pool once
        raws, parallel, serial = [], [], []
        for _ in range(args.repeats):  # interleaved, so load changes hit all three alike
            raws.append(raw())
            parallel.append(ours(defaults.concurrency))
            serial.append(ours(1))
        raw_mbs = statistics.median(raws)
        par_mbs, ser_mbs = statistics.median(parallel), statistics.median(serial)
        result = {
            "shards": args.shards,
            "bytes": nbytes,
            "cpus": os.cpu_count(),
            "upload_mb_s": round(nbytes / upload_s / 1e6, 1),
            "raw_boto3_get_mb_s": round(raw_mbs, 1),
            "diffar_fetch_mb_s": round(par_mbs, 1),
            "ratio": round(par_mbs / raw_mbs, 3),
            "concurrency": defaults.concurrency,
            "diffar_fetch_serial_mb_s": round(ser_mbs, 1),
            "ratio_serial": round(ser_mbs / raw_mbs, 3),
            "raw_runs": [round(x, 1) for x in raws],
            "diffar_runs": [round(x, 1) for x in parallel],
            "diffar_serial_runs": [round(x, 1) for x in serial],
            "goal": 0.8,
        }
        if args.json:
            print(json.dumps(result))
        else:
            c = defaults.concurrency
            print(
                f"S3 shard fetch, {args.shards} x {args.shard_mb} MB, SeaweedFS on loopback, "
                f"{os.cpu_count()} CPUs, median of {args.repeats}"
            )
            print(f"  upload (diffar writer)          {result['upload_mb_s']:8.1f} MB/s")
            print(f"  raw boto3 GET                   {raw_mbs:8.1f} MB/s   {result['raw_runs']}")
            print(
                f"  diffar fetch+verify, {c} ranges   {par_mbs:8.1f} MB/s   {result['diffar_runs']}"
            )
            print(
                f"  diffar fetch+verify, 1 stream   {ser_mbs:8.1f} MB/s   "
                f"{result['diffar_serial_runs']}"
            )
            print(f"  ratio diffar / raw              {result['ratio']:8.3f}   (goal >= 0.8)")
            print(f"  ratio diffar (1 stream) / raw   {result['ratio_serial']:8.3f}")
        return 0
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
