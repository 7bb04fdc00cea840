import pytest
import torch

from diffar.trainer.config import ModelConfig
from diffar.trainer.model import Transformer
from diffar.trainer.sizing import count_parameters, flops_per_token


@pytest.mark.parametrize(("preset", "paper"), [("140M", 144.8e6), ("425M", 416.9e6)])
def test_paper_presets_match_table5(preset, paper):
    n = count_parameters(ModelConfig(preset=preset))
    assert abs(n - paper) / paper < 1e-3


def test_paper_shapes():
    ar, mdm = ModelConfig(preset="140M"), ModelConfig(preset="425M")
    assert (ar.dim, ar.n_layers, ar.n_heads, ar.ffn_dim) == (768, 15, 12, 2048)
    assert (mdm.dim, mdm.n_layers, mdm.n_heads, mdm.ffn_dim) == (1280, 18, 10, 3392)
    assert ar.padded_vocab_size == 50304 and ar.mask_token_id == 50257


def test_count_matches_module():
    cfg = ModelConfig(preset="tiny", seq_len=16, vocab_size=300)
    model = Transformer(cfg, causal=True)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(cfg)


def test_no_biases_and_tied_embeddings():
    model = Transformer(ModelConfig(preset="nano", seq_len=8, vocab_size=300), causal=False)
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    # The unembedding is the embedding: one matrix, shared.
    assert len([p for p in model.parameters() if p.shape == model.embed.weight.shape]) == 1


def _logits_after_change(causal: bool):
    torch.manual_seed(0)
    cfg = ModelConfig(preset="nano", seq_len=16, vocab_size=100, dropout=0.0)
    model = Transformer(cfg, causal=causal).eval()
    x = torch.randint(0, 100, (1, 16))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 100
    with torch.no_grad():
        return model(x), model(y)


def test_ar_is_causal():
    a, b = _logits_after_change(causal=True)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])


def test_mdm_is_bidirectional():
    a, b = _logits_after_change(causal=False)
    assert not torch.allclose(a[:, 0], b[:, 0])


def test_rotary_makes_attention_position_aware():
    # Without position information a bidirectional model would be permutation-equivariant.
    torch.manual_seed(0)
    cfg = ModelConfig(preset="nano", seq_len=8, vocab_size=50, dropout=0.0)
    model = Transformer(cfg, causal=False).eval()
    x = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    perm = torch.tensor([1, 0, 2, 3, 4, 5, 6, 7])
    with torch.no_grad():
        assert not torch.allclose(model(x)[:, perm], model(x[:, perm]), atol=1e-5)


def test_flops_per_token_paper_convention():
    cfg = ModelConfig(preset="140M")
    n_nonembed = (
        count_parameters(cfg) - cfg.padded_vocab_size * cfg.dim - (2 * cfg.n_layers + 1) * cfg.dim
    )
    expected = 6 * (n_nonembed + cfg.padded_vocab_size * cfg.dim) + 12 * 15 * 2048 * 768
    assert flops_per_token(cfg) == expected


def test_too_long_sequence_is_refused():
    model = Transformer(ModelConfig(preset="nano", seq_len=8, vocab_size=50), causal=True)
    with pytest.raises(ValueError, match=r"exceeds model\.seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))
