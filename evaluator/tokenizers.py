"""Text tokenizers as the evaluator needs them: encode text, and how many bytes each token is.

Two are known: "gpt2" (the trainer's offline GPT-2 BPE, vocab 50257) and "bytes" (UTF-8 bytes
0-255 plus end-of-document 256, vocab 257), which any text fits and tests use with tiny models.
Bits per byte needs each token's byte length: UTF-8 bytes of its text; the end-of-document token
counts as one byte (it stands for the separator between documents).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class TiktokenTokenizer:
    """A tiktoken Encoding (GPT-2's, from diffar.trainer.tokenizer)."""

    encoding: object
    name: str
    vocab_size: int
    eod_id: int
    _bytes: np.ndarray | None = field(default=None, repr=False)

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode([i for i in ids if i < self.vocab_size])

    def token_bytes(self) -> np.ndarray:
        if self._bytes is None:
            lengths = np.ones(self.vocab_size, dtype=np.int64)
            for i in range(self.vocab_size):
                if i != self.eod_id:
                    lengths[i] = len(self.encoding.decode_single_token_bytes(i))
            self._bytes = lengths
        return self._bytes


def get_tokenizer(name: str) -> Tokenizer:
    if name == "bytes":
        return ByteTokenizer()
    if name == "gpt2":
        from diffar.trainer import tokenizer as gpt2_module

        return TiktokenTokenizer(
            gpt2_module.gpt2(), "gpt2", gpt2_module.VOCAB_SIZE, gpt2_module.EOD_ID
        )
    raise UserError(f"unknown tokenizer {name!r}; known: gpt2, bytes")


def tokenizer_for_vocab(vocab_size: int) -> str:
    """The tokenizer a model's vocabulary implies (gpt2: 50257, bytes: 257)."""
    known = {50257: "gpt2", 257: "bytes"}
    if vocab_size not in known:
        raise UserError(
            f"no known tokenizer has a vocabulary of {vocab_size}; set `tokenizer` in the eval config"
        )
    return known[vocab_size]
