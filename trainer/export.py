"""Trained weights in one framework-neutral file, for the evaluator and for users.

DeepSpeed checkpoints are sharded per rank and ZeRO stage; the evaluator wants one model. Rank 0
writes `<checkpoint.dir>/export/model.pt` at the end of training (and with every checkpoint):

    {"format": "diffar-model/v1", "config": TrainConfig dict, "state_dict": fp32 tensors,
     "step": int, "tokens_seen": int, "epoch": float}

and, after it, `export/model.pt.sha256` (the file's sha256 in hex), which `diffar eval` checks
before it loads a model from a store: a partial or altered download is refused, not evaluated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from diffar.trainer.config import TrainConfig
from diffar.trainer.errors import UserError
from diffar.trainer.model import Transformer
from diffar.trainer.shards import sha256_file

FORMAT = "diffar-model/v1"
EXPORT_NAME = "export/model.pt"
CHECKSUM_SUFFIX = ".sha256"
EXPORT_CHECKSUM = EXPORT_NAME + CHECKSUM_SUFFIX


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
    checksum = checksum_path(path)
    tmp = checksum.with_name(checksum.name + ".tmp")
    tmp.write_text(f"{sha256_file(path)}\n")
    os.replace(tmp, checksum)


def checksum_path(model: Path) -> Path:
    return model.with_name(model.name + CHECKSUM_SUFFIX)


def read_checksum(text: str, where: str) -> str:
    digest = text.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise UserError(f"{where}: not a sha256 checksum file")
    return digest


def verify_export(path: Path) -> None:
    """The model file matches the checksum written beside it at export, or a one-line error."""
    side = checksum_path(path)
    if not side.is_file():
        raise UserError(f"{side}: missing; the model has no export checksum (export it again)")
    if sha256_file(path) != read_checksum(side.read_text(), str(side)):
        raise UserError(f"{path}: sha256 does not match {side.name} (corrupted or altered model)")


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
