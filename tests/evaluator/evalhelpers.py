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
