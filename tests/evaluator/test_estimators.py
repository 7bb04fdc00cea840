"""Estimators: a uniform model gets log V from each; stratified t beats i.i.d. t on variance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from evalhelpers import NeighbourMDM, Uniform

from diffar.evaluator import estimators as est
from diffar.evaluator.validation import evaluate_validation, summarize

V, MASK, PADDED, L = 50, 50, 64, 32


def _stream(n_tokens: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, n_tokens)


def test_uniform_model_ar_nll_is_log_v():
    windows = torch.from_numpy(_stream(4 * (L + 1))).view(4, L + 1)
    nll = est.ar_nll(Uniform(PADDED), windows, V)
    assert torch.allclose(nll / L, torch.full((4,), math.log(V), dtype=torch.float64))


def test_uniform_model_chain_rule_is_log_v():
    seqs = torch.from_numpy(_stream(3 * L)).view(3, L)
    nll = est.mdm_chain_rule_nll(Uniform(PADDED), seqs, V, MASK, batch_size=7)
    assert torch.allclose(nll / L, torch.full((3,), math.log(V), dtype=torch.float64))


def test_uniform_model_elbo_is_log_v_within_stderr():
    # Per draw the ELBO is log V * (#masked / p); its expectation is exactly L log V.
    seqs = torch.from_numpy(_stream(16 * L)).view(16, L)
    g = torch.Generator().manual_seed(0)
    elbo = est.mdm_elbo(Uniform(PADDED), seqs, V, MASK, g, samples=32) / L
    mean, se = float(elbo.mean()), float(elbo.std() / math.sqrt(len(elbo)))
    assert abs(mean - math.log(V)) < 4 * se
    assert se < 0.1 * math.log(V)


def test_validation_report_uniform_every_estimator_and_bits_per_byte():
    # Uniform logits over all 64 output rows: log 64 per token over the padded vocabulary (the
    # paper's convention), log 50 over the text vocabulary, from every estimator.
    tokens = _stream(6 * L + 1)
    token_bytes = np.full(V, 2)  # every token is two bytes
    mdm = ["elbo", "chain_rule_nll", "elbo_paired"]
    for objective, names in (("ar", ["nll"]), ("mdm", mdm)):
        out = evaluate_validation(
            Uniform(PADDED),
            objective,
            tokens,
            seq_len=L,
            vocab_size=V,
            token_bytes=token_bytes,
            mask_id=MASK,
            padded_vocab_size=PADDED,
            samples=32,
            chain_rule_sequences=2,
        )
        assert sorted(out) == sorted(names + [n + "_text" for n in names])
        for name, e in out.items():
            assert e.vocab == ("text" if name.endswith("_text") else "padded")
            want = math.log(V) if e.vocab == "text" else math.log(PADDED)
            tol = 1e-6 if not name.startswith("elbo") else 4 * e.stderr
            assert abs(e.loss - want) <= tol, (name, e)
            assert abs(e.bits_per_byte - e.loss / math.log(2) / 2) < 1e-6
            assert e.tokens == e.sequences * L and e.bytes == 2 * e.tokens


def test_chain_rule_matches_ar_factorisation_of_a_neighbour_model():
    # Token 0 is predicted from nothing (log V); every later one from its clean left neighbour.
    model = NeighbourMDM(V, MASK, PADDED)
    seqs = (torch.tensor([[3], [40]]) + torch.arange(L)) % V
    nll = est.mdm_chain_rule_nll(model, seqs, V, MASK)
    per_token = -torch.log_softmax(torch.tensor([10.0] + [0.0] * (V - 1)), 0)[0].double()
    expected = math.log(V) + (L - 1) * per_token
    assert torch.allclose(nll, torch.full((2,), float(expected), dtype=torch.float64))
    # The ELBO averages the NLL over random generation orders; for this model, which needs a
    # clean neighbour, random orders are worse than left to right (not so for every model).
    g = torch.Generator().manual_seed(1)
    assert float(est.mdm_elbo(model, seqs, V, MASK, g, samples=32).mean()) > float(nll.mean())


def test_stratified_elbo_has_lower_variance_than_iid():
    model = NeighbourMDM(V, MASK, PADDED)
    seqs = (torch.tensor([[3], [17], [29], [44]]) + torch.arange(L)) % V
    g = torch.Generator().manual_seed(2)
    draws = {True: [], False: []}
    for _ in range(120):
        for stratified in (True, False):
            e = est.mdm_elbo(model, seqs, V, MASK, g, samples=8, stratified=stratified)
            draws[stratified].append(float(e.mean()))
    var_s, var_i = np.var(draws[True], ddof=1), np.var(draws[False], ddof=1)
    # Same estimand: the means agree within their standard errors.
    se = math.sqrt((var_s + var_i) / 120)
    assert abs(np.mean(draws[True]) - np.mean(draws[False])) < 4 * se
    print(f"variance iid/stratified = {var_i / var_s:.2f} (K=8)")
    assert var_i / var_s > 1.5


def test_stratified_times_cover_each_stratum_once():
    t = est.stratified_times(5, 8, torch.Generator().manual_seed(0))
    strata = torch.sort((t * 8).floor(), dim=1).values
    assert torch.equal(strata, torch.arange(8.0, dtype=torch.float64).expand(5, 8))


def test_summarize_ratio_stderr():
    e = summarize(np.array([2.0, 4.0]), np.array([1.0, 1.0]), np.array([1.0, 1.0]))
    assert e.loss == pytest.approx(3.0) and e.stderr == pytest.approx(1.0)
    assert e.bits_per_byte == pytest.approx(3.0 / math.log(2))


def test_vectorised_scoring_loss_equals_the_training_loss_row_by_row():
    from diffar.trainer.objectives import mdm_loss_from_logits

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, L, V, generator=g)
    clean = torch.randint(0, V, (5, L), generator=g)
    masked = torch.rand(5, L, generator=g) < 0.4
    p = torch.rand(5, generator=g) * 0.9 + 0.05
    rows = est.masked_ce_over_p(logits, clean, masked, p)
    for r in range(5):
        one = mdm_loss_from_logits(
            logits[r : r + 1], clean[r : r + 1], masked[r : r + 1], p[r : r + 1]
        )
        assert float(rows[r]) == pytest.approx(float(one) * L, rel=1e-5)


def test_batched_continuation_scorers_match_one_at_a_time():
    torch.manual_seed(0)
    from diffar.trainer.config import ModelConfig
    from diffar.trainer.model import Transformer

    model = Transformer(
        ModelConfig(vocab_size=V, preset="nano", seq_len=L, dropout=0), causal=False
    )
    model.eval()
    g = torch.Generator().manual_seed(4)
    seqs = torch.randint(0, V, (4, 12), generator=g).tolist()
    starts = [3, 7, 11, 5]
    together = est.continuation_chain_rule_mdm(model, seqs, starts, V, MASK, batch_size=5)
    alone = [
        est.continuation_chain_rule_mdm(model, [s], [st], V, MASK)[0]
        for s, st in zip(seqs, starts, strict=True)
    ]
    assert together == pytest.approx(alone, rel=1e-4)
    fills = est.unmask_by_confidence(model, seqs, starts, V, MASK)
    assert [len(f) for f in fills] == [12 - st for st in starts]
    assert fills == [
        est.unmask_by_confidence(model, [s], [st], V, MASK)[0]
        for s, st in zip(seqs, starts, strict=True)
    ]
    # A uniform model: the ELBO of m answer tokens is -m log V in expectation.
    elbo = est.continuation_elbo_mdm(Uniform(PADDED), seqs * 8, starts * 8, V, MASK, g, samples=16)
    m = np.array([12 - st for st in starts] * 8)
    ratio = -np.array(elbo) / (m * math.log(V))
    assert abs(ratio.mean() - 1) < 4 * ratio.std(ddof=1) / math.sqrt(len(ratio))


def test_count_masking_uniform_model_is_exactly_log_v():
    # Exactly m tokens masked, weight n/m: a uniform model gives L log V on every draw.
    seqs = torch.from_numpy(_stream(4 * L)).view(4, L)
    g = torch.Generator().manual_seed(5)
    elbo = est.mdm_elbo(Uniform(PADDED), seqs, V, MASK, g, samples=8, masking="count")
    assert torch.allclose(elbo / L, torch.full((4,), math.log(V), dtype=torch.float64))
    ctx = est.continuation_elbo_mdm(
        Uniform(PADDED), seqs.tolist(), [5, 9, 20, 31], V, MASK, g, samples=4, masking="count"
    )
    assert ctx == pytest.approx([-(L - st) * math.log(V) for st in (5, 9, 20, 31)])


def test_count_masking_draws_exactly_m_of_the_scorable_tokens():
    g = torch.Generator().manual_seed(6)
    clean = torch.zeros(6, 10, dtype=torch.long)
    scorable = torch.arange(10)[None, :] >= torch.tensor([0, 2, 4, 6, 8, 9])[:, None]
    t = torch.tensor([0.0, 0.99, 0.5, 0.3, 0.6, 0.2], dtype=torch.float64)
    masked, p = est.draw_masks(clean, scorable, t, "count", 1e-3, 99, g)
    n = scorable.sum(1)
    m = torch.tensor([1, 8, 4, 2, 2, 1])
    assert torch.equal(masked.sum(1), m) and not (masked & ~scorable).any()
    assert torch.allclose(p, (m / n).float())


def test_count_and_rate_estimate_the_same_bound_count_with_less_variance():
    model = NeighbourMDM(V, MASK, PADDED)
    seqs = (torch.tensor([[3], [17], [29], [44]]) + torch.arange(L)) % V
    g = torch.Generator().manual_seed(7)
    draws = {"rate": [], "count": []}
    for _ in range(60):
        for masking in draws:
            e = est.mdm_elbo(model, seqs, V, MASK, g, samples=8, masking=masking)
            draws[masking].append(float(e.mean()) / L)
    mean_r, mean_c = np.mean(draws["rate"]), np.mean(draws["count"])
    var_r, var_c = np.var(draws["rate"], ddof=1), np.var(draws["count"], ddof=1)
    # eps = 1e-3 leaves the rate form a hair under the count form's eps = 0 value.
    assert abs(mean_r - mean_c) < 4 * math.sqrt((var_r + var_c) / 60) + 0.01
    print(f"variance rate/count = {var_r / var_c:.1f} (stratified, K=8)")
    assert var_c < var_r
