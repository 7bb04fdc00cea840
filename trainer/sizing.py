"""Model size and cost from the config alone: no torch, so the operator image can use it."""

from __future__ import annotations

from diffar.trainer.config import ModelConfig


def count_parameters(cfg: ModelConfig) -> int:
    """Parameters of `Transformer(cfg)` without building it (tied embeddings counted once)."""
    per_block = 4 * cfg.dim * cfg.dim + 3 * cfg.dim * cfg.ffn_dim + 2 * cfg.dim
    return cfg.padded_vocab_size * cfg.dim + cfg.n_layers * per_block + cfg.dim


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token (PaLM's convention): 6N for the weight matmuls, N counting the
    blocks and the tied unembedding matmul but not the embedding lookup or norms, plus
    12 * n_layers * L * h for attention scores and values (full, non-causal count)."""
    n_dense = (
        count_parameters(cfg) - cfg.padded_vocab_size * cfg.dim - (2 * cfg.n_layers + 1) * cfg.dim
    )
    n_unembed = cfg.padded_vocab_size * cfg.dim
    return 6.0 * (n_dense + n_unembed) + 12.0 * cfg.n_layers * cfg.seq_len * cfg.dim
