import math

import torch
from torch import nn

from diffar.trainer.objectives import (
    AutoregressiveObjective,
    LossFromLogits,
    MaskedDiffusionObjective,
    ar_loss_from_logits,
    mask_rate,
    mdm_loss_from_logits,
)


class UniformModel(nn.Module):
    """Predicts the uniform distribution over the first V ids (padding rows get -inf)."""

    def __init__(self, vocab: int, padded: int):
        super().__init__()
        self.vocab, self.padded = vocab, padded

    def forward(self, tokens):
        logits = torch.zeros(*tokens.shape, self.padded)
        logits[..., self.vocab :] = float("-inf")
        return logits


def test_ar_hand_computed():
    # Two positions, vocab 3: CE = -log softmax(logits)[target], averaged.
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    targets = torch.tensor([[0, 2]])
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    ce1 = -math.log(1 / (math.e + 2))
    assert math.isclose(ar_loss_from_logits(logits, targets).item(), (ce0 + ce1) / 2, rel_tol=1e-6)


def test_ar_objective_shifts_targets():
    seen = {}

    class Recorder(nn.Module):
        def forward(self, tokens):
            seen["inputs"] = tokens
            return torch.zeros(*tokens.shape, 8)

    windows = torch.tensor([[1, 2, 3, 4]])
    loss = AutoregressiveObjective().loss(LossFromLogits(Recorder()), windows, torch.Generator())
    assert seen["inputs"].tolist() == [[1, 2, 3]]
    assert math.isclose(loss.item(), math.log(8), rel_tol=1e-6)


def test_mdm_hand_computed():
    # B=2, L=2, vocab 2. Row 0 masks position 1 at p=0.5; row 1 masks both at p=1.0.
    logits = torch.tensor([[[0.0, 0.0], [1.0, 0.0]], [[0.0, 2.0], [0.0, 0.0]]])
    clean = torch.tensor([[0, 1], [1, 0]])
    masked = torch.tensor([[False, True], [True, True]])
    p = torch.tensor([0.5, 1.0])
    ce_01 = -math.log(1 / (math.e + 1))  # target 1 under logits [1, 0]
    ce_10 = -math.log(math.exp(2) / (math.exp(2) + 1))
    ce_11 = math.log(2)
    expected = (ce_01 / 0.5 + ce_10 / 1.0 + ce_11 / 1.0) / 4
    got = mdm_loss_from_logits(logits, clean, masked, p).item()
    assert math.isclose(got, expected, rel_tol=1e-6)


def test_mask_rate_bounds():
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(mask_rate(t, 1e-3), torch.tensor([1e-3, 0.5005, 1.0]))


def test_mdm_masks_with_mask_token_and_scores_clean_tokens():
    seen = {}

    class Recorder(nn.Module):
        def forward(self, tokens):
            seen["inputs"] = tokens.clone()
            return torch.zeros(*tokens.shape, 64)

    windows = torch.randint(0, 50, (64, 17))
    MaskedDiffusionObjective(mask_id=50).loss(
        LossFromLogits(Recorder()), windows, torch.Generator().manual_seed(0)
    )
    inputs = seen["inputs"]
    assert inputs.shape == (64, 16)
    kept = inputs != 50
    assert torch.equal(inputs[kept], windows[:, :-1][kept])  # unmasked tokens pass through clean
    assert 0 < (~kept).float().mean() < 1


def test_uniform_model_has_expected_loss_log_v():
    # E[sum over masked of log V / p] / L = log V, since E[#masked] = pL for every t.
    vocab, padded = 100, 128
    model = LossFromLogits(UniformModel(vocab, padded))
    gen = torch.Generator().manual_seed(1234)
    windows = torch.randint(0, vocab, (20000, 65), generator=gen)
    mdm = MaskedDiffusionObjective(mask_id=vocab).loss(model, windows, gen).item()
    ar = AutoregressiveObjective().loss(model, windows, gen).item()
    assert math.isclose(ar, math.log(vocab), rel_tol=1e-6)
    # Standard error here is about 0.25% of log V; 1% is four standard errors.
    assert abs(mdm - math.log(vocab)) / math.log(vocab) < 0.01


def test_mdm_loss_is_unbiased_not_masked_mean():
    # A wrong normaliser (dividing by #masked instead of B*L, or forgetting 1/p) shows up
    # as a biased estimate of log V for a uniform model at a fixed small t.
    vocab = 10
    model = UniformModel(vocab, 16)
    gen = torch.Generator().manual_seed(7)
    clean = torch.randint(0, vocab, (4000, 32), generator=gen)
    p = torch.full((4000,), 0.1)
    noisy, masked = torch.where(torch.rand(clean.shape, generator=gen) < 0.1, vocab, clean), None
    masked = noisy == vocab
    loss = mdm_loss_from_logits(model(noisy), clean, masked, p).item()
    assert abs(loss - math.log(vocab)) / math.log(vocab) < 0.02
