"""What rank 0 tells the world while training: Prometheus metrics, log lines, a progress bar.

Metric names are a contract with the Grafana dashboards and the operator's progress reader.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

# Dense bf16 datasheet peaks per GPU, for MFU; CPUs are measured instead.
_GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

METRIC_NAMES = (
    "diffar_train_loss",
    "diffar_train_lr",
    "diffar_train_step",
    "diffar_train_total_steps",
    "diffar_train_epoch",
    "diffar_train_tokens_seen_total",
    "diffar_train_tokens_per_second",
    "diffar_train_mfu",
    "diffar_train_grad_norm",
    "diffar_train_last_checkpoint_timestamp_seconds",
    "diffar_train_val_loss",
)


def peak_flops(device: torch.device) -> float:
    """The device's dense peak FLOP/s: datasheet bf16 for known GPUs, a measured matmul otherwise."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in _GPU_PEAK_FLOPS.items():
            if key in name:
                return flops
    n = 512 if device.type == "cpu" else 4096
    a = torch.randn(n, n, device=device)
    a @ a  # warm-up
    reps, start = 5, time.perf_counter()
    for _ in range(reps):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


@dataclass(frozen=True)
class StepReport:
    step: int
    total_steps: int
    epoch: float
    loss: float
    lr: float
    grad_norm: float | None
    tokens_seen: int
    tokens_per_second: float
    mfu: float
    eta_seconds: float


def finite_or_none(row: dict) -> dict:
    """JSON has no NaN or Infinity (json.dumps would write invalid JSON): those become null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


class TrainMetrics:
    """Prometheus gauges on a port of their own, labelled by run and objective."""

    def __init__(self, run: str, objective: str, port: int | None):
        self.registry = CollectorRegistry()
        labels = ("run", "objective")

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=self.registry).labels(run, objective)

        self.loss = gauge("diffar_train_loss", "Training loss, mean over the last logged step")
        self.lr = gauge("diffar_train_lr", "Learning rate")
        self.step = gauge("diffar_train_step", "Optimizer steps done")
        self.total_steps = gauge("diffar_train_total_steps", "Optimizer steps in the run")
        self.epoch = gauge("diffar_train_epoch", "Passes over the unique tokens so far")
        # prometheus-client appends _total to counters; the exported name is diffar_train_tokens_seen_total.
        self.tokens = Counter(
            "diffar_train_tokens_seen", "Training tokens consumed", labels, registry=self.registry
        ).labels(run, objective)
        self.tps = gauge("diffar_train_tokens_per_second", "Training throughput, all ranks")
        self.mfu = gauge("diffar_train_mfu", "Model FLOPs utilisation (0-1)")
        self.grad_norm = gauge("diffar_train_grad_norm", "Global gradient norm before clipping")
        self.last_ckpt = gauge(
            "diffar_train_last_checkpoint_timestamp_seconds", "Unix time of the last checkpoint"
        )
        self.val_loss = gauge(
            "diffar_train_val_loss",
            "Validation loss (AR NLL, MDM ELBO bound) at the last validation",
        )
        self.port = None
        if port is not None:
            server, _ = start_http_server(port, registry=self.registry)
            self.port = server.server_address[1]

    def update(self, r: StepReport, new_tokens: int) -> None:
        # A non-finite loss or norm is not published: the operator and dashboards read these
        # gauges as numbers (a NaN in a status patch is invalid JSON); the log line says it.
        if math.isfinite(r.loss):
            self.loss.set(r.loss)
        self.lr.set(r.lr)
        self.step.set(r.step)
        self.total_steps.set(r.total_steps)
        self.epoch.set(r.epoch)
        self.tokens.inc(new_tokens)
        self.tps.set(r.tokens_per_second)
        self.mfu.set(r.mfu)
        if r.grad_norm is not None and math.isfinite(r.grad_norm):
            self.grad_norm.set(r.grad_norm)


class ConsoleProgress:
    """A progress bar on a terminal; one JSON line per log interval otherwise (for log shippers)."""

    def __init__(self, total_steps: int, initial: int):
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial, unit="step", dynamic_ncols=True)

    def report(self, r: StepReport, advanced: int) -> None:
        if self.bar is not None:
            self.bar.update(advanced)
            self.bar.set_postfix(
                loss=f"{r.loss:.4f}", epoch=f"{r.epoch:.2f}", tok_s=f"{r.tokens_per_second:,.0f}"
            )
        else:
            print(json.dumps({"event": "train_step", **finite_or_none(asdict(r))}), flush=True)

    def message(self, text: str) -> None:
        (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LossLog:
    """Every step's loss as JSON lines, appended; resuming truncates what a crash left after the
    resumed step, so the file always reads as one uninterrupted run."""

    def __init__(self, path: str | None, resume_step: int):
        self.path = Path(path) if path else None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists():
            kept = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln and json.loads(ln)["step"] <= resume_step
            ]
        self.path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, rows: list[dict]) -> None:
        if self.path is not None and rows:
            with self.path.open("a") as f:
                f.writelines(json.dumps(finite_or_none(row)) + "\n" for row in rows)
