"""Small learnable token datasets in the shard format, for trainer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffar.trainer.shards import Manifest, dtype_for_vocab, write_manifest, write_shard


def markov_tokens(n: int, vocab: int, seed: int = 0, eod: int | None = None) -> np.ndarray:
    """A sparse first-order Markov chain: each token has 4 likely successors, so a model can
    learn it and its loss falls well below log(vocab)."""
    rng = np.random.default_rng(seed)
    succ = rng.integers(0, vocab - 1, size=(vocab, 4))
    out = np.empty(n, dtype=np.int64)
    out[0] = 0
    choices = rng.integers(0, 4, size=n)
    for i in range(1, n):
        out[i] = succ[out[i - 1], choices[i]]
    if eod is not None:
        out[::97] = eod
    return out


def write_dataset(
    directory: Path, tokens: np.ndarray, vocab: int, shard_tokens: int = 4096
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    dtype = dtype_for_vocab(vocab)
    shards = tuple(
        write_shard(directory / f"shard-{i:05d}.bin", tokens[start : start + shard_tokens], dtype)
        for i, start in enumerate(range(0, len(tokens), shard_tokens))
    )
    manifest = Manifest(
        tokenizer="synthetic",
        vocab_size=vocab,
        eod_id=vocab - 1,
        total_tokens=len(tokens),
        documents=1,
        shards=shards,
        dtype=dtype,
    )
    write_manifest(directory, manifest)
    return directory
