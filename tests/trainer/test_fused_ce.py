"""The fused, chunked unembedding + cross-entropy equals the loss computed from full logits."""

import pytest
import torch

from diffar.trainer.config import ModelConfig
from diffar.trainer.fused_ce import linear_cross_entropy
from diffar.trainer.model import Transformer
from diffar.trainer.objectives import (
    AutoregressiveObjective,
    MaskedDiffusionObjective,
    weighted_cross_entropy,
)


def _problem(n=37, d=16, v=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, requires_grad=True)
    w = (torch.randn(v, d, generator=g) * 0.5).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g)
    rw = torch.rand(n, generator=g)
    rw[::3] = 0.0  # MDM's unmasked rows weigh nothing
    return h, w, y, rw


def _reference(h, w, y, rw):
    return weighted_cross_entropy(h @ w.t(), y, rw)


@pytest.mark.parametrize("chunk", [1, 8, 37, 64])
def test_loss_and_gradients_match_the_logits_path(chunk):
    # 37 rows: chunks of 8 leave a remainder; 64 is one chunk larger than the input.
    h, w, y, rw = _problem()
    fused = linear_cross_entropy(h, w, y, rw, chunk_rows=chunk)
    gh, gw = torch.autograd.grad(fused, (h, w))
    ref = _reference(h, w, y, rw)
    rh, rw_ = torch.autograd.grad(ref, (h, w))
    assert fused.dtype == torch.float32
    assert torch.allclose(fused, ref, rtol=1e-6, atol=1e-6)
    assert torch.allclose(gh, rh, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gw, rw_, rtol=1e-5, atol=1e-6)


def test_gradient_scales_with_the_upstream_gradient():
    # DeepSpeed scales the loss by 1/gradient_accumulation_steps before backward.
    h, w, y, rw = _problem()
    (g1,) = torch.autograd.grad(linear_cross_entropy(h, w, y, rw, 8), (w,))
    (g3,) = torch.autograd.grad(linear_cross_entropy(h, w, y, rw, 8) * 0.25, (w,))
    assert torch.allclose(g3, g1 * 0.25, rtol=1e-6)


def test_without_grad_computes_the_loss_only():
    h, w, y, rw = _problem()
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, y, rw, 8)
    assert not loss.requires_grad and loss.grad_fn is None
    assert torch.allclose(loss, _reference(h, w, y, rw).detach(), rtol=1e-6)


def test_bf16_weights_and_autocast_stay_close_to_fp32():
    h, w, y, rw = _problem(d=64, v=300)
    ref = _reference(h, w, y, rw)
    (ref_gw,) = torch.autograd.grad(ref, (w,))
    # DeepSpeed's bf16 mode: bf16 hidden states and weights; the loss stays fp32.
    hb, wb = h.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    lb = linear_cross_entropy(hb, wb, y, rw, 16)
    (gwb,) = torch.autograd.grad(lb, (wb,))
    assert lb.dtype == torch.float32 and gwb.dtype == torch.bfloat16
    assert abs(lb.item() - ref.item()) / ref.item() < 1e-2
    assert torch.nn.functional.cosine_similarity(gwb.float().flatten(), ref_gw.flatten(), 0) > 0.999
    # Autocast over fp32 weights: matmuls in bf16, gradients back in the weights' dtype.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        la = linear_cross_entropy(h, w, y, rw, 16)
    (gwa,) = torch.autograd.grad(la, (w,))
    assert gwa.dtype == torch.float32
    assert abs(la.item() - ref.item()) / ref.item() < 1e-2


@pytest.mark.parametrize("causal", [True, False])
def test_model_loss_equals_the_loss_of_its_logits(causal):
    cfg = ModelConfig(preset="nano", seq_len=32, vocab_size=200, dropout=0.0)
    objective = AutoregressiveObjective() if causal else MaskedDiffusionObjective(cfg.mask_token_id)
    torch.manual_seed(0)
    a, b = Transformer(cfg, causal), Transformer(cfg, causal)
    b.load_state_dict(a.state_dict())
    windows = torch.randint(0, 200, (3, 33))
    fused = objective.loss(a, windows, torch.Generator().manual_seed(1))
    fused.backward()
    batch = objective.batch(windows, torch.Generator().manual_seed(1))
    ref = weighted_cross_entropy(b(batch.inputs), batch.targets, batch.weights)
    ref.backward()
    assert torch.allclose(fused, ref, rtol=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-4, atol=1e-8), name
