"""Training objectives: the only place the code branches on AR vs MDM.

Both take a batch of token windows of L+1 tokens, as the epoch sampler yields them. AR predicts
each next token; MDM masks the first L tokens at a random rate and predicts the masked ones.
AR may also see a fraction of its input tokens replaced by the mask token, its targets unchanged
(`input_mask_rate`, the critics' baseline of Gao et al., arXiv 2510.04071). MDM's per-sequence
times are i.i.d. uniform (the paper's) or stratified over the micro-batch (MDLM's
low-discrepancy sampler): the same expected loss, less variance between steps.

Both losses are a weighted sum of per-position cross-entropies, sum_i w_i * CE_i: AR weighs
every position 1/(B*L); MDM weighs a masked position 1/(p*B*L) and an unmasked one 0 (the
paper's loss). An objective turns windows into (inputs, targets, weights), a `LossBatch`, and the
model computes the weighted loss itself (`Transformer.forward(tokens, targets, loss_weights)`), so
the training step never holds the B*L*V logits. `weighted_cross_entropy` is the same loss from
logits, for models that only return logits (the evaluator's estimators; `LossFromLogits` wraps
such a model for the objectives, as the benchmark's reference and the tests use it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from diffar.trainer.config import TrainConfig


@dataclass(frozen=True)
class LossBatch:
    inputs: torch.Tensor  # (B, L) token ids the model sees
    targets: torch.Tensor  # (B, L) token ids it is scored on
    weights: torch.Tensor  # (B, L) fp32; the loss is sum(weights * CE)


class Objective(Protocol):
    name: str
    causal: bool

    def batch(self, windows: torch.Tensor, generator: torch.Generator) -> LossBatch:
        """Inputs, targets and weights for windows (B, L+1); `generator` drives all sampling."""
        ...

    def loss(
        self, model: nn.Module, windows: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Scalar training loss; `model(inputs, targets, loss_weights)` returns it."""
        ...


def weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """sum(weights * CE); logits (..., V), targets and weights (...)."""
    ce = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="none")
    return (ce * weights.flatten()).sum()


class LossFromLogits(nn.Module):
    """A model that only returns logits, behind the loss interface the objectives call
    (`model(tokens, targets, loss_weights)`): the loss is taken from its full logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens, targets=None, loss_weights=None) -> torch.Tensor:
        logits = self.model(tokens)
        if targets is None:
            return logits
        return weighted_cross_entropy(logits, targets, loss_weights)


def ar_weights(targets: torch.Tensor) -> torch.Tensor:
    return torch.full(targets.shape, 1.0 / targets.numel(), device=targets.device)


def mdm_weights(masked: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """1/p on masked positions, 0 elsewhere, over B*L: all positions, not only the masked."""
    zero = torch.zeros((), device=masked.device)
    return torch.where(masked, 1.0 / p[:, None], zero) / masked.numel()


def ar_loss_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits (B, L, V), targets (B, L)."""
    return weighted_cross_entropy(logits, targets, ar_weights(targets))


def mdm_loss_from_logits(
    logits: torch.Tensor, clean: torch.Tensor, masked: torch.Tensor, p: torch.Tensor
) -> torch.Tensor:
    """The paper's MDM loss: sum over masked positions of CE / p, divided by B*L (all positions).

    logits (B, L, V), clean tokens (B, L), masked (B, L) bool, p (B,) per-sequence mask rate.
    """
    return weighted_cross_entropy(logits, clean, mdm_weights(masked, p))


def mask_rate(t: torch.Tensor, eps: float) -> torch.Tensor:
    """p = (1 - eps) t + eps: never exactly zero, so 1/p stays bounded."""
    return (1.0 - eps) * t + eps


def sample_times(
    n: int, generator: torch.Generator, device: torch.device, stratified: bool
) -> torch.Tensor:
    """(n,) times in [0, 1). Stratified: t_b = (u + b/n) mod 1 with one u, so every interval
    [k/n, (k+1)/n) holds exactly one t; each t is still marginally uniform (unbiased loss)."""
    if not stratified:
        return torch.rand(n, generator=generator, device=device)
    u = torch.rand(1, generator=generator, device=device)
    return torch.remainder(u + torch.arange(n, device=device) / n, 1.0)


def apply_mask(
    clean: torch.Tensor, p: torch.Tensor, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each token of row b independently with probability p[b]; returns (noisy, masked)."""
    u = torch.rand(clean.shape, generator=generator, device=clean.device)
    masked = u < p[:, None]
    return torch.where(masked, torch.full_like(clean, mask_id), clean), masked


class _WeightedLoss:
    def loss(
        self, model: nn.Module, windows: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        b = self.batch(windows, generator)
        return model(b.inputs, targets=b.targets, loss_weights=b.weights)


@dataclass(frozen=True)
class AutoregressiveObjective(_WeightedLoss):
    input_mask_rate: float = 0.0
    mask_id: int | None = None
    name: str = "ar"
    causal: bool = True

    def __post_init__(self) -> None:
        if self.input_mask_rate and self.mask_id is None:
            raise ValueError("input masking needs the mask token id")

    def loss(
        self, model: nn.Module, windows: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        # Input masking is a training-time corruption: validation (model.eval()) scores the
        # clean next-token NLL, the number comparable with plain AR.
        objective = self if model.training else AutoregressiveObjective()
        b = objective.batch(windows, generator)
        return model(b.inputs, targets=b.targets, loss_weights=b.weights)

    def batch(self, windows: torch.Tensor, generator: torch.Generator) -> LossBatch:
        inputs, targets = windows[:, :-1], windows[:, 1:]
        if self.input_mask_rate:
            # The mask covers inputs only: each target is still the clean next token, so the
            # model learns to predict through corrupted context (the loss keeps AR's weights).
            rate = torch.full((inputs.shape[0],), self.input_mask_rate, device=inputs.device)
            inputs, _ = apply_mask(inputs, rate, self.mask_id, generator)
        return LossBatch(inputs, targets, ar_weights(targets))


@dataclass(frozen=True)
class MaskedDiffusionObjective(_WeightedLoss):
    mask_id: int
    eps: float = 1e-3
    stratified: bool = False
    name: str = "mdm"
    causal: bool = False

    def batch(self, windows: torch.Tensor, generator: torch.Generator) -> LossBatch:
        clean = windows[:, :-1]
        t = sample_times(clean.shape[0], generator, clean.device, self.stratified)
        p = mask_rate(t, self.eps)
        noisy, masked = apply_mask(clean, p, self.mask_id, generator)
        return LossBatch(noisy, clean, mdm_weights(masked, p))


def build_objective(cfg: TrainConfig) -> Objective:
    if cfg.objective == "ar":
        return AutoregressiveObjective(
            input_mask_rate=cfg.ar.input_mask_rate, mask_id=cfg.model.mask_token_id
        )
    return MaskedDiffusionObjective(
        mask_id=cfg.model.mask_token_id,
        eps=cfg.diffusion.mask_eps,
        stratified=cfg.diffusion.time_sampling == "stratified",
    )
