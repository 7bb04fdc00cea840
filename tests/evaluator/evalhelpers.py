"""Models and fixtures with known answers for the evaluator's tests."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import torch

PADDED = 320  # padded vocab of the byte tokenizer (257 + mask -> 320)
A = ord("a")


class Uniform(torch.nn.Module):
    """Equal logits everywhere: every estimator must give log V per token."""

    def __init__(self, padded: int = PADDED):
        super().__init__()
        self.padded = padded

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*tokens.shape, self.padded)


def _next_letter(t: torch.Tensor) -> torch.Tensor:
    return A + (t - A + 1) % 26


class OracleAR(torch.nn.Module):
    """Knows that each letter is followed by the next one of the alphabet (cyclic)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, PADDED)
        logits.scatter_(2, _next_letter(tokens)[..., None].clamp(0, PADDED - 1), 20.0)
        return logits


class OracleMDM(torch.nn.Module):
    """Knows that position i holds the letter i steps after the (clean) first letter."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        letters = A + (tokens[:, :1] - A + torch.arange(T)[None, :]) % 26
        logits = torch.zeros(*tokens.shape, PADDED)
        logits.scatter_(2, letters[..., None], 20.0)
        return logits


class NeighbourMDM(torch.nn.Module):
    """Over sequences x_i = x_0 + i (mod V): predicts a masked token from a clean neighbour,
    else uniform. Its loss depends on the mask rate, as a trained model's does."""

    def __init__(self, vocab: int, mask_id: int, padded: int):
        super().__init__()
        self.vocab, self.mask_id, self.padded = vocab, mask_id, padded

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        left = torch.full_like(tokens, self.mask_id)
        left[:, 1:] = tokens[:, :-1]
        right = torch.full_like(tokens, self.mask_id)
        right[:, :-1] = tokens[:, 1:]
        use_l = left != self.mask_id
        use_r = ~use_l & (right != self.mask_id)
        logits = torch.zeros(*tokens.shape, self.padded)
        logits.scatter_(
            2, ((left + 1) % self.vocab)[..., None], torch.where(use_l, 10.0, 0.0)[..., None]
        )
        logits.scatter_add_(
            2, ((right - 1) % self.vocab)[..., None], torch.where(use_r, 10.0, 0.0)[..., None]
        )
        return logits


def alphabet_run(start: int, n: int) -> str:
    return "".join(chr(A + (start + i) % 26) for i in range(n))


def write_alphabet_task(
    path: Path, n: int, choices: int = 4, seed: int = 0, kind: str = "multiple_choice"
) -> Path:
    """Context: a run of letters; the gold continuation continues it, distractors are random."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            start, clen, alen = rng.randrange(26), rng.randrange(3, 8), rng.randrange(2, 5)
            ctx = alphabet_run(start, clen)
            gold_text = alphabet_run(start + clen, alen)
            if kind == "greedy":
                row = {"context": ctx, "continuations": [gold_text], "gold": 0, "kind": "greedy"}
            else:
                conts = [gold_text]
                while len(conts) < choices:
                    d = "".join(rng.choice(string.ascii_lowercase) for _ in range(alen))
                    if d not in conts:
                        conts.append(d)
                gold = rng.randrange(choices)
                conts[0], conts[gold] = conts[gold], conts[0]
                row = {"context": ctx, "continuations": conts, "gold": gold}
            f.write(json.dumps(row) + "\n")
    return path


TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity. "
)


def write_byte_dataset(directory: Path, text: str = TEXT * 8) -> Path:
    """A shard dataset of UTF-8 bytes (the evaluator's "bytes" tokenizer, vocab 257)."""
    import numpy as np

    from diffar.trainer.shards import Manifest, write_manifest, write_shard

    directory.mkdir(parents=True, exist_ok=True)
    tokens = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64)
    shard = write_shard(directory / "shard-00000.bin", tokens, "uint16")
    write_manifest(
        directory,
        Manifest("bytes", 257, 256, len(tokens), 1, (shard,), dtype="uint16"),
    )
    return directory


def save_byte_model(
    ckpt_dir: Path, objective: str, data_dir: Path, seq_len: int = 32, vocab: int = 257, **cfg
) -> Path:
    """A randomly initialised nano model (over bytes unless `vocab` says otherwise), exported as
    `diffar train` exports."""
    from diffar.trainer.config import parse_config
    from diffar.trainer.export import EXPORT_NAME, save_export
    from diffar.trainer.model import Transformer

    config = parse_config(
        {
            "name": cfg.pop("name", f"tiny-{objective}"),
            "objective": objective,
            "model": {"preset": "nano", "vocab_size": vocab, "seq_len": seq_len, "dropout": 0.0},
            "data": {"train_uri": str(data_dir), "val_uri": str(data_dir)},
            "epochs": 3,
            **cfg,
        }
    )
    torch.manual_seed(0)
    model = Transformer(config.model, causal=objective == "ar")
    save_export(ckpt_dir / EXPORT_NAME, model.state_dict(), config, 12, 12 * 64, 3.0)
    return ckpt_dir
