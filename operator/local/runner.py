"""`diffar run RUN.yaml --local`: a run manifest on this machine, no cluster.

The manifest goes through the operator's own parsing, validation and spec -> TrainConfig
mapping (`runs.py`), so a local run trains what the cluster would. Then, under `runs/<name>/`:

    train.json  eval.json       the resolved configs
    checkpoints/                 checkpoints and export/model.pt (unless the manifest names a store)
    cache/                       shards fetched from remote stores
    train-log.jsonl              every step's loss and each validation loss
    logs/train.log, eval.log     the trainer's and evaluator's output
    results.json                 the evaluation
    status.json                  the run's status, in the custom resource's shape

Training runs through torchx's local scheduler (`trainer/components.py`); running the same
command again resumes from the newest checkpoint, or reports that the run is complete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from diffar.operator.api import Progress, Results, RunStatus
from diffar.trainer.errors import UserError


@dataclass(frozen=True)
class LocalRun:
    name: str
    objective: str
    dir: Path
    train_config: object  # diffar.trainer.config.TrainConfig
    eval_config: dict | None
    processes: int
    plan: object  # diffar.trainer.plan.RunPlan of train_config
    threads: int | None = None

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    @property
    def train_json(self) -> Path:
        return self.dir / "train.json"

    @property
    def eval_json(self) -> Path:
        return self.dir / "eval.json"

    @property
    def log_file(self) -> Path:
        return self.dir / "train-log.jsonl"

    @property
    def results_json(self) -> Path:
        return self.dir / "results.json"

    @property
    def status_json(self) -> Path:
        return self.dir / "status.json"


def resolve(manifest: dict, root: Path, processes: int | None = None) -> LocalRun:
    """The manifest as a local run: the operator's TrainConfig with local paths filled in."""
    from diffar.operator.runs import Run, SpecError, train_config, validate
    from diffar.trainer.plan import plan_run

    try:
        run = Run.from_body(manifest)
    except SpecError as e:
        raise UserError(f"invalid run manifest: {e}") from None
    problems = validate(run, local=True)
    if problems:
        raise UserError("invalid run manifest: " + "; ".join(problems))
    run_dir = root / run.name
    cfg = train_config(run)
    nproc = processes or _local_processes(run)
    checkpoint_dir = cfg.checkpoint.dir or str(run_dir / "checkpoints")
    validation = cfg.validation
    if cfg.data.val_uri and validation.interval is None:
        validation = validation.model_copy(
            update={"interval": max(1, plan_run(cfg).total_steps // 20)}
        )
    cfg = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"cache_dir": str(run_dir / "cache")}),
            "checkpoint": cfg.checkpoint.model_copy(update={"dir": checkpoint_dir}),
            "validation": validation,
            "metrics": cfg.metrics.model_copy(
                update={"port": 0, "log_file": str(run_dir / "train-log.jsonl"), "log_interval": 10}
            ),
        }
    )
    cfg = type(cfg).model_validate(cfg.model_dump())  # re-validate the combined config
    cfg.check_world_size(nproc)
    eval_cfg = None
    if run.spec.evaluation.enabled:
        ev = run.spec.evaluation
        eval_cfg = {
            "name": run.name,
            "model_uri": checkpoint_dir,
            "data_uri": cfg.data.val_uri,
            "tasks": list(ev.tasks),
            "samples": ev.mcSamples,
            "val_sequences": max(1, cfg.validation.max_tokens // cfg.model.seq_len),
            "limit": ev.limit,
            "output_uri": str(run_dir / "results.json"),
            "cache_dir": str(run_dir / "cache"),
            "device": "cpu",
            "tokenizer": _dataset_tokenizer(cfg.data.train_uri),
        }
    return LocalRun(
        run.name,
        run.objective,
        run_dir,
        cfg,
        eval_cfg,
        nproc,
        plan_run(cfg),
        threads=run.spec.local.threads,
    )


def _dataset_tokenizer(uri: str) -> str | None:
    """A trained BPE travels with its dataset as tokenizer.json (`diffar data prepare`)."""
    from diffar.trainer.prepare import TOKENIZER_FILE
    from diffar.trainer.storage import is_remote, local_path

    if is_remote(uri):
        return None
    path = local_path(uri) / TOKENIZER_FILE
    return str(path) if path.is_file() else None


def _local_processes(run) -> int:
    return run.spec.local.processes


# ------------------------------------------------------------------------------ status


def read_progress(run: LocalRun, started: float | None) -> Progress:
    """Progress from the trainer's step log, in the custom resource's shape."""
    step, loss = 0, None
    if run.log_file.is_file():
        for line in run.log_file.read_text().splitlines():
            row = json.loads(line)
            if "loss" in row:
                step, loss = row["step"], row["loss"]
    cfg, plan = run.train_config, run.plan
    eta = None
    if started is not None and step > 0 and step < run.total_steps:
        rate = step / max(time.time() - started, 1e-6)
        eta = _rfc3339(datetime.now(UTC) + timedelta(seconds=(run.total_steps - step) / rate))
    return Progress(
        step=step,
        totalSteps=run.total_steps,
        epoch=step * cfg.global_batch / plan.sequences_per_epoch,
        tokensSeen=step * plan.tokens_per_step,
        loss=loss,
        summary=f"{step}/{run.total_steps} ({100 * step // max(run.total_steps, 1)}%)",
        eta=eta,
        sampledAt=_rfc3339(datetime.now(UTC)),
    )


def results_from(path: Path) -> Results | None:
    if not path.is_file():
        return None
    from diffar.operator.status import parse_results

    parsed = parse_results(path.read_text())
    return Results.model_validate(parsed) if parsed else None


def write_status(run: LocalRun, status: RunStatus) -> None:
    run.dir.mkdir(parents=True, exist_ok=True)
    tmp = run.status_json.with_suffix(".tmp")
    tmp.write_text(status.model_dump_json(indent=2, exclude_none=True))
    os.replace(tmp, run.status_json)


def _phase(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("phase")
    except (OSError, ValueError, AttributeError):
        return None


def _rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------ running


_OUTPUT_LOCK = threading.Lock()


class _Display:
    """One rewritten line on a terminal; a plain line at most every 15 s otherwise."""

    def __init__(self, name: str, stream=sys.stdout):
        self.name, self.stream = name, stream
        self.tty = stream.isatty()
        self.last_plain = 0.0
        self.last_text = ""
        self.last_printed = ""

    def show(self, phase: str, p: Progress) -> None:
        loss = f" loss {p.loss:.4f}" if p.loss is not None else ""
        eta = f" eta {p.eta[11:19]}Z" if p.eta else ""
        text = f"{self.name}: {phase} step {p.summary} epoch {p.epoch:.2f}{loss}{eta}"
        if self.tty:
            self._write("\r\033[K" + text)
        elif text != self.last_printed and time.monotonic() - self.last_plain >= 15:
            self._write(text + "\n")
            self.last_plain, self.last_printed = time.monotonic(), text
        self.last_text = text

    def line(self, text: str) -> None:
        clear = "\r\033[K" if self.tty and self.last_text else ""
        self._write(f"{clear}{self.name}: {text}\n")

    def _write(self, text: str) -> None:
        # Side-by-side runs print from several threads: one write per line, so lines never mix.
        with _OUTPUT_LOCK:
            self.stream.write(text)
            self.stream.flush()


def _component_file() -> str:
    from diffar.trainer import components

    return components.__file__


def _spawn(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "a")  # noqa: SIM115 - lives as long as the child
    out.write(f"\n==== {datetime.now(UTC).isoformat()} {' '.join(cmd)}\n")
    out.flush()
    return subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C: SIGINT to the whole process group (torchx, torchrun, workers), then wait."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 15) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _run_child(
    run: LocalRun, cmd: list[str], log: Path, phase: str, display: _Display, threads: int
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    # torchx's local scheduler runs `torchrun` by name: the one beside this interpreter, even
    # when its virtualenv is not activated.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    started = time.time()
    proc = _spawn(cmd, log, env)
    try:
        while proc.poll() is None:
            if phase == "Training":
                display.show(phase, read_progress(run, started))
            time.sleep(0.5)
    except KeyboardInterrupt:
        _stop(proc)
        raise
    if proc.returncode != 0:
        write_status(run, RunStatus(phase="Failed", objective=run.objective, reason=f"{phase}Failed",
                                    message=f"see {log}", progress=read_progress(run, None)))  # fmt: skip
        raise UserError(
            f"{phase.lower()} failed (exit {proc.returncode}); last lines of {log}:\n{_tail(log)}"
        )


def run_local(
    run: LocalRun, threads: int | None = None, display: _Display | None = None
) -> RunStatus:
    """Train (resuming), then evaluate; returns the final status. Idempotent once complete."""
    display = display or _Display(run.name)
    run.dir.mkdir(parents=True, exist_ok=True)
    threads = threads or run.threads or max(1, (os.cpu_count() or 1) // run.processes)
    results = results_from(run.results_json)
    # A run without evaluation has no results.json: its own Succeeded status says it is done.
    trained = run.eval_config is None and _phase(run.status_json) == "Succeeded"
    if (
        (results is not None or trained)
        and run.train_json.is_file()
        and run.train_json.read_text() == run.train_config.to_json()
    ):
        status = RunStatus(phase="Succeeded", objective=run.objective, reason="AlreadyComplete",
                           message="run is complete; delete runs/<name> to train again",
                           progress=read_progress(run, None), results=results)  # fmt: skip
        display.line("already complete: nothing to do")
        write_status(run, status)
        return status

    run.train_json.write_text(run.train_config.to_json())
    if run.eval_config is not None:
        run.eval_json.write_text(json.dumps(run.eval_config, indent=2))
    write_status(
        run, RunStatus(phase="Training", objective=run.objective, progress=read_progress(run, None))
    )
    train_cmd = [
        str(Path(sys.executable).with_name("torchx")), "run", "-s", "local_cwd",
        f"{_component_file()}:train", "--config", str(run.train_json.resolve()), "--nproc", str(run.processes),
    ]  # fmt: skip
    display.line(
        f"training {run.objective} on {run.processes} process(es), log {run.dir / 'logs/train.log'}"
    )
    try:
        _run_child(run, train_cmd, run.dir / "logs" / "train.log", "Training", display, threads)
        progress = read_progress(run, None)
        display.show("Training", progress)
        if run.eval_config is None:
            status = RunStatus(phase="Succeeded", objective=run.objective, progress=progress)
            write_status(run, status)
            return status
        write_status(run, RunStatus(phase="Evaluating", objective=run.objective, progress=progress))
        display.line(f"evaluating, log {run.dir / 'logs/eval.log'}")
        eval_cmd = [
            sys.executable,
            "-m",
            "diffar.operator.cli",
            "eval",
            "--config",
            str(run.eval_json),
        ]
        _run_child(run, eval_cmd, run.dir / "logs" / "eval.log", "Evaluating", display, threads)
    except KeyboardInterrupt:
        write_status(run, RunStatus(phase="Suspended", objective=run.objective, reason="Interrupted",
                                    message="interrupted; run the same command to resume",
                                    progress=read_progress(run, None)))  # fmt: skip
        display.line("interrupted; run the same command again to resume from the last checkpoint")
        raise
    status = RunStatus(phase="Succeeded", objective=run.objective, progress=read_progress(run, None),
                       results=results_from(run.results_json))  # fmt: skip
    write_status(run, status)
    return status


def run_side_by_side(
    runs: list[LocalRun], workers: int = 2, *, keep_going: bool = False
) -> list[RunStatus]:
    """Run several local runs, `workers` at a time, one CPU thread each; statuses in order.
    They share the terminal, so progress comes as plain lines. The first failure stops new
    runs from starting and is raised once the running ones end; with `keep_going` (a
    ScalingStudy's children) a failed run gets a Failed status and the others go on."""

    statuses: list[RunStatus | None] = [None] * len(runs)
    pending = list(enumerate(runs))
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not pending or errors:
                    return
                i, run = pending.pop(0)
            try:
                display = _Display(run.name)
                display.tty = False
                statuses[i] = run_local(run, threads=1, display=display)
            except UserError as e:
                if not keep_going:
                    errors.append(e)
                    continue
                display.line(f"failed: {str(e).splitlines()[0]}")
                statuses[i] = RunStatus(phase="Failed", objective=run.objective,
                                        reason="RunFailed", message=str(e)[-2000:])  # fmt: skip
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.3)
    if errors:
        raise errors[0]
    return statuses


def format_status(name: str, status: RunStatus) -> str:
    """The run's status as `kubectl get -o yaml` would show the custom resource's."""
    import yaml

    shown = {
        k: v
        for k, v in status.model_dump(mode="json", exclude_none=True).items()
        if v not in ([], {})
    }
    return yaml.safe_dump({"name": name, "status": shown}, sort_keys=False)
