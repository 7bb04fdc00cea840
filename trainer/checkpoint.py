"""Checkpoints: DeepSpeed's sharded engine state plus the run's own position, and resume.

Layout of checkpoint.dir (DeepSpeed's own, so its tools such as zero_to_fp32.py work on it):

    latest                  the tag of the newest complete checkpoint (written after its files)
    step-00000100/          model, optimizer and scheduler shards of every rank
    export/model.pt         the final weights in one file (see export.py)

The run's position (sampler state, step, tokens seen) travels in DeepSpeed's client_state.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from diffar.trainer.config import TrainConfig
from diffar.trainer.errors import UserError

TAG_PREFIX = "step-"


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


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def latest_tag(directory: Path) -> str | None:
    pointer = directory / "latest"
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    return tag if (directory / tag).is_dir() else None


def list_tags(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(
        p.name for p in directory.iterdir() if p.is_dir() and p.name.startswith(TAG_PREFIX)
    )


def prune(directory: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` checkpoints (never the one `latest` names)."""
    current = latest_tag(directory)
    tags = list_tags(directory)
    doomed = [t for t in tags[: max(0, len(tags) - keep)] if t != current]
    for tag in doomed:
        shutil.rmtree(directory / tag, ignore_errors=True)
    return doomed


def save(engine, directory: Path, position: RunPosition, keep: int, is_main: bool) -> str:
    """Collective: every rank writes its shards; rank 0 then prunes old checkpoints."""
    tag = tag_for(position.step)
    engine.save_checkpoint(str(directory), tag=tag, client_state=position.to_client_state())
    if is_main:
        prune(directory, keep)
    return tag


def load_latest(engine, directory: Path) -> RunPosition | None:
    """Collective: restore engine state from `latest`; None when there is nothing to resume."""
    if latest_tag(directory) is None:
        return None
    path, client_state = engine.load_checkpoint(str(directory))
    if path is None:
        return None
    return RunPosition.from_client_state(client_state)


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
    from diffar.trainer.storage import local_checkpoint_dir

    uri = cfg.checkpoint.dir
    return CheckpointPlace(uri, local_checkpoint_dir(uri, cfg.data.cache_dir))


def pull(place: CheckpointPlace) -> None:
    """Collective-safe: every rank may call it; one per node downloads the newest checkpoint."""
    if place.remote:
        from diffar.trainer.storage import fetch_latest_checkpoint

        fetch_latest_checkpoint(place.uri, place.local)


def push(
    place: CheckpointPlace, tag: str, keep: int, local_rank: int, is_main: bool, barrier
) -> None:
    """Collective: after a save, each node uploads its ranks' files, then rank 0 commits
    (marker, `latest` last, pruning), so a checkpoint is visible only once complete."""
    if not place.remote:
        return
    from diffar.trainer.storage import commit_checkpoint, upload_checkpoint_files

    if local_rank == 0:
        upload_checkpoint_files(place.local, place.uri, tag)
    barrier()
    if is_main:
        commit_checkpoint(place.uri, tag, keep)


def push_file(place: CheckpointPlace, relative: str) -> None:
    if place.remote:
        from diffar.trainer.storage import open_store

        open_store(place.uri).put_file(relative, place.local / relative)
