"""Operator reconcile latency: a run manifest applied -> its PyTorchJob created, p50/p99.

    python bench/bench_operator.py [--runs 200] [--json]

The real operator (`diffar.operator.handlers` under `kopf.testing.KopfRunner`, as the end-to-end
tests start it) against the tests' KMock Kubernetes emulator (tests/operator/kube_emulator.py)
on loopback, over real HTTP. For each of `--runs` runs, alternately an ARRun and a DiffusionRun
from examples/*-tiny-1gpu.yaml under a fresh name: the clock starts just before the client's
create request and stops when the emulator stores the run's PyTorchJob (the emulator's create
handler, same process and clock). Runs are applied one at a time, so each latency is the
operator's reaction time, not queueing; earlier runs stay, so the operator watches a growing
set (as in a busy namespace). Latency includes kopf's finalizer patch, the ConfigMap, the
PyTorchJob and nothing after it. Writes bench/results/operator.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "operator"))
# The progress timer (read when the handlers module is imported) would scrape every run's
# trainer; keep it out of the measurement window.
os.environ.setdefault("DIFFAR_PROGRESS_INTERVAL", "3600")

import kubernetes  # noqa: E402
from kopf.testing import KopfRunner  # noqa: E402
from kube_emulator import Emulator, EmulatorServer  # noqa: E402

from diffar.operator import crdgen  # noqa: E402
from diffar.operator.kube import Kube  # noqa: E402

NS = "bench"
ARGS = ["run", "--standalone", "--all-namespaces", "-m", "diffar.operator.handlers"]
TEMPLATES = [
    ROOT / "examples" / "ar-tiny-1gpu.yaml",
    ROOT / "examples" / "diffusion-tiny-1gpu.yaml",
]

created_at: dict[tuple[str, str], float] = {}
_original_create = Emulator._create


async def _timed_create(self, resource, namespace, data):
    status, obj = await _original_create(self, resource, namespace, data)
    created_at[(resource.plural, obj["metadata"]["name"])] = time.perf_counter()
    return status, obj


Emulator._create = _timed_create


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=30.0, help="per run, seconds")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "operator.json")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    templates = [yaml.safe_load(p.read_text()) for p in TEMPLATES]
    server = EmulatorServer(crdgen.crds()).start()
    work = Path(tempfile.mkdtemp(prefix="diffar-bench-op-"))
    kubeconfig = work / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": server.url}}],
                "users": [{"name": "bench", "user": {"token": "bench"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "bench"}}],
                "current-context": "kmock",
            }
        )
    )
    os.environ["KUBECONFIG"] = str(kubeconfig)
    kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)
    kube = Kube(kubernetes.client.ApiClient(kubernetes.client.Configuration(host=server.url)))

    latencies: list[float] = []
    failures: list[str] = []
    try:
        with KopfRunner(ARGS, timeout=args.timeout * args.runs) as runner:
            time.sleep(1.0)  # kopf's startup handlers and first watches
            for i in range(args.runs):
                manifest = copy.deepcopy(templates[i % 2])
                name = f"{manifest['metadata']['name']}-{i:04d}"
                manifest["metadata"].update(name=name, namespace=NS)
                key = ("pytorchjobs", f"{name}-train")
                t0 = time.perf_counter()
                kube.create(manifest)
                deadline = t0 + args.timeout
                while key not in created_at and time.perf_counter() < deadline:
                    time.sleep(0.0005)
                if key not in created_at:
                    failures.append(name)
                    continue
                latencies.append(created_at[key] - t0)
                if (i + 1) % 50 == 0:
                    print(
                        f"  {i + 1}/{args.runs} runs, p50 so far "
                        f"{statistics.median(latencies) * 1e3:.1f} ms",
                        flush=True,
                    )
        if runner.exception is not None:
            raise runner.exception
    finally:
        server.stop()

    if not latencies:
        print(f"no PyTorchJob appeared within {args.timeout}s for any run")
        return 1
    ms = [x * 1e3 for x in latencies]
    summary = {
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
        "min_ms": min(ms),
    }
    print()
    print(f"reconcile latency, manifest applied -> PyTorchJob created, {len(ms)} runs:")
    print("  " + "  ".join(f"{k.removesuffix('_ms')} {v:.1f} ms" for k, v in summary.items()))
    if failures:
        print(f"  {len(failures)} run(s) got no PyTorchJob within {args.timeout}s: {failures[:5]}")

    report = {
        "benchmark": "operator",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "what": "kube create of an ARRun/DiffusionRun -> emulator stores <run>-train PyTorchJob",
        "runs": args.runs,
        "measured": len(ms),
        "failures": failures,
        **summary,
        "latencies_ms": ms,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.json:
        print(json.dumps(report, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
