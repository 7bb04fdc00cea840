"""What the trainer benchmarks share: the reference model, weight copying, one training step,
the peak FLOP/s measurement and the MFU formula.

The reference is Hugging Face transformers' Llama configured to our exact architecture: tied
embeddings, no biases, RMSNorm (eps 1e-5), rotary (theta 10000, the same rotate-half pairing),
SwiGLU with our FFN width, our padded vocabulary. AR uses its causal attention; MDM sets
`config.is_causal = False` and each layer's `is_causal = False`, so attention is fully
bidirectional (no padding: the mask is all ones, which transformers passes to SDPA as no mask).
`copy_weights` loads our weights into it, and `check_equivalent` asserts both give the same logits,
so the two sides of a benchmark compute the same function.

Imported by bench_trainer.py (CPU) and gpu_bench.py (one GPU); neither needs DeepSpeed here.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


def import_diffar() -> None:
    """Make `diffar.trainer` importable from the checkout when diffar is not pip-installed (the
    GPU machine): a `diffar/trainer` link to ./trainer in a scratch folder on sys.path."""
    try:
        import diffar.trainer.model  # noqa: F401

        return
    except ImportError:
        pass
    import tempfile

    shim = Path(tempfile.mkdtemp(prefix="diffar-shim-")) / "diffar"
    shim.mkdir()
    (shim / "trainer").symlink_to(ROOT / "trainer", target_is_directory=True)
    sys.path.insert(0, str(shim.parent))
    for name in [m for m in sys.modules if m == "diffar" or m.startswith("diffar.")]:
        del sys.modules[name]


import_diffar()

from diffar.trainer.config import ModelConfig  # noqa: E402
from diffar.trainer.engine import param_groups  # noqa: E402
from diffar.trainer.model import Transformer  # noqa: E402
from diffar.trainer.objectives import (  # noqa: E402
    AutoregressiveObjective,
    LossFromLogits,
    MaskedDiffusionObjective,
)
from diffar.trainer.sizing import count_parameters, flops_per_token  # noqa: E402

# The paper's AdamW (arXiv 2507.15857, Table 5); the same object on both sides of a comparison.
ADAMW = {"lr": 2e-4, "betas": (0.9, 0.95), "eps": 1e-8}
WEIGHT_DECAY, GRAD_CLIP = 0.1, 1.0


# -- the reference model --------------------------------------------------------------------------


def reference_available() -> str | None:
    """transformers' version, or None when it is not installed."""
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


def build_reference(cfg: ModelConfig, causal: bool, attn: str = "sdpa") -> nn.Module:
    """transformers' LlamaForCausalLM with our dims; logits like ours (B, T, V), or the loss."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        vocab_size=cfg.padded_vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        initializer_range=cfg.init_std,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=cfg.dropout,
        tie_word_embeddings=True,
        use_cache=False,
        attn_implementation=attn,
    )
    # transformers 5 keeps rope_theta inside rope_parameters; set both spellings.
    if getattr(hf_cfg, "rope_parameters", None) is not None:
        hf_cfg.rope_parameters["rope_theta"] = cfg.rope_theta
    hf_cfg.is_causal = causal
    model = LlamaForCausalLM(hf_cfg)
    for layer in model.model.layers:
        layer.self_attn.is_causal = causal
    return LossFromLogits(_LogitsOnly(model))


class _LogitsOnly(nn.Module):
    """Calls the HF model the way a training loop does and takes its logits tensor."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=tokens, use_cache=False).logits


@torch.no_grad()
def copy_weights(ours: Transformer, ref: nn.Module) -> None:
    """Load our weights into the reference (fused qkv and gate_up split into HF's projections)."""
    hf = ref.model.hf.model
    d, f = ours.cfg.dim, ours.cfg.ffn_dim
    hf.embed_tokens.weight.copy_(ours.embed.weight)
    hf.norm.weight.copy_(ours.norm.weight)
    for blk, layer in zip(ours.blocks, hf.layers, strict=True):
        q, k, v = blk.attn.qkv.weight.split(d)
        layer.self_attn.q_proj.weight.copy_(q)
        layer.self_attn.k_proj.weight.copy_(k)
        layer.self_attn.v_proj.weight.copy_(v)
        layer.self_attn.o_proj.weight.copy_(blk.attn.proj.weight)
        gate, up = blk.ffn.gate_up.weight.split(f)
        layer.mlp.gate_proj.weight.copy_(gate)
        layer.mlp.up_proj.weight.copy_(up)
        layer.mlp.down_proj.weight.copy_(blk.ffn.down.weight)
        layer.input_layernorm.weight.copy_(blk.attn_norm.weight)
        layer.post_attention_layernorm.weight.copy_(blk.ffn_norm.weight)
    # Tied: the output projection is the embedding (checked, not assumed).
    assert ref.model.hf.lm_head.weight.data_ptr() == hf.embed_tokens.weight.data_ptr()


