"""Text tokenizers as the evaluator needs them: encode text, and how many bytes each token is.

Three kinds: "gpt2" (the trainer's offline GPT-2 BPE, vocab 50257), a trained byte-level BPE
given by the path of its tokenizer.json (as `diffar data prepare --tokenizer` stores beside a
dataset), and "bytes" (UTF-8 bytes 0-255 plus end-of-document 256, vocab 257), which any text
fits and tests use with tiny models.
Bits per byte needs each token's byte length: UTF-8 bytes of its text; the end-of-document token
counts as one byte (it stands for the separator between documents).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from diffar.trainer.errors import UserError


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eod_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_bytes(self) -> np.ndarray:
        """Byte length of every token id, shape (vocab_size,)."""
        ...


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as tokens 0-255, end-of-document 256."""

    name: str = "bytes"
    vocab_size: int = 257
    eod_id: int = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        return np.ones(self.vocab_size, dtype=np.int64)


def get_tokenizer(name: str) -> Tokenizer:
    """ "bytes", "gpt2", or the path of a byte-level BPE tokenizer.json (`diffar data tokenizer`)."""
    if name == "bytes":
        return ByteTokenizer()
    from diffar.trainer.tokenizer import load_tokenizer

    return load_tokenizer(name)


def tokenizer_for_vocab(vocab_size: int) -> str:
    """The tokenizer a model's vocabulary implies (gpt2: 50257, bytes: 257)."""
    known = {50257: "gpt2", 257: "bytes"}
    if vocab_size not in known:
        raise UserError(
            f"no known tokenizer has a vocabulary of {vocab_size}; set `tokenizer` in the eval config"
        )
    return known[vocab_size]
