"""Checkpoints: DeepSpeed's sharded engine state plus the run's own position, and resume.

Layout of checkpoint.dir (DeepSpeed's own, so its tools such as zero_to_fp32.py work on it):

    step-00000100/          model, optimizer and scheduler shards of every rank, and
        .diffar-complete.json   the commit marker: written once every rank's files are stored
    latest                  the newest committed tag (written after the marker; a hint only)
    export/model.pt         the final weights in one file (see export.py), and its .sha256

The run's position (sampler state, step, tokens seen) travels in DeepSpeed's client_state.

Saving and resuming are collective and follow the commit protocol of checkpoint_store.py: a
step counts only once committed, rank 0 picks the newest committed step, every node makes
exactly that step present (fetched and verified from a remote store), every rank loads it by
name and the ranks compare the step they loaded. DeepSpeed is never allowed to write `latest`
on its own: it would name a step before that step is stored on every node.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from diffar.trainer.checkpoint_store import TAG_PREFIX, step_of, tag_for  # noqa: F401
from diffar.trainer.config import TrainConfig
from diffar.trainer.errors import UserError, disk_space


@dataclass(frozen=True)
class RunPosition:
    step: int
    tokens_seen: int
    sampler: dict
    fingerprint: dict

    def to_client_state(self) -> dict:
        return {
            "diffar": {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "sampler": self.sampler,
                "fingerprint": self.fingerprint,
            }
        }

    @classmethod
    def from_client_state(cls, state: dict) -> RunPosition:
        d = state["diffar"]
        return cls(d["step"], d["tokens_seen"], d["sampler"], d.get("fingerprint", {}))


def fingerprint(cfg: TrainConfig) -> dict:
    """The fields that define what a run trains; a checkpoint only resumes a run that agrees.
    Batch splitting, checkpointing and metrics settings may change between restarts."""
    return cfg.model_dump(
        mode="json",
        include={
            "objective",
            "ar",
            "model",
            "data",
            "epochs",
            "global_batch",
            "optim",
            "diffusion",
            "seed",
            "zero_stage",
        },
        exclude={"data": {"train_uri", "val_uri", "cache_dir"}},
    )


def check_resumable(position: RunPosition, cfg: TrainConfig, where: str) -> None:
    current = fingerprint(cfg)
    changed = sorted(_diff_keys(position.fingerprint, current))
    if changed:
        raise UserError(
            f"{where} holds a checkpoint of a different run (changed: {', '.join(changed)}); "
            "use a new checkpoint.dir or restore the original settings"
        )


def _diff_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out


class CheckpointError(UserError):
    """A checkpoint that could not be written or stored; the last committed one stays valid."""


@dataclass(frozen=True)
class CheckpointPlace:
    """Where a run's checkpoints live (`uri`) and where DeepSpeed reads and writes them on this
    node (`local`): the same directory for paths, a cache directory mirrored to S3 otherwise."""

    uri: str
    local: Path

    @property
    def remote(self) -> bool:
        from diffar.trainer.storage import is_remote

        return is_remote(self.uri)


def place_for(cfg: TrainConfig) -> CheckpointPlace | None:
    if not cfg.checkpoint.dir:
        return None
    from diffar.trainer.checkpoint_store import local_checkpoint_dir

    uri = cfg.checkpoint.dir
    return CheckpointPlace(uri, local_checkpoint_dir(uri, cfg.data.cache_dir))


# Errors a rank reports to the others instead of leaving them waiting in the next collective.
_SHARED_ERRORS = (UserError, OSError)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if isinstance(e, UserError) else f"{type(e).__name__}: {text}"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resume(engine, place: CheckpointPlace, env, control, log: Callable[[str], None] = _say):
    """Collective: restore the newest committed checkpoint on every rank, or None (a fresh run).

    Rank 0 picks the step (the store's newest committed tag; for a dir used in place, the
    newest one whose files still match their marker), every node makes that tag present (a tag
    whose files are damaged or missing in the store gives way to the committed one before it),
    every rank loads it by name, and the ranks compare the step they restored."""
    candidates = error = None
    if env.is_main:
        try:
            candidates = _candidates(place)
        except _SHARED_ERRORS as e:
            error = _one_line(e)
    candidates, error = control.broadcast((candidates, error))
    if error:
        raise UserError(error)
    choice = _present_on_every_node(place, candidates, env, control, log)
    if choice is None:
        return None
    loaded, client_state, failed = None, None, None
    try:
        path, client_state = engine.load_checkpoint(str(place.local), tag=choice)
        if path is not None:
            loaded = RunPosition.from_client_state(client_state).step
    except (*_SHARED_ERRORS, RuntimeError, KeyError, EOFError) as e:
        failed = _one_line(e)
    failed = control.first_error(failed)
    if failed:
        raise CheckpointError(f"cannot load the committed checkpoint {choice}: {failed}")
    steps = control.gather(loaded)
    if any(s != step_of(choice) for s in steps):
        raise CheckpointError(
            f"ranks restored different steps from {place.uri}/{choice} ({steps}, by rank); "
            "the checkpoint is damaged: delete its tag to resume from the one before"
        )
    log(f"diffar train: rank {env.rank} resumes from the committed checkpoint {choice}")
    return RunPosition.from_client_state(client_state)


def _candidates(place: CheckpointPlace) -> list[str]:
    """Rank 0: the committed tags to try, newest first."""
    from diffar.trainer.checkpoint_store import (
        list_checkpoint_tags,
        newest_intact_local,
    )
    from diffar.trainer.storage import open_store

    if not place.remote:
        found = newest_intact_local(place.local)
        return [found.tag] if found else []
    tags, committed = list_checkpoint_tags(open_store(place.uri))
    return [t for t in reversed(tags) if t in committed]


def _present_on_every_node(place, candidates: list[str], env, control, log) -> str | None:
    """The first candidate every node holds intact (fetched and verified from a remote store)."""
    from diffar.trainer.checkpoint_store import fetch_checkpoint
    from diffar.trainer.storage import ChecksumError, NotFoundError

    for tag in candidates:
        if not place.remote:
            return tag
        failed = None
        if env.local_rank == 0:
            try:
                with disk_space(f"checkpoint {tag}", place.local, "rerun to resume"):
                    fetch_checkpoint(place.uri, place.local, tag)
            except (ChecksumError, NotFoundError) as e:
                failed = ("damaged", _one_line(e))
            except _SHARED_ERRORS as e:
                failed = ("error", _one_line(e))
        # also holds each node's other ranks until the files are there
        failures = [f for f in control.gather(failed) if f]
        if not failures:
            return tag
        if any(kind == "error" for kind, _ in failures):
            detail = next(msg for kind, msg in failures if kind == "error")
            raise CheckpointError(f"cannot resume from the committed checkpoint {tag}: {detail}")
        if env.is_main:
            log(
                f"checkpoint {place.uri}/{tag} is damaged in the store ({failures[0][1]}); "
                "trying the committed checkpoint before it"
            )
    if candidates:
        raise CheckpointError(
            f"{place.uri}: every committed checkpoint ({', '.join(candidates)}) is damaged in "
            "the store; restore one, or delete them to start the run afresh"
        )
    return None


def save(engine, place: CheckpointPlace, position: RunPosition, keep: int, env, control) -> str:
    """Collective: every rank writes its shards, each node stores its files, then rank 0
    commits the step (marker, `latest`, pruning) once every node succeeded. Any failure stops
    the run with one line on every rank; the previous committed step is untouched."""
    from diffar.trainer.checkpoint_store import (
        commit_checkpoint,
        prune_local_copy,
        uncommit,
        upload_checkpoint_files,
    )

    tag = tag_for(position.step)
    # A tag saved before by an earlier life of the run (never committed, or skipped on resume
    # as damaged) is rewritten from scratch, and reads as uncommitted meanwhile.
    if env.is_main:
        uncommit(place.uri, tag)
    if (env.local_rank == 0 if place.remote else env.is_main) and (place.local / tag).exists():
        shutil.rmtree(place.local / tag)
    control.barrier()
    with disk_space(f"checkpoint {tag}", place.local, "rerun to resume"):
        engine.save_checkpoint(
            str(place.local), tag=tag, client_state=position.to_client_state(), save_latest=False
        )
    failed = None
    if place.remote and env.local_rank == 0:
        try:
            with disk_space(f"checkpoint {tag}", place.local, "rerun to resume"):
                # A fresh save: the store's copy of this tag, if any, was never committed or
                # was found damaged, and its recorded sha256 says nothing about its bytes.
                upload_checkpoint_files(place.local, place.uri, tag, skip_same=False)
        except _SHARED_ERRORS as e:
            failed = _one_line(e)
    failed = control.first_error(failed)  # every rank's shards are written and stored
    if not failed and env.is_main:
        try:
            commit_checkpoint(place.uri, tag, keep)
        except _SHARED_ERRORS as e:
            failed = _one_line(e)
    if not failed:
        failed = control.first_error(failed)
    if failed:
        raise CheckpointError(
            f"checkpoint {tag} was not committed ({failed}); the run stops here and resumes "
            "from its last committed checkpoint when restarted"
        )
    if place.remote and env.local_rank == 0:
        pointer = place.local / "latest"
        pointer.with_name("latest.tmp").write_text(f"{tag}\n")
        pointer.with_name("latest.tmp").replace(pointer)
        prune_local_copy(place.local, tag, keep)
    return tag


def push_export(place: CheckpointPlace, relatives: list[str]) -> None:
    """Rank 0: the exported model's files into the store (the checksum after the model)."""
    if place.remote:
        from diffar.trainer.storage import open_store

        store = open_store(place.uri)
        for rel in relatives:
            store.put_file(rel, place.local / rel)
