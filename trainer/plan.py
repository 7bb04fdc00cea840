"""A run's size before it starts: parameters, steps, tokens and FLOPs, from the config alone."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from diffar.trainer.config import ConfigError, TrainConfig
from diffar.trainer.sizing import count_parameters, flops_per_token


@dataclass(frozen=True)
class RunPlan:
    name: str
    objective: str
    params: int
    unique_tokens: int
    epochs: float
    seq_len: int
    sequences_per_epoch: int
    global_batch: int
    total_steps: int
    scheduled_steps: int
    tokens_per_step: int
    total_tokens: int
    flops_per_token: float
    total_flops: float
    warmup_steps: int


def sequences_per_epoch(unique_tokens: int, seq_len: int) -> int:
    # Windows of L+1 tokens at stride L (the last token of one is the first of the next), as
    # Megatron's GPT dataset cuts them: every unique token is a target exactly once per epoch.
    return (unique_tokens - 1) // seq_len


def total_steps(unique_tokens: int, epochs: float, seq_len: int, global_batch: int) -> int:
    return int(epochs * sequences_per_epoch(unique_tokens, seq_len)) // global_batch


def plan_run(cfg: TrainConfig, unique_tokens: int | None = None) -> RunPlan:
    """Size a run; `unique_tokens` is the dataset's size when the config leaves it unset."""
    u = cfg.data.unique_tokens or unique_tokens
    if u is None:
        raise ConfigError("data.unique_tokens is unset and the dataset size is unknown")
    L = cfg.model.seq_len
    if sequences_per_epoch(u, L) < 1:
        raise ConfigError(f"{u} unique tokens hold no window of seq_len+1 = {L + 1} tokens")
    scheduled = total_steps(u, cfg.epochs, L, cfg.global_batch)
    # max_steps cuts a run short without changing its learning-rate schedule.
    steps = scheduled if cfg.max_steps is None else min(scheduled, cfg.max_steps)
    if scheduled < 1:
        raise ConfigError(
            f"{cfg.epochs} epochs of {sequences_per_epoch(u, L)} sequences make no full global batch "
            f"of {cfg.global_batch}; raise epochs or unique_tokens, or lower global_batch"
        )
    fpt = flops_per_token(cfg.model)
    tokens_per_step = cfg.global_batch * L
    return RunPlan(
        name=cfg.name,
        objective=cfg.objective,
        params=count_parameters(cfg.model),
        unique_tokens=u,
        epochs=cfg.epochs,
        seq_len=L,
        sequences_per_epoch=sequences_per_epoch(u, L),
        global_batch=cfg.global_batch,
        total_steps=steps,
        scheduled_steps=scheduled,
        tokens_per_step=tokens_per_step,
        total_tokens=steps * tokens_per_step,
        flops_per_token=fpt,
        total_flops=fpt * steps * tokens_per_step,
        warmup_steps=warmup_steps(cfg, scheduled),
    )


def warmup_steps(cfg: TrainConfig, scheduled_steps: int) -> int:
    return int(cfg.optim.warmup_fraction * scheduled_steps)


def format_plan(plan: RunPlan, as_json: bool = False) -> str:
    if as_json:
        return json.dumps(asdict(plan), indent=2)
    rows = [
        ("run", plan.name),
        ("objective", plan.objective),
        ("parameters", f"{plan.params:,} ({plan.params / 1e6:.1f}M)"),
        ("unique tokens", f"{plan.unique_tokens:,}"),
        ("epochs", f"{plan.epochs:g}"),
        ("sequences/epoch", f"{plan.sequences_per_epoch:,} of {plan.seq_len + 1} tokens"),
        ("global batch", f"{plan.global_batch} sequences = {plan.tokens_per_step:,} tokens"),
        ("total steps", f"{plan.total_steps:,} (warmup {plan.warmup_steps:,})"),
        ("tokens seen", f"{plan.total_tokens:,}"),
        ("training FLOPs", f"{plan.total_flops:.3e} ({plan.flops_per_token:.3e}/token)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
