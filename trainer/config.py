"""Typed training configuration: the one shape a run takes from manifest to trainer.

The operator renders a `TrainConfig` into a ConfigMap as JSON; `diffar train --config` reads it
back. Defaults are the paper's (arXiv 2507.15857, Table 5 and its Megatron-DeepSpeed scripts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from diffar.trainer.errors import UserError, read_text
from diffar.trainer.presets import PRESETS

Objective = Literal["ar", "mdm"]
Precision = Literal["auto", "bf16", "fp32"]

GPT2_VOCAB = 50257
GPT2_EOD = 50256


class ConfigError(UserError):
    """A config that cannot describe a run; its message is meant for the user as is."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """Transformer shape. `preset` fills dim/layers/heads; explicit fields override it."""

    preset: str | None = Field(
        None, description="Named size from the paper's grid, e.g. 140M, 425M, tiny"
    )
    dim: int | None = Field(None, ge=8, description="Hidden size h")
    n_layers: int | None = Field(None, ge=1, description="Transformer blocks")
    n_heads: int | None = Field(None, ge=1, description="Attention heads")
    vocab_size: int = Field(GPT2_VOCAB, ge=2, description="Tokenizer vocabulary (unpadded)")
    seq_len: int = Field(2048, ge=2, description="Sequence length L")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Attention and hidden dropout")
    rope_theta: float = Field(10000.0, gt=0)
    norm_eps: float = Field(1e-5, gt=0)
    init_std: float = Field(0.02, gt=0)
    attention: Literal["auto", "sdpa", "flash"] = Field(
        "auto", description="flash-attn when installed on CUDA (auto), or torch SDPA"
    )

    @model_validator(mode="after")
    def _resolve_preset(self) -> ModelConfig:
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown model preset {self.preset!r}; known: {', '.join(PRESETS)}")
        shape = PRESETS.get(self.preset, {}) if self.preset else {}
        for key in ("dim", "n_layers", "n_heads"):
            if getattr(self, key) is None:
                if key not in shape:
                    raise ValueError(f"model.{key} is required when no preset gives it")
                object.__setattr__(self, key, shape[key])
        if self.dim % self.n_heads:
            raise ValueError(f"model.dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError("model.dim / n_heads must be even for rotary embeddings")
        return self

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        # The paper's SwiGLU width: int(8h/3/64)*64 (at least one 64-block for tiny models).
        return max(64, int(8 * self.dim / 3 / 64) * 64)

    @property
    def mask_token_id(self) -> int:
        # The first unused row past the tokenizer's vocabulary (50257 for GPT-2).
        return self.vocab_size

    @property
    def padded_vocab_size(self) -> int:
        # Room for the mask token, rounded up to 64 for efficient matmuls (50304 for GPT-2).
        return -(-(self.vocab_size + 1) // 64) * 64


class DataConfig(_Strict):
    train_uri: str = Field(
        ..., description="Token shards: a path, file:// or s3:// URI of a dataset manifest dir"
    )
    val_uri: str | None = Field(
        None, description="Validation shards: periodic validation loss, and the evaluator's data"
    )
    unique_tokens: int | None = Field(
        None, ge=2, description="Use the first U tokens of the training set (default: all of it)"
    )
    cache_dir: str = Field(
        ".diffar-cache", description="Local cache for shards fetched from remote stores"
    )


class OptimConfig(_Strict):
    lr: float = Field(2e-4, gt=0, description="Peak learning rate")
    min_lr: float = Field(2e-5, ge=0, description="Final learning rate of the cosine decay")
    warmup_fraction: float = Field(
        0.01, ge=0, lt=1, description="Warmup steps as a fraction of total"
    )
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="Global gradient-norm clip (0 disables)")

    @model_validator(mode="after")
    def _lr_order(self) -> OptimConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"optim.min_lr {self.min_lr} is above optim.lr {self.lr}")
        return self


class DiffusionConfig(_Strict):
    mask_eps: float = Field(
        1e-3, gt=0, lt=1, description="p = (1-eps) t + eps: the smallest mask rate"
    )


class CheckpointConfig(_Strict):
    dir: str | None = Field(
        None, description="Checkpoint directory (path, file:// or s3://); none disables"
    )
    interval: int = Field(1000, ge=1, description="Save every N optimizer steps (and at the end)")
    keep: int = Field(3, ge=1, description="Keep the newest N checkpoints")


class ValidationConfig(_Strict):
    interval: int | None = Field(
        None, ge=1, description="Validation loss every N steps and at the end (needs data.val_uri)"
    )
    max_tokens: int = Field(262_144, ge=2, description="Validate on the first N validation tokens")
    batch_size: int = Field(8, ge=1, description="Sequences per validation forward pass")


class MetricsConfig(_Strict):
    port: int | None = Field(
        9400, ge=0, le=65535, description="Prometheus port on rank 0 (null: off)"
    )
    log_interval: int = Field(10, ge=1, description="Log one line every N steps")
    log_file: str | None = Field(None, description="JSON-lines log of every step's loss (rank 0)")


class TrainConfig(_Strict):
    name: str = Field("diffar-run", description="Run name")
    objective: Objective = Field(..., description="ar (autoregressive) or mdm (masked diffusion)")
    model: ModelConfig
    data: DataConfig
    epochs: float = Field(1.0, gt=0, description="Passes over the unique tokens")
    global_batch: int = Field(
        256, ge=1, description="Sequences per optimizer step, all ranks together"
    )
    micro_batch: int = Field(8, ge=1, description="Sequences per rank per forward pass")
    max_steps: int | None = Field(
        None, ge=1, description="Stop early after N steps (schedule unchanged)"
    )
    optim: OptimConfig = OptimConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    precision: Precision = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    zero_stage: int = Field(1, ge=0, le=3, description="DeepSpeed ZeRO stage")
    seed: int = Field(1234, ge=0)
    checkpoint: CheckpointConfig = CheckpointConfig()
    validation: ValidationConfig = ValidationConfig()
    metrics: MetricsConfig = MetricsConfig()

    @model_validator(mode="after")
    def _validation_needs_data(self) -> TrainConfig:
        if self.validation.interval is not None and not self.data.val_uri:
            raise ValueError("validation.interval is set but data.val_uri is not")
        return self

    def check_world_size(self, world_size: int) -> None:
        per_rank, rem = divmod(self.global_batch, world_size)
        if rem:
            raise ConfigError(
                f"global_batch {self.global_batch} is not divisible by world size {world_size}"
            )
        if per_rank % min(self.micro_batch, per_rank):
            raise ConfigError(
                f"per-rank batch {per_rank} is not a multiple of micro_batch {self.micro_batch}"
            )

    def micro_batch_for(self, world_size: int) -> int:
        return min(self.micro_batch, self.global_batch // world_size)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def parse_config(raw: dict) -> TrainConfig:
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation(e)) from None


def load_mapping(path: str | Path, what: str = "config") -> dict:
    """A YAML or JSON file holding a mapping, or a one-line ConfigError saying what is wrong."""
    path = Path(path)
    try:
        text = read_text(path, what)
    except UserError as e:
        raise ConfigError(str(e)) from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ConfigError(f"{path} is not valid {kind}: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of {what} fields")
    return raw


def load_config(path: str | Path) -> TrainConfig:
    return parse_config(load_mapping(path))


def format_validation(e: ValidationError, what: str = "config") -> str:
    lines = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return f"invalid {what}: " + "; ".join(lines)


def apply_overrides(cfg: TrainConfig, assignments: list[str]) -> TrainConfig:
    """Apply `a.b=value` overrides (values parsed as YAML scalars) and re-validate."""
    if not assignments:
        return cfg
    raw = cfg.model_dump()
    keys = {item.partition("=")[0] for item in assignments}
    if "model.preset" in keys:
        # The dump holds the old preset's resolved shape; a new preset must fill it afresh.
        for dim_key in ("dim", "n_layers", "n_heads"):
            if f"model.{dim_key}" not in keys:
                raw["model"][dim_key] = None
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = yaml.safe_load(value)
    return parse_config(raw)
