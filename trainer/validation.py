"""Validation loss during training, with the training objective itself.

AR: the exact mean next-token NLL. MDM: the training loss is an unbiased estimate of the
negative ELBO per token; validation draws it with a fixed generator, so successive validations
see the same masks and their differences reflect the model, not the noise. (The evaluator's
estimators are the reference numbers: stratified multi-sample ELBO, chain-rule NLL.)
"""

from __future__ import annotations

import numpy as np
import torch

from diffar.trainer.errors import UserError
from diffar.trainer.objectives import Objective

VALIDATION_SEED = 20250721


def validation_windows(tokens: np.ndarray, seq_len: int) -> torch.Tensor:
    """Windows of L+1 tokens at stride L, in stream order: (n, L+1) int64."""
    n = (len(tokens) - 1) // seq_len
    if n < 1:
        raise UserError(f"validation set of {len(tokens)} tokens holds no window of {seq_len + 1}")
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    objective: Objective,
    windows: torch.Tensor,
    batch_size: int,
    rank: int,
    world_size: int,
    device: torch.device,
) -> torch.Tensor:
    """(sum of per-window losses, window count) of this rank's share, for an all-reduce."""
    was_training = model.training
    model.eval()
    mine = windows[rank::world_size]
    total = torch.zeros(2, device=device, dtype=torch.float64)
    gen = torch.Generator(device=device)
    for i, batch in enumerate(mine.split(batch_size)):
        gen.manual_seed(VALIDATION_SEED + rank * 1_000_003 + i)
        loss = objective.loss(model, batch.to(device), gen)
        total[0] += loss.double() * len(batch)
        total[1] += len(batch)
    model.train(was_training)
    return total
