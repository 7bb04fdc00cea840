"""Deterministic epoch sampling over the unique tokens.

The unique set is cut into windows of L+1 tokens at stride L. Epoch e visits them in a fresh
permutation seeded by (seed, e). Samples form one stream across epochs, so a run's state is a
single integer, the number of samples consumed, and a global batch may straddle two epochs (as
Megatron's concatenated epoch indices do). Each step takes the next `global_batch` samples; rank r
takes the r-th contiguous slice of them, so the global batch is the same for any world size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from diffar.trainer.plan import sequences_per_epoch


def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass
class EpochSampler:
    tokens: np.ndarray  # the unique token set, int64
    seq_len: int
    global_batch: int
    seed: int
    rank: int = 0
    world_size: int = 1
    consumed: int = 0  # samples taken by all ranks together; the whole resumable state

    def __post_init__(self) -> None:
        self.n = sequences_per_epoch(len(self.tokens), self.seq_len)
        if self.global_batch % self.world_size:
            raise ValueError("global_batch must be divisible by world_size")
        self.per_rank = self.global_batch // self.world_size
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    @property
    def epoch(self) -> float:
        return self.consumed / self.n

    def _window_starts(self, first: int, count: int) -> np.ndarray:
        starts = np.empty(count, dtype=np.int64)
        for i, g in enumerate(range(first, first + count)):
            epoch, pos = divmod(g, self.n)
            if epoch != self._perm_epoch:
                self._perm, self._perm_epoch = _epoch_permutation(self.n, self.seed, epoch), epoch
            starts[i] = self._perm[pos] * self.seq_len
        return starts

    def next_batch(self) -> torch.Tensor:
        """This rank's slice of the next global batch: (global_batch / world_size, L+1) int64."""
        first = self.consumed + self.rank * self.per_rank
        starts = self._window_starts(first, self.per_rank)
        idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
        self.consumed += self.global_batch
        return torch.from_numpy(self.tokens[idx])

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "seed": self.seed, "n": self.n, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        if (state["seed"], state["n"], state["seq_len"]) != (self.seed, self.n, self.seq_len):
            raise ValueError("checkpoint was written for another dataset, seed or seq_len")
        self.consumed = state["consumed"]
