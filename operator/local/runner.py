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

import contextlib
import json
import os
import re
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
    env: tuple[tuple[str, str], ...] = ()  # spec.s3's endpoint and region, for the children

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

    @property
    def lock_file(self) -> Path:
        return self.dir / "run.lock"


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
            "train_log": str(run_dir / "train-log.jsonl"),
        }
        from diffar.evaluator.config import parse_eval_config

        # Checked now, not after training: an unknown task name fails before any work.
        parse_eval_config(eval_cfg)
    return LocalRun(
        run.name,
        run.objective,
        run_dir,
        cfg,
        eval_cfg,
        nproc,
        plan_run(cfg),
        threads=run.spec.local.threads,
        env=s3_env(run.spec.s3),
    )


def s3_env(s3) -> tuple[tuple[str, str], ...]:
    """spec.s3 as the environment the cluster's pods get (builders.py): the endpoint and region.
    Credentials come from this shell's environment (a local run reads no Kubernetes Secret)."""
    env = []
    if s3.endpoint:
        env.append(("AWS_ENDPOINT_URL", s3.endpoint))
    if s3.region:
        env.append(("AWS_DEFAULT_REGION", s3.region))
    return tuple(env)


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


class Rate:
    """Steps per second of the training under way, measured from the first step it logged:
    a resumed run's earlier steps took no time of this process."""

    def __init__(self, started: float):
        self.started = started
        self.first: tuple[float, int] | None = None

    def eta_seconds(self, step: int, total: int, now: float) -> float | None:
        if self.first is None or step < self.first[1]:
            self.first = (now, step)
            return None
        t0, s0 = self.first
        if step >= total or step == s0 or now <= t0:
            return None
        return (total - step) * (now - t0) / (step - s0)


def read_progress(run: LocalRun, rate: Rate | None = None) -> Progress:
    """Progress from the trainer's step log, in the custom resource's shape. While a child
    started at `rate.started` has not yet rewritten the log (a resume truncates it to the
    checkpoint's step), the rows are the previous attempt's and are not shown as progress."""
    step, loss = 0, None
    fresh = rate is None or (
        run.log_file.is_file() and run.log_file.stat().st_mtime >= rate.started
    )
    if fresh and run.log_file.is_file():
        from diffar.evaluator.results import parse_log

        for row in parse_log(run.log_file.read_text()):
            if "loss" in row:
                step, loss = row["step"], row["loss"]
    cfg, plan = run.train_config, run.plan
    eta = None
    if rate is not None and fresh and step > 0:
        left = rate.eta_seconds(step, run.total_steps, time.time())
        if left is not None:
            eta = _rfc3339(datetime.now(UTC) + timedelta(seconds=left))
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
    """status.results from results.json, through the same compact form the operator reads
    from the eval pod's termination message."""
    if not path.is_file():
        return None
    from diffar.evaluator.results import summary
    from diffar.operator.status import parse_results

    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    parsed = parse_results(summary(results)) if isinstance(results, dict) else None
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


