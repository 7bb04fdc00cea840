"""Text tokenizers as the evaluator needs them: encode text, and how many bytes each token is.

Three kinds: "gpt2" (the trainer's offline GPT-2 BPE, vocab 50257), a trained byte-level BPE
given by the path of its tokenizer.json (as `diffar data prepare --tokenizer` stores beside a
dataset), and "bytes" (UTF-8 bytes 0-255 plus end-of-document 256, vocab 257), which any text
fits and tests use with tiny models.
Bits per byte needs each token's byte length: UTF-8 bytes of its text; the end-of-document token
counts as one byte (it stands for the separator between documents).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from diffar.trainer.errors import UserError

TOKENIZER_FILE = "tokenizer.json"  # a trained BPE travels with its dataset under this name


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


def local_file(uri: str, cache_dir: str = ".diffar-cache") -> Path:
    """A path for a file URI; an s3:// file is downloaded into the cache first."""
    from diffar.trainer.storage import is_remote, local_path, open_store

    if not is_remote(uri):
        return local_path(uri)
    root, key = uri.rsplit("/", 1)
    dest = Path(cache_dir) / "files" / hashlib.sha256(uri.encode()).hexdigest()[:16] / key
    if not dest.is_file():
        open_store(root).get_file(key, dest)
    return dest


def resolve_tokenizer(
    name: str | None, dataset_uris: list[str | None], vocab_size: int, cache_dir: str
) -> Tokenizer:
    """The tokenizer to use: `name` when given (a tokenizer.json may be a path, file:// or
    s3:// URI); else a tokenizer.json that travels with the training or validation dataset;
    else the one the model's vocabulary implies."""
    if name:
        return get_tokenizer(str(local_file(name, cache_dir)) if name.endswith(".json") else name)
    from diffar.trainer.storage import StorageError, is_remote, join, local_path, open_store

    for uri in dataset_uris:
        if not uri:
            continue
        try:
            if is_remote(uri):
                if open_store(uri).exists(TOKENIZER_FILE):
                    return get_tokenizer(str(local_file(join(uri, TOKENIZER_FILE), cache_dir)))
            elif (local_path(uri) / TOKENIZER_FILE).is_file():
                return get_tokenizer(str(local_path(uri) / TOKENIZER_FILE))
        except StorageError:
            continue
    return get_tokenizer(tokenizer_for_vocab(vocab_size))


def tokenizer_for_vocab(vocab_size: int) -> str:
    """The tokenizer a model's vocabulary implies (gpt2: 50257, bytes: 257)."""
    known = {50257: "gpt2", 257: "bytes"}
    if vocab_size not in known:
        raise UserError(
            f"no tokenizer.json beside the datasets and no known tokenizer has a vocabulary of "
            f"{vocab_size}; set `tokenizer` (gpt2, bytes or a tokenizer.json) in the eval config"
        )
    return known[vocab_size]
