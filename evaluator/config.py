"""Typed evaluation configuration: what `diffar eval --config FILE` reads (YAML or JSON).

Light on imports (pydantic only) so the operator can render it into the eval Job's ConfigMap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from diffar.trainer.config import format_validation, load_mapping
from diffar.trainer.errors import UserError

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
    chain_rule_sequences: int | None = Field(
        None,
        ge=0,
        description="Validation windows for the MDM chain-rule NLL (L passes each): null, the "
        "ELBO's windows; n, the first n (the ELBO is then also reported on them); 0: off",
    )
    tasks: list[str] = Field(
        list(DEFAULT_TASKS), description="Downstream tasks, or paths of JSONL task files"
    )
    limit: int | None = Field(None, ge=1, description="At most N instances per task")
    mdm_scoring: Literal["elbo", "chain_rule"] = Field(
        "chain_rule",
        description="How an MDM scores an answer: exact chain rule (the paper's main script) or "
        "Monte Carlo ELBO",
    )
    mdm_padding: Literal["mask", "none"] = Field(
        "mask",
        description="MDM task inputs: padded to the sequence length with mask tokens (the "
        "paper's) or scored as they are",
    )
    softmax_vocab: Literal["padded", "text"] = Field(
        "padded",
        description="Task scoring's softmax over the padded vocabulary (the paper's) or the "
        "tokenizer's ids; validation reports both",
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


def parse_eval_config(raw: dict) -> EvalConfig:
    try:
        return EvalConfig.model_validate(raw)
    except ValidationError as e:
        raise EvalConfigError(format_validation(e, what="eval config")) from None


def load_eval_raw(path: str | Path) -> dict:
    return load_mapping(path, what="eval config")
