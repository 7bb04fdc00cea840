"""Operator reconcile latency and throughput against a real control plane.

    python bench/bench_operator.py [--runs 200] [--burst 100] [--json]

A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager from
scripts/k8s/build.sh, the chart installed with Helm: tests/testsupport/cluster.py) started for
the benchmark in a temporary folder, and the real operator (`diffar operator --standalone`, a
process of its own) authenticated as the chart's ServiceAccount, as `make cluster` runs it.

Two measurements, both from runs made from examples/*-tiny-1gpu.yaml (alternately an ARRun and
a DiffusionRun) under fresh names, and both stopped by a watch on PyTorchJobs held by this
process (one clock: the ADDED event of `<run>-train` arriving here):

- latency: `--runs` runs applied one at a time; each from just before the client's create
  request to its PyTorchJob's ADDED event. One at a time, so each is the operator's reaction
  time (kopf's watch event, finalizer patch, ConfigMap, PyTorchJob), not queueing.
- throughput: `--burst` runs created back to back, then the time until every one of their
  PyTorchJobs exists; runs per second over that span.

Runs are left in place: a real API server does not slow down with what it stores. The whole
control plane is stopped at the end. Writes bench/results/operator.json.
"""

from __future__ import annotations

import argparse
import copy
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
sys.path.insert(0, str(ROOT / "tests"))

import kubernetes  # noqa: E402
from testsupport import cluster  # noqa: E402

from diffar.operator.kube import Kube  # noqa: E402

NS = "bench"
TEMPLATES = [
    ROOT / "examples" / "ar-tiny-1gpu.yaml",
    ROOT / "examples" / "diffusion-tiny-1gpu.yaml",
]
# The progress timer would scrape every run's (absent) trainer: keep it out of the window.
OPERATOR_ENV = {"DIFFAR_PROGRESS_INTERVAL": "3600"}


class ChildWatch:
    """PyTorchJobs of one namespace as they are ADDED, timed on this process's clock."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str):
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.namespace = namespace
        self.added: dict[str, float] = {}
        self.cond = threading.Condition()
        self.watch = kubernetes.watch.Watch()
        listed = self.custom.list_namespaced_custom_object(
            "kubeflow.org", "v1", namespace, "pytorchjobs"
        )
        self.rv = listed["metadata"]["resourceVersion"]
        self.error: BaseException | None = None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for event in self.watch.stream(
                self.custom.list_namespaced_custom_object,
                "kubeflow.org",
                "v1",
                self.namespace,
                "pytorchjobs",
                resource_version=self.rv,
                allow_watch_bookmarks=False,
            ):
                if event["type"] == "ADDED":
                    now = time.perf_counter()
                    with self.cond:
                        self.added.setdefault(event["object"]["metadata"]["name"], now)
                        self.cond.notify_all()
        except BaseException as e:  # surfaced by wait(); a dead watch must not read as slowness
            self.error = e
            with self.cond:
                self.cond.notify_all()

    def wait(self, names: list[str], timeout: float) -> list[str]:
        """Wait until every name was ADDED; returns those that were not within timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.error is not None:
                    raise RuntimeError(f"PyTorchJob watch failed: {self.error}")
                missing = [n for n in names if n not in self.added]
                left = deadline - time.monotonic()
                if not missing or left <= 0:
                    return missing
                self.cond.wait(left)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def run_manifest(templates: list[dict], i: int, prefix: str) -> dict:
    manifest = copy.deepcopy(templates[i % 2])
    name = f"{manifest['metadata']['name']}-{prefix}{i:04d}"
    manifest["metadata"].update(name=name, namespace=NS)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200, help="runs applied one at a time")
    ap.add_argument("--burst", type=int, default=100, help="runs applied back to back")
    ap.add_argument("--timeout", type=float, default=30.0, help="per run, seconds")
    ap.add_argument("--progress-every", type=int, default=50)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "operator.json")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    def say(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    templates = [yaml.safe_load(p.read_text()) for p in TEMPLATES]
    root = Path(tempfile.mkdtemp(prefix="diffar-bench-op-"))
    latencies: list[float] = []
    failures: list[str] = []
    try:
        try:
            cp = cluster.start(root, operator=True, operator_env=OPERATOR_ENV, progress=say)
        except cluster.ClusterError as e:
            print(f"bench_operator: {e}", file=sys.stderr)
            return 1
        cp.kubectl("create", "namespace", NS)
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=cfg)
        api = kubernetes.client.ApiClient(cfg)
        kube = Kube(api, timeout=args.timeout)
        watch = ChildWatch(api, NS)

        # A first run outside the measurement: kopf's startup, first watches, first imports.
        warm = run_manifest(templates, 0, "warm")
        kube.create(warm)
        if watch.wait([f"{warm['metadata']['name']}-train"], 60):
            print(f"bench_operator: no PyTorchJob for the warm-up run; see {cp.log('operator')}")
            return 1

        for i in range(args.runs):
            manifest = run_manifest(templates, i, "seq")
            child = f"{manifest['metadata']['name']}-train"
            t0 = time.perf_counter()
            kube.create(manifest)
            if watch.wait([child], args.timeout):
                failures.append(manifest["metadata"]["name"])
                continue
            latencies.append(watch.added[child] - t0)
            if (i + 1) % args.progress_every == 0:
                say(
                    f"{i + 1}/{args.runs} runs, p50 so far "
                    f"{statistics.median(latencies) * 1e3:.1f} ms"
                )

        burst = [run_manifest(templates, i, "burst") for i in range(args.burst)]
        t0 = time.perf_counter()
        for manifest in burst:
            kube.create(manifest)
        applied_s = time.perf_counter() - t0
        children = [f"{m['metadata']['name']}-train" for m in burst]
        burst_missing = watch.wait(children, args.timeout + args.burst)
        done = [watch.added[c] for c in children if c in watch.added]
        burst_s = (max(done) - t0) if done else float("nan")
        failures += [c.removesuffix("-train") for c in burst_missing]
        watch.watch.stop()
        operator_log = cp.log("operator").read_text(errors="replace")
    finally:
        cluster.stop(root, progress=lambda _m: None)

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
    throughput = len(done) / burst_s if done and burst_s > 0 else 0.0
    print()
    print(f"reconcile latency, run created -> PyTorchJob ADDED, {len(ms)} runs one at a time:")
    print("  " + "  ".join(f"{k.removesuffix('_ms')} {v:.1f} ms" for k, v in summary.items()))
    print(
        f"throughput, {args.burst} runs created back to back (in {applied_s:.2f} s): "
        f"{len(done)} PyTorchJobs in {burst_s:.2f} s = {throughput:.1f} runs/s"
    )
    if failures:
        print(f"  {len(failures)} run(s) got no PyTorchJob in time: {failures[:5]}")
    tracebacks = operator_log.count("Traceback")

    report = {
        **stamp("operator"),
        "what": (
            "real control plane, operator as the chart's ServiceAccount: create of an "
            "ARRun/DiffusionRun -> <run>-train PyTorchJob ADDED on a watch"
        ),
        "runs": args.runs,
        "measured": len(ms),
        "failures": failures,
        **summary,
        "burst": {
            "runs": args.burst,
            "created_in_s": applied_s,
            "all_children_in_s": burst_s,
            "runs_per_s": throughput,
        },
        "operator_log_tracebacks": tracebacks,
        "latencies_ms": ms,
    }
    write_report(report, args.out, args.json)
    return 1 if failures or tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
