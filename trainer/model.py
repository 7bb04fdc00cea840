"""The paper's transformer, one module for both objectives.

Pre-norm blocks with RMSNorm, rotary position embeddings, SwiGLU, no biases and tied input/output
embeddings. The only difference between AR and MDM is `causal`: AR attends to the past, MDM
attends everywhere and sees masked positions as the mask token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffar.trainer.config import ModelConfig
from diffar.trainer.fused_ce import linear_cross_entropy
from diffar.trainer.sizing import count_parameters

try:  # flash-attn is a GPU-only extra; torch's SDPA is the fallback everywhere.
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the image
    flash_attn_func = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 so bf16 activations do not lose the mean-square's precision.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rotary_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) by position; x is (B, T, H, D)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.n_heads, self.head_dim, self.causal = cfg.n_heads, cfg.head_dim, causal
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.use_flash = cfg.attention != "sdpa" and flash_attn_func is not None
        if cfg.attention == "flash" and flash_attn_func is None:
            raise RuntimeError("model.attention=flash but flash-attn is not installed")

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).unbind(2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        p = self.dropout if self.training else 0.0
        if self.use_flash and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
            y = flash_attn_func(q, k, v, dropout_p=p, causal=self.causal)
        else:
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                dropout_p=p,
                is_causal=self.causal,
            ).transpose(1, 2)
        return self.resid_dropout(self.proj(y.reshape(B, T, C)))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.dim, 2 * cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.dropout(self.down(F.silu(gate) * up))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, causal)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.cfg, self.causal = cfg, causal
        self.embed = nn.Embedding(cfg.padded_vocab_size, cfg.dim)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, causal) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        cos, sin = rotary_tables(cfg.seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        loss_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, padded_vocab) in fp32; or, given targets and
        loss_weights (B, T), the training loss sum(w * CE) as an fp32 scalar, computed without
        materialising the logits (trainer/fused_ce.py)."""
        T = tokens.shape[1]
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds model.seq_len {self.cfg.seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed_dropout(self.embed(tokens))
        for block in self.blocks:
            x = block(x, cos, sin)
        h = self.norm(x)
        # Tied output projection: the embedding matrix is the unembedding.
        if targets is None:
            return F.linear(h, self.embed.weight).float()
        return linear_cross_entropy(
            h.flatten(0, 1), self.embed.weight, targets.flatten(), loss_weights.flatten()
        )


def describe(cfg: ModelConfig) -> str:
    n = count_parameters(cfg)
    return f"{n / 1e6:.1f}M params (h{cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads, ffn {cfg.ffn_dim})"
