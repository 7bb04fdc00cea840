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

TAG_PREFIX = "step-"


@dataclass(frozen=True)
class RunPosition:
    step: int
    tokens_seen: int
    sampler: dict

    def to_client_state(self) -> dict:
        return {
            "diffar": {"step": self.step, "tokens_seen": self.tokens_seen, "sampler": self.sampler}
        }

    @classmethod
    def from_client_state(cls, state: dict) -> RunPosition:
        d = state["diffar"]
        return cls(step=d["step"], tokens_seen=d["tokens_seen"], sampler=d["sampler"])


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
