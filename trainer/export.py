"""Trained weights in one framework-neutral file, for the evaluator and for users.

DeepSpeed checkpoints are sharded per rank and ZeRO stage; the evaluator wants one model. Rank 0
writes `<checkpoint.dir>/export/model.pt` at the end of training (and with every checkpoint):

    {"format": "diffar-model/v1", "config": TrainConfig dict, "state_dict": fp32 tensors,
     "step": int, "tokens_seen": int, "epoch": float}
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from diffar.trainer.config import TrainConfig
from diffar.trainer.errors import UserError
from diffar.trainer.model import Transformer

FORMAT = "diffar-model/v1"
EXPORT_NAME = "export/model.pt"


@dataclass(frozen=True)
class ExportedModel:
    model: Transformer
    config: TrainConfig
    step: int
    tokens_seen: int
    epoch: float


def save_export(
    path: str | Path, state_dict: dict, cfg: TrainConfig, step: int, tokens_seen: int, epoch: float
) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "config": cfg.model_dump(mode="json"),
        "state_dict": {k: v.detach().float().cpu() for k, v in state_dict.items()},
        "step": step,
        "tokens_seen": tokens_seen,
        "epoch": epoch,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_export(path: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    """Load an exported model (a file, or a checkpoint dir holding export/model.pt), in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / EXPORT_NAME
    if not path.is_file():
        raise UserError(
            f"{path}: no exported model; train with checkpoint.dir set, or point at model.pt"
        )
    payload = torch.load(path, map_location=device, weights_only=False)
    if payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a diffar model export (format {payload.get('format')!r})")
    cfg = TrainConfig.model_validate(payload["config"])
    model = Transformer(cfg.model, causal=cfg.objective == "ar")
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return ExportedModel(model, cfg, payload["step"], payload["tokens_seen"], payload["epoch"])
