import subprocess
import sys

import numpy as np

from diffar.trainer.bpe import BPETokenizer, train_bpe
from diffar.trainer.shards import load_tokens, read_manifest
from diffar.trainer.tokenizer import GPT2Tokenizer, load_tokenizer

TEXT = [
    "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 20,
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20,
    "Friends, Romans, countrymen, lend me your ears; café naïve — 1599.\n" * 20,
]


def test_trained_bpe_round_trips_and_counts_bytes(tmp_path):
    tok = BPETokenizer.from_file(train_bpe(TEXT, 300, tmp_path / "tok.json"))
    assert tok.vocab_size == 300 and tok.eod_id == 0
    assert tok.name.startswith("bpe300-")
    for text in [*TEXT, "unseen words: zebra quixotic ☃"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert int(tok.token_bytes()[ids].sum()) == len(text.encode())
    docs = tok.encode_documents(TEXT[:2])
    assert all(d[-1] == 0 and 0 not in d[:-1] for d in docs)
    # Merges are learned: far fewer tokens than bytes.
    assert len(tok.encode(TEXT[0])) < 0.7 * len(TEXT[0].encode())


def test_gpt2_tokenizer_interface():
    tok = load_tokenizer("gpt2")
    assert isinstance(tok, GPT2Tokenizer)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode_documents(["Hello world"]) == [[15496, 995, 50256]]
    sizes = tok.token_bytes()
    assert sizes[15496] == 5 and sizes[995] == 6 and sizes[50256] == 1


def test_prepare_with_a_trained_bpe(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXT * 5))
    cli = [sys.executable, "-m", "diffar.operator.cli", "data"]
    tok_path = tmp_path / "tok.json"
    r = subprocess.run(
        [*cli, "tokenizer", str(corpus), "--out", str(tok_path), "--vocab-size", "300"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [
            *cli,
            "prepare",
            str(corpus),
            "--out",
            str(tmp_path / "ds"),
            "--unique-tokens",
            "2000",
            "--val-tokens",
            "200",
            "--text-unit",
            "paragraph",
            "--tokenizer",
            str(tok_path),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    manifest = read_manifest(tmp_path / "ds" / "train")
    tok = BPETokenizer.from_file(tok_path)
    assert (manifest.tokenizer, manifest.vocab_size, manifest.eod_id) == (tok.name, 300, 0)
    assert (tmp_path / "ds" / "train" / "tokenizer.json").read_bytes() == tok_path.read_bytes()
    tokens = load_tokens(tmp_path / "ds" / "train")
    expected = tok.encode_documents([TEXT[0].strip("\n")])[0]
    assert np.array_equal(tokens[: len(expected)], expected)


def test_unknown_tokenizer_is_a_one_line_error(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffar.operator.cli",
            "data",
            "prepare",
            str(corpus),
            "--out",
            str(tmp_path / "ds"),
            "--unique-tokens",
            "1",
            "--tokenizer",
            "llama",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "unknown tokenizer 'llama'" in r.stderr and "Traceback" not in r.stderr
