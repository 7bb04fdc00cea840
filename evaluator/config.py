"""Typed evaluation configuration: what `diffar eval --config FILE` reads (YAML or JSON).

Light on imports (pydantic only) so the operator can render it into the eval Job's ConfigMap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from diffar.trainer.config import format_validation, load_mapping
from diffar.trainer.errors import UserError

# The shipped tasks (evaluator/tasks.py reads their data); kept here so that config loading needs
# no task data. tests/evaluator checks the two lists agree.
KNOWN_TASKS = ("arc_easy", "boolq", "copa", "hellaswag", "piqa", "winogrande", "sciq", "lambada")
DEFAULT_TASKS = (
    "arc_easy",
    "boolq",
    "copa",
    "hellaswag",
    "piqa",
    "winogrande",
    "sciq",
    "lambada",
)


class EvalConfigError(UserError):
    """An eval config that cannot describe an evaluation."""


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_uri: str = Field(
        ...,
        description="Trained model: a checkpoint dir holding export/model.pt, or the model.pt "
        "itself (path, file:// or s3://)",
    )
    name: str | None = Field(None, description="Run name (default: the training config's)")
    data_uri: str | None = Field(
        None, description="Validation shards (default: the training config's data.val_uri)"
    )
    val_sequences: int | None = Field(
        256, ge=1, description="Validation windows of seq_len+1 tokens to score (null: all)"
    )
    samples: int = Field(32, ge=1, description="Monte Carlo samples per sequence for MDM ELBOs")
    stratified: bool = Field(True, description="Stratified t across the samples (else i.i.d.)")
    elbo_masking: Literal["rate", "count"] = Field(
        "rate",
        description="MDM ELBO masks: rate (training's: each token masked with probability p) or "
        "count (exactly m of n tokens, m uniform in 1..n: same bound, lower variance)",
    )
    chain_rule_sequences: int = Field(
        8, ge=0, description="Validation windows for the MDM chain-rule NLL (L passes each; 0: off)"
    )
    tasks: list[str] = Field(
        list(DEFAULT_TASKS), description="Downstream tasks, or paths of JSONL task files"
    )
    limit: int | None = Field(None, ge=1, description="At most N instances per task")
    train_log: str | None = Field(
        None,
        description="The trainer's step log (metrics.log_file; path, file:// or s3://): "
        "results.json then carries the training summary (best validation loss, its epoch, "
        "wall time, tokens/s, the validation curve)",
    )
    mdm_scoring: Literal["elbo", "chain_rule"] = Field(
        "elbo", description="How an MDM scores an answer: Monte Carlo ELBO or exact chain rule"
    )
    batch_size: int = Field(16, ge=1, description="Rows per forward pass")
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:1, ...")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU; logits are fp32 either way"
    )
    tokenizer: str | None = Field(
        None,
        description="gpt2, bytes, or a tokenizer.json path (default: implied by the vocabulary)",
    )
    output_uri: str | None = Field(
        None, description="Where results.json goes (default: next to the checkpoint)"
    )
    pushgateway: str | None = Field(
        None, description="Prometheus Pushgateway URL (default: $DIFFAR_PUSHGATEWAY_URL; none: off)"
    )
    seed: int = Field(0, ge=0)
    progress: bool = Field(True, description="Progress bars on stderr")
    cache_dir: str = Field(".diffar-cache", description="Local cache for remote files")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        # Checked here, at load, so a typo fails before the model is loaded and validated on.
        unknown = [t for t in tasks if not is_task_file(t) and t not in KNOWN_TASKS]
        if unknown:
            raise ValueError(
                f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; known: "
                f"{', '.join(KNOWN_TASKS)}, or a path to a .jsonl task file"
            )
        return tasks


def is_task_file(name: str) -> bool:
    """A task given as a JSONL file rather than by name (`tasks.load_task` reads those)."""
    return name.endswith(".jsonl") or os.sep in name or name.startswith("file://")


def parse_eval_config(raw: dict) -> EvalConfig:
    try:
        return EvalConfig.model_validate(raw)
    except ValidationError as e:
        raise EvalConfigError(format_validation(e, what="eval config")) from None


def load_eval_raw(path: str | Path) -> dict:
    return load_mapping(path, what="eval config")
