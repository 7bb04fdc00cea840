"""The paper's learning-rate schedule: linear warmup, then cosine decay to min_lr."""

from __future__ import annotations

import math

from diffar.trainer.config import OptimConfig


def lr_at(step: int, optim: OptimConfig, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return optim.lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1.0 + math.cos(math.pi * progress))


def lr_multiplier(optim: OptimConfig, warmup_steps: int, total_steps: int):
    """The schedule as a factor of the peak lr, the form torch's LambdaLR takes."""
    return lambda step: lr_at(step, optim, warmup_steps, total_steps) / optim.lr