@torch.no_grad()
def check_equivalent(cfg: ModelConfig, causal: bool, device: torch.device, tol: float = 1e-4):
    """Our model and the reference with our weights give the same fp32 logits (dropout off)."""
    same = cfg.model_copy(update={"dropout": 0.0})
    torch.manual_seed(0)
    ours = Transformer(same, causal).to(device).eval()
    ref = build_reference(same, causal).to(device).eval()
    copy_weights(ours, ref)
    tokens = torch.randint(0, same.vocab_size, (2, min(same.seq_len, 64)), device=device)
    a, b = ours(tokens), ref(tokens).float()
    err = (a - b).abs().max().item()
    if err > tol:
        raise AssertionError(f"reference differs from ours: max |logit diff| {err:.3g} > {tol}")
    return err


# -- one training step ----------------------------------------------------------------------------


def objective_for(cfg: ModelConfig, name: str):
    if name == "ar":
        return AutoregressiveObjective()
    return MaskedDiffusionObjective(mask_id=cfg.mask_token_id)


class Stepper:
    """forward + backward + clip + AdamW step of one model on one objective.

    `model` is ours (the fused loss), `LossFromLogits(ours)` or the reference (loss from full
    logits); the inputs, targets and weights are diffar's own objective's (`objective.loss(model,
    windows, generator)`), so every side pays for the same masking and computes the same loss.
    `autocast` wraps the forward in bf16 autocast (fp32 master weights, as DeepSpeed's bf16 mode
    keeps them).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: str,
        cfg: ModelConfig,
        device,
        *,
        fused=None,
        autocast: torch.dtype | None = None,
    ):
        self.model, self.objective, self.cfg, self.device = model, objective, cfg, device
        self.autocast = autocast
        if fused is None:
            fused = device.type == "cuda"
        self.opt = torch.optim.AdamW(
            param_groups(model, WEIGHT_DECAY), **ADAMW, fused=fused, foreach=None if fused else True
        )
        self.obj = objective_for(cfg, objective)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(0)

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        if self.autocast is None:
            return self.obj.loss(self.model, windows, self.gen)
        with torch.autocast(self.device.type, dtype=self.autocast):
            return self.obj.loss(self.model, windows, self.gen)

    def step(self, windows: torch.Tensor) -> torch.Tensor:
        loss = self.loss(windows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()


# -- peak, MFU, timing ----------------------------------------------------------------------------


def measure_peak(
    device: torch.device,
    dtype: torch.dtype,
    n: int | None = None,
    reps: int = 10,
    cpu_time: bool = False,
) -> float:
    """Dense matmul FLOP/s on this device: the median of `reps` timed n x n x n products
    (`cpu_time`: CPU seconds of this process instead of the wall clock, for a shared CPU)."""
    clock = time.process_time if cpu_time else time.perf_counter
    if n is None:
        n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t = clock()
        a @ b
        sync(device)
        times.append(clock() - t)
    return 2 * n**3 / statistics.median(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_flops_per_token(cfg: ModelConfig) -> float:
    """6N + 12 * n_layers * L * h (sizing.flops_per_token at this sequence length)."""
    return flops_per_token(cfg)


def describe(cfg: ModelConfig) -> str:
    return (
        f"{count_parameters(cfg) / 1e6:.1f}M params (h{cfg.dim}, {cfg.n_layers} layers, "
        f"{cfg.n_heads} heads, ffn {cfg.ffn_dim}, vocab {cfg.padded_vocab_size}), L={cfg.seq_len}"
    )
