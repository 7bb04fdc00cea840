"""Downstream scoring: an oracle scores 100%, chance-level models score near chance."""

from __future__ import annotations

import math

import pytest
import torch
from evalhelpers import OracleAR, OracleMDM, Uniform, write_alphabet_task

from diffar.evaluator.downstream import encode_pair, score_task
from diffar.evaluator.tasks import load_task
from diffar.evaluator.tokenizers import ByteTokenizer
from diffar.trainer.config import ModelConfig
from diffar.trainer.model import Transformer

TOK = ByteTokenizer()
MASK = TOK.vocab_size


@pytest.mark.parametrize(
    ("objective", "model", "scoring"),
    [("ar", OracleAR(), "elbo"), ("mdm", OracleMDM(), "elbo"), ("mdm", OracleMDM(), "chain_rule")],
)
def test_oracle_scores_100_percent(tmp_path, objective, model, scoring):
    mc = load_task(str(write_alphabet_task(tmp_path / "alpha.jsonl", 20)))
    greedy = load_task(str(write_alphabet_task(tmp_path / "lam.jsonl", 10, kind="greedy")))
    kw = {"seq_len": 32, "mask_id": MASK, "scoring": scoring, "samples": 8}
    res = score_task(model, objective, mc, TOK, **kw)
    assert res["acc"] == 1.0 and res["acc_norm"] == 1.0 and res["n"] == 20
    res = score_task(model, objective, greedy, TOK, **kw)
    assert res["acc"] == 1.0 and res["n"] == 10


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_random_model_is_near_chance(tmp_path, objective):
    task = load_task(str(write_alphabet_task(tmp_path / "alpha.jsonl", 160, choices=4, seed=3)))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=TOK.vocab_size, preset="nano", seq_len=32, dropout=0)
    model = Transformer(cfg, causal=objective == "ar").eval()
    res = score_task(model, objective, task, TOK, seq_len=32, mask_id=MASK, samples=4)
    sd = math.sqrt(0.25 * 0.75 / 160)
    assert abs(res["acc"] - 0.25) < 4 * sd, res
    assert res["acc_stderr"] == pytest.approx(sd, rel=0.3)
    greedy = load_task(str(write_alphabet_task(tmp_path / "lam.jsonl", 20, kind="greedy")))
    assert score_task(model, objective, greedy, TOK, seq_len=32, mask_id=MASK)["acc"] < 0.2


def test_uniform_model_scores_minus_length_log_v(tmp_path):
    # A uniform AR model prefers the shortest choice: acc follows the gold's length, and every
    # log-likelihood is -len * log V, so acc_norm (per character) ties and picks choice 0.
    path = tmp_path / "t.jsonl"
    path.write_text('{"context": "abc", "continuations": ["d", "xyz"], "gold": 0}\n')
    res = score_task(Uniform(), "ar", load_task(str(path)), TOK, seq_len=16)
    assert res["acc"] == 1.0 and res["acc_norm"] == 1.0


def test_encode_pair_moves_trailing_space_to_continuation():
    assert encode_pair(TOK, "ab ", "c") == (list(b"ab"), list(b" c"))
    assert encode_pair(TOK, "", "c") == ([TOK.eod_id], list(b"c"))


def test_long_inputs_keep_their_last_tokens(tmp_path):
    path = tmp_path / "long.jsonl"
    ctx = "abcdefghijklmnopqrstuvwxyz" * 3
    path.write_text(f'{{"context": "{ctx}", "continuations": ["abc", "zzz"], "gold": 0}}\n')
    for objective, model in (("ar", OracleAR()), ("mdm", OracleMDM())):
        res = score_task(model, objective, load_task(str(path)), TOK, seq_len=16, mask_id=MASK)
        assert res["acc"] == 1.0


def test_gpt2_tokenizer_pairs_and_byte_lengths():
    from diffar.evaluator.tokenizers import get_tokenizer, tokenizer_for_vocab

    tok = get_tokenizer(tokenizer_for_vocab(50257))
    assert tok.encode("Hello world") == [15496, 995]
    lengths = tok.token_bytes()
    assert lengths.shape == (50257,) and lengths[15496] == 5 and lengths[995] == 6
    assert lengths[tok.eod_id] == 1
    ctx, cont = encode_pair(tok, "Question: Is it?\nAnswer: ", "yes")
    assert tok.decode(ctx) == "Question: Is it?\nAnswer:" and tok.decode(cont) == " yes"
