"""The token shard format: a directory of raw token files plus a JSON manifest.

    DATASET/manifest.json     written last, so a dataset without it is incomplete
    DATASET/shard-00000.bin   little-endian uint16 tokens (uint32 when vocab_size > 65535)
    ...

manifest.json:
    format        "diffar-shards/v1"
    tokenizer     tokenizer name, e.g. "gpt2"
    vocab_size    tokenizer vocabulary (unpadded), e.g. 50257
    eod_id        end-of-document token appended after every document, e.g. 50256
    dtype         "uint16" or "uint32"
    total_tokens  sum of the shards' tokens
    documents     number of documents
    shards        [{"name", "tokens", "sha256"}] in stream order
    source        free-form provenance (inputs, split), informational only
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from diffar.trainer.errors import DiskFullError, UserError, disk_space

FORMAT = "diffar-shards/v1"
MANIFEST = "manifest.json"


class DatasetError(UserError):
    """A dataset that cannot be used as asked; the message names the file and what to do."""


@dataclass(frozen=True)
class ShardInfo:
    name: str
    tokens: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    tokenizer: str
    vocab_size: int
    eod_id: int
    total_tokens: int
    documents: int
    shards: tuple[ShardInfo, ...]
    dtype: str = "uint16"
    format: str = FORMAT
    source: dict = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d["shards"] = [asdict(s) for s in self.shards]
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> Manifest:
        try:
            d = json.loads(text)
            if d.get("format") != FORMAT:
                raise DatasetError(f"{where}: format {d.get('format')!r} is not {FORMAT!r}")
            d["shards"] = tuple(ShardInfo(**s) for s in d["shards"])
            return cls(**d)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DatasetError(f"{where}: not a diffar shard manifest ({e})") from None


def dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65536 else "uint32"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_shard(path: Path, tokens: np.ndarray, dtype: str) -> ShardInfo:
    """Write tokens atomically (temp file, then rename) and describe the shard."""
    data = np.ascontiguousarray(tokens, dtype=np.dtype(dtype).newbyteorder("<"))
    tmp = path.with_name(path.name + ".tmp")
    try:
        with (
            disk_space(f"shard {path.name}", path.parent, "run the command again"),
            open(tmp, "wb") as f,
        ):
            f.write(data.tobytes())
    except DiskFullError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return ShardInfo(
        name=path.name, tokens=int(data.size), sha256=hashlib.sha256(data.tobytes()).hexdigest()
    )


def write_manifest(directory: Path, manifest: Manifest) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    with disk_space("the manifest", directory, "run the command again"):
        tmp.write_text(manifest.to_json())
    os.replace(tmp, directory / MANIFEST)


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"{path}: no manifest; prepare the dataset with `diffar data prepare` (or it is incomplete)"
        )
    return Manifest.from_json(path.read_text(), where=str(path))


def _check_ids(tokens: np.ndarray, vocab_size: int, path: Path) -> None:
    """Every id must index the vocabulary: the embedding would raise a bare IndexError on one
    device and read out of bounds on another."""
    if tokens.size == 0:
        return
    high = int(tokens.max())
    if high >= vocab_size:
        at = int(np.argmax(tokens >= vocab_size))
        raise DatasetError(
            f"{path}: token id {high} is outside the vocabulary (vocab_size {vocab_size}; first "
            f"bad id at token {at:,} of the shard); re-prepare the dataset with its tokenizer"
        )


def load_tokens(
    directory: str | Path, limit: int | None = None, verify: bool = False
) -> np.ndarray:
    """The dataset's token stream (its first `limit` tokens) as one int64 array."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    want = manifest.total_tokens if limit is None else limit
    if manifest.total_tokens == 0 or not manifest.shards:
        raise DatasetError(f"{directory}: the dataset holds no tokens; re-prepare it")
    if want > manifest.total_tokens:
        raise DatasetError(
            f"{directory}: asked for {want:,} unique tokens but the dataset holds {manifest.total_tokens:,}"
        )
    parts, have = [], 0
    for shard in manifest.shards:
        if have >= want:
            break
        path = directory / shard.name
        if (
            not path.is_file()
            or path.stat().st_size != shard.tokens * np.dtype(manifest.dtype).itemsize
        ):
            raise DatasetError(
                f"{path}: missing or truncated shard; re-fetch or re-prepare the dataset"
            )
        if shard.tokens == 0:
            raise DatasetError(
                f"{path}: empty shard (0 tokens) listed in the manifest; re-prepare the dataset"
            )
        if verify and sha256_file(path) != shard.sha256:
            raise DatasetError(f"{path}: sha256 does not match the manifest (corrupted shard)")
        arr = np.memmap(path, dtype=np.dtype(manifest.dtype).newbyteorder("<"), mode="r")
        take = min(shard.tokens, want - have)
        part = np.asarray(arr[:take], dtype=np.int64)
        _check_ids(part, manifest.vocab_size, path)
        parts.append(part)
        have += take
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
