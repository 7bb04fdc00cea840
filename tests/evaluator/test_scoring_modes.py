"""Every scoring mode against an independent brute-force computation on a tiny vocabulary.

The model is a fixed table: the logits at position i depend on the tokens at i-1, i and i+1
(mask tokens included), so what is masked changes every loss, as it does for a trained MDM. With
3 text ids, a mask id and one padding row (5 output rows) and 4-token sequences, the exact
values enumerate every mask pattern: the Monte Carlo ELBOs must land on them within their
standard error, the exact estimators must match to rounding, under both vocabulary conventions.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from diffar.evaluator import estimators as est
from diffar.evaluator.downstream import PAPER_MDM_SCORING, score_task
from diffar.evaluator.tasks import Instance, Task

V, MASK, P = 3, 3, 5  # text ids 0..2, mask id 3, one padding row: 5 output rows
SIZES = (P, V)  # (padded: the paper's convention, text)
EPS = 1e-3


class TableModel(nn.Module):
    """logits[b, i] = A[x_i] + B[x_{i-1}] + C[x_{i+1}] + D[i] (B and C absent at the edges)."""

    def __init__(self, seed: int = 0, max_len: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A, self.B, self.C = (torch.randn(P, P, generator=g) * 1.5 for _ in range(3))
        self.D = torch.randn(max_len, P, generator=g)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.A[tokens] + self.D[: tokens.shape[1]]
        out[:, 1:] += self.B[tokens[:, :-1]]
        out[:, :-1] += self.C[tokens[:, 1:]]
        return out


MODEL = TableModel()


# ---------------------------------------------------------------- independent brute force


def ce(model, seq: list[int], pos: int, target: int, size: int) -> float:
    """-log softmax over the first `size` rows, in plain Python floats."""
    row = model(torch.tensor([seq]))[0, pos].tolist()[:size]
    top = max(row)
    return -(row[target] - top - math.log(sum(math.exp(v - top) for v in row)))


@functools.cache
def rate_weight(k: int, n: int, eps: float = EPS) -> float:
    """Integral over t of p^(k-1) (1-p)^(n-k), p = (1-eps) t + eps: the weight of one pattern of
    k masked tokens out of n in the rate-masking ELBO (probability p^k (1-p)^(n-k), times 1/p)."""
    t = np.linspace(0.0, 1.0, 20_001)
    p = (1 - eps) * t + eps
    return float(np.trapezoid(p ** (k - 1) * (1 - p) ** (n - k), t))


def patterns(positions: list[int]):
    for k in range(1, len(positions) + 1):
        yield from itertools.combinations(positions, k)


def masked_ce_sum(model, seq, pattern, size) -> float:
    noisy = [MASK if i in pattern else x for i, x in enumerate(seq)]
    return sum(ce(model, noisy, i, seq[i], size) for i in pattern)


def exact_rate_elbo(model, seq, positions, size) -> float:
    n = len(positions)
    return sum(
        rate_weight(len(s), n) * masked_ce_sum(model, seq, s, size) for s in patterns(positions)
    )


def exact_count_elbo(model, seq, positions, size) -> float:
    n, total = len(positions), 0.0
    for m in range(1, n + 1):
        subsets = list(itertools.combinations(positions, m))
        total += sum(masked_ce_sum(model, seq, s, size) for s in subsets) / len(subsets) / m
    return total


def exact_chain_rule(model, seq, positions, size) -> float:
    def first_masked(k: int) -> list[int]:
        return [MASK if (k <= i <= max(positions)) or i > max(positions) else x
                for i, x in enumerate(seq)]  # fmt: skip

    return sum(ce(model, first_masked(k), k, seq[k], size) for k in positions)


SEQ = [0, 2, 1, 2]


# ---------------------------------------------------------------- validation estimators


def test_ar_nll_both_conventions_match_brute_force():
    windows = torch.tensor([[1, 0, 2, 2, 1], [2, 2, 0, 1, 0]])
    got = est.ar_nll(MODEL, windows, SIZES)
    for b, w in enumerate(windows.tolist()):
        for c, size in enumerate(SIZES):
            want = sum(ce(MODEL, w[:-1], i, w[i + 1], size) for i in range(4))
            assert float(got[b, c]) == pytest.approx(want, rel=1e-5)
    # One int size gives the (B,) column of that convention.
    assert torch.allclose(est.ar_nll(MODEL, windows, V), got[:, 1])


def test_chain_rule_nll_matches_brute_force():
    got = est.mdm_chain_rule_nll(MODEL, torch.tensor([SEQ]), SIZES, MASK, batch_size=3)
    for c, size in enumerate(SIZES):
        assert float(got[0, c]) == pytest.approx(
            exact_chain_rule(MODEL, SEQ, [0, 1, 2, 3], size), rel=1e-5
        )
    assert float(got[0, 0]) > float(got[0, 1])  # the padded softmax spends mass off the text


@pytest.mark.parametrize("masking", ["rate", "count"])
@pytest.mark.parametrize("stratified", [True, False])
def test_elbo_converges_to_the_exact_bound(masking, stratified):
    exact = exact_rate_elbo if masking == "rate" else exact_count_elbo
    rows = torch.tensor([SEQ] * 48)
    g = torch.Generator().manual_seed(1)
    got = est.mdm_elbo(
        MODEL, rows, SIZES, MASK, g, samples=32, eps=EPS, stratified=stratified, masking=masking
    )
    for c, size in enumerate(SIZES):
        want = exact(MODEL, SEQ, [0, 1, 2, 3], size)
        mean = float(got[:, c].mean())
        se = float(got[:, c].std()) / math.sqrt(len(rows))
        assert abs(mean - want) < 4 * se + 1e-9, (masking, size, mean, want, se)
        assert se < 0.06 * want  # tight enough for the check to mean something
    # The two maskings estimate nearly the same bound (eps = 1e-3 apart).
    assert exact_rate_elbo(MODEL, SEQ, [0, 1, 2, 3], P) == pytest.approx(
        exact_count_elbo(MODEL, SEQ, [0, 1, 2, 3], P), rel=0.05
    )


# ---------------------------------------------------------------- downstream scoring modes

CTX, CONT, T_PAD = [1, 0], [2, 1], 6
PADDED_SEQ = CTX + CONT + [MASK] * (T_PAD - 4)


def test_continuation_chain_rule_unpadded_and_mask_padded():
    span = [2, 3]
    for size in SIZES:
        plain = est.continuation_chain_rule_mdm(MODEL, [CTX + CONT], [2], size, MASK)
        padded = est.continuation_chain_rule_mdm(MODEL, [PADDED_SEQ], [2], size, MASK, ends=[4])
        assert plain[0] == pytest.approx(-exact_chain_rule(MODEL, CTX + CONT, span, size), 1e-5)
        assert padded[0] == pytest.approx(-exact_chain_rule(MODEL, PADDED_SEQ, span, size), 1e-5)
        assert abs(plain[0] - padded[0]) > 1e-3  # the model sees the padding: modes differ


@pytest.mark.parametrize("masking", ["rate", "count"])
def test_continuation_elbo_unpadded_and_mask_padded(masking):
    exact = exact_rate_elbo if masking == "rate" else exact_count_elbo
    g = torch.Generator().manual_seed(2)
    for seq, ends in ((CTX + CONT, None), (PADDED_SEQ, [4])):
        rows = 64
        got = np.array(
            est.continuation_elbo_mdm(
                MODEL, [seq] * rows, [2] * rows, V, MASK, g, samples=16, eps=EPS,
                masking=masking, ends=None if ends is None else ends * rows,
            )
        )  # fmt: skip
        want = -exact(MODEL, seq, [2, 3], V)
        se = got.std(ddof=1) / math.sqrt(rows)
        assert abs(got.mean() - want) < 4 * se + 1e-9, (seq, masking, got.mean(), want)


def test_unmask_by_confidence_fills_only_the_span_and_leaves_padding():
    other = [2, 2, 0, 1, 0, MASK]  # a longer answer: its span ends at 5
    fills = est.unmask_by_confidence(MODEL, [PADDED_SEQ, other], [2, 2], V, MASK, ends=[4, 5])
    assert [len(f) for f in fills] == [2, 3]
    assert all(0 <= t < V for f in fills for t in f)
    # Brute force of the greedy rule for the padded row: fill the more confident position first.
    x = [*PADDED_SEQ[:2], MASK, MASK, *PADDED_SEQ[4:]]
    for _ in range(2):
        probs = torch.softmax(MODEL(torch.tensor([x]))[0, :, :V], -1)
        conf, best = probs.max(-1)
        k = max((2, 3), key=lambda i: conf[i].item() if x[i] == MASK else -1.0)
        x[k] = int(best[k])
    assert fills[0] == x[2:4] and x[4:] == [MASK, MASK]


class _Tok:
    """Three-letter tokenizer: a, b, c are ids 0, 1, 2."""

    vocab_size, eod_id = V, 0

    def encode(self, text: str) -> list[int]:
        return ["abc".index(ch) for ch in text]


@pytest.mark.parametrize("scoring", ["chain_rule", "elbo"])
@pytest.mark.parametrize("padding", ["none", "mask"])
@pytest.mark.parametrize("vocab", [P, V])
def test_score_task_picks_the_brute_force_best_choice(scoring, padding, vocab):
    choices = ["ca", "cb", "aa", "bc"]
    task = Task("t", "multiple_choice", (Instance(("ba",) * 4, tuple(choices), 0),), False)
    lls = []
    for ch in choices:
        seq = CTX + _Tok().encode(ch)
        if padding == "mask":
            seq = seq + [MASK] * (T_PAD - len(seq))
        exact = exact_chain_rule if scoring == "chain_rule" else exact_rate_elbo
        lls.append(-exact(MODEL, seq, [2, 3], vocab))
    best = int(np.argmax(lls))
    task = Task("t", "multiple_choice", (Instance(("ba",) * 4, tuple(choices), best),), False)
    margin = sorted(lls)[-1] - sorted(lls)[-2]
    res = score_task(
        MODEL, "mdm", task, _Tok(), seq_len=T_PAD, mask_id=MASK, scoring=scoring,
        padding=padding, softmax_vocab=vocab, samples=512, eps=EPS,
    )  # fmt: skip
    if scoring == "chain_rule" or margin > 0.3:
        assert res["acc"] == 1.0, (lls, res)


def test_paper_scoring_is_chain_rule_on_mask_padded_rows():
    assert PAPER_MDM_SCORING == ("chain_rule", "mask")
    from diffar.evaluator.config import EvalConfig

    cfg = EvalConfig(model_uri="m")
    assert (cfg.mdm_scoring, cfg.mdm_padding, cfg.softmax_vocab) == ("chain_rule", "mask", "padded")
    assert cfg.chain_rule_sequences is None  # the ELBO's windows


def test_unknown_modes_are_refused():
    task = Task("t", "multiple_choice", (Instance(("a",), ("b",), 0),), False)
    for kw in ({"scoring": "mc"}, {"padding": "left"}):
        with pytest.raises(ValueError, match="unknown"):
            score_task(MODEL, "mdm", task, _Tok(), seq_len=4, mask_id=MASK, **kw)