def _seconds_until(rfc3339: str) -> float:
    when = datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def format_duration(seconds: float) -> str:
    """How long, not until when: 45s, 3m05s, 2h07m."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


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
        eta = f" eta {format_duration(_seconds_until(p.eta))}" if p.eta else ""
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


def failure_cause(log_text: str) -> list[str]:
    """The lines of a child's log that say why it failed: the last attempt's (after the
    runner's `====` header) `... error: ...` lines that `diffar` prints for a UserError, or else
    the last exception line of a traceback; torchrun's and torchx's own failure report
    (ChildFailedError, the elastic footer) says only that a worker failed, and is skipped."""
    text = log_text.rsplit("\n==== ", 1)[-1]
    lines = [_strip_prefix(ln) for ln in text.splitlines()]
    noise = ("ChildFailedError", "torch.distributed.elastic", "torchx ", "error_file")
    user = [ln for ln in lines if _USER_ERROR.search(ln) and not any(n in ln for n in noise)]
    if user:
        return list(dict.fromkeys(user))[-2:]
    exc = [ln for ln in lines if _EXCEPTION.match(ln) and not any(n in ln for n in noise)]
    return exc[-1:]


_USER_ERROR = re.compile(r"^diffar [a-z]+: error: ")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b(: .*)?$")
_PREFIX = re.compile(r"^(\S+/\d+\s+)?(\[\d+\]:)?")  # torchx's "cli/0 ", torchrun's "[0]:"


def _strip_prefix(line: str) -> str:
    return _PREFIX.sub("", line, count=1).strip()


def _status_writer(run: LocalRun, phase: str, rate: Rate):
    """status.json kept current while the child runs (at most every 5 s), so that reading it
    shows the step reached, not the step the phase started at."""
    last = [0.0]

    def update(force: bool = False) -> Progress:
        progress = read_progress(run, rate)
        if force or time.monotonic() - last[0] >= 5:
            write_status(run, RunStatus(phase=phase, objective=run.objective, progress=progress))
            last[0] = time.monotonic()
        return progress

    return update


def _run_child(
    run: LocalRun, cmd: list[str], log: Path, phase: str, display: _Display, threads: int
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    env.update(dict(run.env))
    # torchx's local scheduler runs `torchrun` by name: the one beside this interpreter, even
    # when its virtualenv is not activated.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    rate = Rate(time.time())
    proc = _spawn(cmd, log, env)
    update = _status_writer(run, phase, rate)
    try:
        while proc.poll() is None:
            if phase == "Training":
                display.show(phase, update())
            time.sleep(0.5)
    except KeyboardInterrupt:
        _stop(proc)
        raise
    if proc.returncode != 0:
        cause = failure_cause(log.read_text(errors="replace")) if log.is_file() else []
        reason = "; ".join(cause) or f"exit {proc.returncode}"
        write_status(run, RunStatus(phase="Failed", objective=run.objective, reason=f"{phase}Failed",
                                    message=f"{reason} (log: {log})"[:1024],
                                    progress=read_progress(run)))  # fmt: skip
        shown = "\n".join(f"  {c}" for c in cause) or "  (no error line; the whole log tells more)"
        raise UserError(
            f"{phase.lower()} failed (exit {proc.returncode}); the cause, from {log}:\n{shown}"
        )


class RunInUse(UserError):
    """Another `diffar run` holds the run folder."""


@contextlib.contextmanager
def run_lock(run: LocalRun):
    """One `diffar run` per run folder: a lock file holding the owner's pid, created
    atomically. A lock whose process is gone (killed, machine rebooted) is taken over."""
    run.dir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(2):
        try:
            fd = os.open(run.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _lock_owner(run.lock_file)
            if pid is not None and _alive(pid):
                raise RunInUse(
                    f"{run.dir} is in use by another diffar run (pid {pid}); wait for it to "
                    f"finish or stop it, then run again"
                ) from None
            run.lock_file.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    else:
        raise RunInUse(f"{run.dir}: could not take the run lock {run.lock_file}")
    try:
        yield
    finally:
        if _lock_owner(run.lock_file) == os.getpid():
            run.lock_file.unlink(missing_ok=True)


def _lock_owner(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def changed_fields(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two configs."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, name + ".")
        elif a != b:
            out.append(name)
    return out


def _trained_before(run: LocalRun) -> bool:
    """Whether the folder holds work of an earlier config: logged steps or results."""
    return run.results_json.is_file() or (
        run.log_file.is_file() and run.log_file.stat().st_size > 0
    )


def check_same_config(run: LocalRun) -> None:
    """A run folder belongs to one config: training it with another would resume from
    checkpoints of the first (and the trainer refuses), or overwrite its results."""
    if not run.train_json.is_file() or not _trained_before(run):
        return
    try:
        old = json.loads(run.train_json.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return
    changed = changed_fields(old, json.loads(run.train_config.to_json()))
    if changed:
        shown = ", ".join(changed[:6]) + (", ..." if len(changed) > 6 else "")
        raise UserError(
            f"{run.dir} holds run {run.name!r} trained with another manifest (changed: {shown}); "
            f"give the run a new metadata.name, or delete {run.dir} to train it again"
        )


def run_local(
    run: LocalRun, threads: int | None = None, display: _Display | None = None
) -> RunStatus:
    """Train (resuming), then evaluate; returns the final status. Idempotent once complete.
    Holds the run folder's lock throughout."""
    with run_lock(run):
        return _run_locked(run, threads, display)


def _run_locked(run: LocalRun, threads: int | None, display: _Display | None) -> RunStatus:
    display = display or _Display(run.name)
    threads = threads or run.threads or max(1, (os.cpu_count() or 1) // run.processes)
    check_same_config(run)
    results = results_from(run.results_json)
    # A run without evaluation has no results.json: its own Succeeded status says it is done.
    trained = run.eval_config is None and _phase(run.status_json) == "Succeeded"
    if (results is not None or trained) and run.train_json.is_file():
        status = RunStatus(phase="Succeeded", objective=run.objective, reason="AlreadyComplete",
                           message=f"run is complete; delete {run.dir} to train it again",
                           progress=read_progress(run), results=results)  # fmt: skip
        display.line("already complete: nothing to do")
        write_status(run, status)
        return status

    run.train_json.write_text(run.train_config.to_json())
    if run.eval_config is not None:
        run.eval_json.write_text(json.dumps(run.eval_config, indent=2))
    write_status(
        run, RunStatus(phase="Training", objective=run.objective, progress=read_progress(run))
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
        progress = read_progress(run)
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
                                    progress=read_progress(run)))  # fmt: skip
        display.line("interrupted; run the same command again to resume from the last checkpoint")
        raise
    status = RunStatus(phase="Succeeded", objective=run.objective, progress=read_progress(run),
                       results=results_from(run.results_json))  # fmt: skip
    write_status(run, status)
    return status


def sigterm_as_interrupt() -> None:
    """SIGTERM (`kill`, a closing terminal's session manager) stops a run as Ctrl-C does: the
    children are stopped and status.json says Suspended, not a Training that never ends."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


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
