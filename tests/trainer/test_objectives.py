import math

import pytest
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


def test_ar_input_masking_masks_inputs_and_keeps_targets():
    mask_id = 99
    windows = torch.arange(1, 2001).view(4, 500)  # no token equals the mask id
    obj = AutoregressiveObjective(input_mask_rate=0.3, mask_id=mask_id)
    b = obj.batch(windows, torch.Generator().manual_seed(0))
    clean_inputs, targets = windows[:, :-1], windows[:, 1:]
    masked = b.inputs == mask_id
    # Every input is either the clean token or the mask token, at about the requested rate.
    assert torch.equal(torch.where(masked, clean_inputs, b.inputs), clean_inputs)
    assert 0.26 < masked.float().mean().item() < 0.34
    # Targets are the clean next tokens, masked inputs or not; the weights are plain AR's.
    assert torch.equal(b.targets, targets)
    assert torch.allclose(b.weights, torch.full(targets.shape, 1 / targets.numel()))


def test_ar_input_masking_off_is_plain_ar_and_validation_sees_clean_inputs():
    windows = torch.tensor([[5, 6, 7, 8, 9]])
    plain = AutoregressiveObjective().batch(windows, torch.Generator())
    assert plain.inputs.tolist() == [[5, 6, 7, 8]]
    seen = []

    class Recorder(nn.Module):
        def forward(self, tokens):
            seen.append(tokens.clone())
            return torch.zeros(*tokens.shape, 16)

    model = LossFromLogits(Recorder())
    obj = AutoregressiveObjective(input_mask_rate=0.999, mask_id=15)
    obj.loss(model, windows, torch.Generator().manual_seed(1))
    assert (seen[-1] == 15).all()  # training: (almost surely) every input masked
    model.eval()
    obj.loss(model, windows, torch.Generator().manual_seed(1))
    assert seen[-1].tolist() == [[5, 6, 7, 8]]  # validation: the clean inputs


def test_ar_input_masking_needs_mask_id():

    with pytest.raises(ValueError, match="mask token"):
        AutoregressiveObjective(input_mask_rate=0.1)


def test_stratified_times_cover_each_stratum_once_and_are_uniform():
    from diffar.trainer.objectives import sample_times

    gen = torch.Generator().manual_seed(3)
    n = 16
    draws = torch.stack([sample_times(n, gen, torch.device("cpu"), True) for _ in range(2000)])
    strata = (draws * n).floor().long().sort(dim=1).values
    assert torch.equal(strata, torch.arange(n).expand_as(strata))
    # Each t is marginally uniform: mean 1/2, variance 1/12 over draws.
    assert abs(draws[:, 0].mean().item() - 0.5) < 0.02
    assert abs(draws[:, 0].var().item() - 1 / 12) < 0.006
    # The batch mean varies far less than an i.i.d. batch's (variance 1/(12 n)).
    iid = torch.stack([sample_times(n, gen, torch.device("cpu"), False) for _ in range(2000)])
    assert draws.mean(1).var().item() < iid.mean(1).var().item() / 10


def test_build_objective_maps_config():
    from diffar.trainer.config import TrainConfig
    from diffar.trainer.objectives import build_objective

    base = {"model": {"dim": 16, "n_layers": 1, "n_heads": 2, "vocab_size": 30}}
    base["data"] = {"train_uri": "x"}
    ar = build_objective(
        TrainConfig.model_validate({**base, "objective": "ar", "ar": {"input_mask_rate": 0.2}})
    )
    assert (ar.input_mask_rate, ar.mask_id) == (0.2, 30)
    mdm = build_objective(
        TrainConfig.model_validate(
            {**base, "objective": "mdm", "diffusion": {"time_sampling": "stratified"}}
        )
    )
    assert mdm.stratified and mdm.mask_id == 30
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ar objective only"):
        TrainConfig.model_validate({**base, "objective": "mdm", "ar": {"input_mask_rate": 0.2}})
    with pytest.raises(ValidationError):
        TrainConfig.model_validate({**base, "objective": "ar", "ar": {"input_mask_rate": 1.0}})


def test_a_changed_input_mask_rate_is_a_different_run():
    # A checkpoint of plain AR must not silently resume as masked-input AR (or back).
    from diffar.trainer.checkpoint import RunPosition, check_resumable, fingerprint
    from diffar.trainer.config import TrainConfig
    from diffar.trainer.errors import UserError

    base = {"model": {"dim": 16, "n_layers": 1, "n_heads": 2, "vocab_size": 30}}
    base["data"] = {"train_uri": "x"}
    plain = TrainConfig.model_validate({**base, "objective": "ar"})
    masked = TrainConfig.model_validate(
        {**base, "objective": "ar", "ar": {"input_mask_rate": 0.25}}
    )
    saved = RunPosition(step=10, tokens_seen=0, sampler={}, fingerprint=fingerprint(plain))
    check_resumable(saved, plain, "ckpt")
    with pytest.raises(UserError, match=r"changed: ar\.input_mask_rate"):
        check_resumable(saved, masked, "ckpt")
