"""Training objectives: the only place the code branches on AR vs MDM.

Both take a batch of token windows of L+1 tokens, as the epoch sampler yields them. AR predicts
each next token; MDM masks the first L tokens at a random rate and predicts the masked ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from diffar.trainer.config import TrainConfig


class Objective(Protocol):
    name: str
    causal: bool

    def loss(
        self, model: nn.Module, windows: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Scalar training loss for windows (B, L+1); `generator` drives all sampling."""
        ...


def ar_loss_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits (B, L, V), targets (B, L)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def mdm_loss_from_logits(
    logits: torch.Tensor, clean: torch.Tensor, masked: torch.Tensor, p: torch.Tensor
) -> torch.Tensor:
    """The paper's MDM loss: sum over masked positions of CE / p, divided by B*L (all positions).

    logits (B, L, V), clean tokens (B, L), masked (B, L) bool, p (B,) per-sequence mask rate.
    """
    ce = F.cross_entropy(logits.flatten(0, 1).float(), clean.flatten(), reduction="none").view_as(
        clean
    )
    weighted = torch.where(masked, ce / p[:, None], torch.zeros_like(ce))
    return weighted.sum() / clean.numel()


def mask_rate(t: torch.Tensor, eps: float) -> torch.Tensor:
    """p = (1 - eps) t + eps: never exactly zero, so 1/p stays bounded."""
    return (1.0 - eps) * t + eps


def apply_mask(
    clean: torch.Tensor, p: torch.Tensor, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each token of row b independently with probability p[b]; returns (noisy, masked)."""
    u = torch.rand(clean.shape, generator=generator, device=clean.device)
    masked = u < p[:, None]
    return torch.where(masked, torch.full_like(clean, mask_id), clean), masked


@dataclass(frozen=True)
class AutoregressiveObjective:
    name: str = "ar"
    causal: bool = True

    def loss(
        self, model: nn.Module, windows: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return ar_loss_from_logits(model(windows[:, :-1]), windows[:, 1:])


@dataclass(frozen=True)
class MaskedDiffusionObjective:
    mask_id: int
    eps: float = 1e-3
    name: str = "mdm"
    causal: bool = False

    def loss(
        self, model: nn.Module, windows: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        clean = windows[:, :-1]
        t = torch.rand(clean.shape[0], generator=generator, device=clean.device)
        p = mask_rate(t, self.eps)
        noisy, masked = apply_mask(clean, p, self.mask_id, generator)
        return mdm_loss_from_logits(model(noisy), clean, masked, p)


def build_objective(cfg: TrainConfig) -> Objective:
    if cfg.objective == "ar":
        return AutoregressiveObjective()
    return MaskedDiffusionObjective(mask_id=cfg.model.mask_token_id, eps=cfg.diffusion.mask_eps)
