"""Operator reconcile latency: a run manifest applied -> its PyTorchJob created, p50/p99.

    python bench/bench_operator.py [--runs 200] [--json]

The real operator (`diffar.operator.handlers` under `kopf.testing.KopfRunner`, as the end-to-end
tests start it) against the tests' KMock Kubernetes emulator (tests/operator/kube_emulator.py)
on loopback, over real HTTP. For each of `--runs` runs, alternately an ARRun and a DiffusionRun
from examples/*-tiny-1gpu.yaml under a fresh name: the clock starts just before the client's
create request and stops when the emulator stores the run's PyTorchJob (the emulator's create
handler, same process and clock). Runs are applied one at a time, so each latency is the
operator's reaction time, not queueing. Latency includes kopf's finalizer patch, the ConfigMap,
the PyTorchJob and nothing after it. After each measurement the run is deleted (through the API:
kopf sees it and removes its finalizer) and the emulator's store is purged of deleted objects and
Events, and kmock's request record (see `purge`: kmock's cost per request grows with every
object and request it ever held); `--keep` keeps every run (and that growth) instead. Writes bench/results/operator.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchio import stamp, write_report  # noqa: E402

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
awaited: dict[tuple[str, str], threading.Event] = {}
_original_create = Emulator._create


async def _timed_create(self, resource, namespace, data):
    status, obj = await _original_create(self, resource, namespace, data)
    key = (resource.plural, obj["metadata"]["name"])
    created_at[key] = time.perf_counter()
    if key in awaited:
        awaited[key].set()
    return status, obj


Emulator._create = _timed_create


def purge(server: EmulatorServer) -> None:
    """Drop deleted objects, Events and kmock's request record, on the emulator's own loop.

    kmock keeps every deleted object and every request it served (for test assertions), and its
    per-request cost grows with them: a plain GET went from 10 ms to 80 ms over the first 20
    runs here, and the latency with it (p50 250 ms over 30 runs with deleted objects purged but
    the request record kept; 36 ms with both purged, flat). That is the emulator's cost, not the
    operator's; a real API server does not slow down with its request count."""
    emu = server.emulator

    def drop() -> None:
        for key in [k for k, obj in emu._objects.items() if obj.deleted or k[0].plural == "events"]:
            del emu._objects[key]
        emu._log.clear()  # replay log of watch events; kopf's watches are already open
        emu._requests.clear()  # kmock's record of every request served, for test assertions

    done = threading.Event()
    server._loop.call_soon_threadsafe(lambda: (drop(), done.set()))
    done.wait(10)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=30.0, help="per run, seconds")
    ap.add_argument("--progress-every", type=int, default=50)
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep every run (the emulator's store grows and slows each request)",
    )
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
                done = awaited[key] = threading.Event()
                t0 = time.perf_counter()
                kube.create(manifest)
                if not done.wait(args.timeout):
                    failures.append(name)
                    continue
                latencies.append(created_at[key] - t0)
                if not args.keep:
                    kube.delete(manifest["kind"], NS, name)
                    gone = time.perf_counter() + args.timeout
                    while kube.get(manifest["kind"], NS, name) and time.perf_counter() < gone:
                        time.sleep(0.02)
                    purge(server)
                if (i + 1) % args.progress_every == 0:
                    print(  # KopfRunner captures stdout: to the real stderr
                        f"  {i + 1}/{args.runs} runs, p50 so far "
                        f"{statistics.median(latencies) * 1e3:.1f} ms",
                        file=sys.__stderr__,
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
        **stamp("operator"),
        "what": "kube create of an ARRun/DiffusionRun -> emulator stores <run>-train PyTorchJob",
        "runs": args.runs,
        "measured": len(ms),
        "failures": failures,
        **summary,
        "latencies_ms": ms,
    }
    write_report(report, args.out, args.json)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
