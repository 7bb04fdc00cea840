"""`diffar data prepare`: text in, GPT-2 token shards out (a train set and a validation set).

The document stream is the inputs in the order given, each input's documents in file order:
  - `.jsonl` / `.jsonl.gz`: one JSON object per line, the document is its `text` field
    (blank lines are skipped; a line without a string `text` is an error naming file:line);
  - anything else is UTF-8 text (`.gz` is decompressed): the whole file is one document, or,
    with `--text-unit paragraph` / `line`, every blank-line-separated block / every line is one.
Every document is tokenized with GPT-2 BPE and followed by EOD (50256); empty documents are
skipped.

Split (the paper trains on the first U tokens of C4):
  - train: exactly the first N tokens of the token stream (the last document may be cut);
  - val:   M tokens starting at the first document *after* the last one that train touched,
           so no document contributes to both sets (the last val document may be cut too).
Only as much input as the two sets need is read and tokenized.

Output: OUT/train/ and OUT/val/ (val only when M > 0), each a dataset in the shard format of
`diffar.trainer.shards`, shards of at most `shard_tokens` tokens, manifest.json written last.
OUT may be a local path, file:// or s3:// URI (see `diffar.trainer.storage`).
"""

from __future__ import annotations

import gzip
import io
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffar.trainer import tokenizer as tok
from diffar.trainer.errors import UserError
from diffar.trainer.shards import Manifest, ShardInfo, dtype_for_vocab

DEFAULT_SHARD_TOKENS = 64 * 1024 * 1024
TOKENIZER_FILE = "tokenizer.json"
TEXT_UNITS = ("file", "paragraph", "line")


class PrepareError(UserError):
    """Bad input for `diffar data prepare`; the message names the file and what to do."""


_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_count(text: str | int) -> int:
    """'100M' -> 100_000_000, '64k' -> 64_000, '1_000' -> 1000 (decimal suffixes k/M/B)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([kKmMbBgG]?)\s*", str(text))
    if not m:
        raise PrepareError(f"{text!r} is not a token count (examples: 1000000, 100M, 64k)")
    value = float(m.group(1).replace("_", "")) * _SUFFIX[m.group(2).lower()]
    if value != int(value):
        raise PrepareError(f"{text!r} is not a whole number of tokens")
    return int(value)


# ---------------------------------------------------------------- reading documents


def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    # A NUL byte does not occur in text: tokenizing an archive or an executable would fill the
    # dataset with noise without a word of warning.
    if b"\0" in raw.peek(8192)[:8192]:
        raw.close()
        raise PrepareError(f"{path} is a binary file, not text; give .txt, .jsonl or .jsonl.gz")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace")


def _is_jsonl(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz"))


def iter_documents(inputs: Iterable[str | Path], text_unit: str = "file") -> Iterator[str]:
    """The document stream of the inputs, in order (see the module doc)."""
    if text_unit not in TEXT_UNITS:
        raise PrepareError(f"--text-unit must be one of {', '.join(TEXT_UNITS)}")
    for raw in inputs:
        path = Path(raw)
        try:
            if _is_jsonl(path):
                yield from _jsonl_documents(path)
            else:
                yield from _text_documents(path, text_unit)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise PrepareError(f"{path}: cannot read input ({reason})") from None


def _jsonl_documents(path: Path) -> Iterator[str]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PrepareError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            text = obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise PrepareError(
                    f"{path}:{lineno}: no string field 'text' (each line must be an object "
                    'like {"text": "..."})'
                )
            yield text


def _text_documents(path: Path, text_unit: str) -> Iterator[str]:
    with _open_text(path) as f:
        if text_unit == "file":
            yield f.read()
        elif text_unit == "line":
            for line in f:
                yield line.rstrip("\n")
        else:  # paragraph: blocks separated by blank lines, read line by line
            block: list[str] = []
            for line in f:
                if line.strip():
                    block.append(line)
                elif block:
                    yield "".join(block).rstrip("\n")
                    block = []
            if block:
                yield "".join(block).rstrip("\n")


def iter_token_batches(
    documents: Iterable[str],
    batch_chars: int = 4 << 20,
    num_threads: int | None = None,
    encoder=None,
) -> Iterator[list[list[int]]]:
    """Tokenized documents (each ending with EOD), in batches of about `batch_chars` characters."""
    encoder = encoder or tok.GPT2Tokenizer()
    batch: list[str] = []
    size = 0
    for doc in documents:
        if not doc:
            continue
        batch.append(doc)
        size += len(doc)
        if size >= batch_chars:
            yield encoder.encode_documents(batch, num_threads=num_threads)
            batch, size = [], 0
    if batch:
        yield encoder.encode_documents(batch, num_threads=num_threads)


# ---------------------------------------------------------------- writing datasets


class _ShardBuffer:
    """Collects tokens into fixed-size shards and hands each full shard to `emit`."""

    def __init__(self, shard_tokens: int, dtype: str, emit: Callable[[str, np.ndarray], ShardInfo]):
        self.shard_tokens = shard_tokens
        self.dtype = np.dtype(dtype)
        self.emit = emit
        self.buf = np.empty(min(shard_tokens, 1 << 24), dtype=self.dtype)
        self.fill = 0
        self.shards: list[ShardInfo] = []
        self.total = 0

    def add(self, ids: list[int] | np.ndarray) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        pos = 0
        while pos < arr.size:
            room = self.shard_tokens - self.fill
            take = min(room, arr.size - pos)
            if self.fill + take > self.buf.size:
                grown = np.empty(
                    min(self.shard_tokens, max(self.buf.size * 2, self.fill + take)), self.dtype
                )
                grown[: self.fill] = self.buf[: self.fill]
                self.buf = grown
            self.buf[self.fill : self.fill + take] = arr[pos : pos + take]
            self.fill += take
            pos += take
            if self.fill == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if self.fill:
            name = f"shard-{len(self.shards):05d}.bin"
            self.shards.append(self.emit(name, self.buf[: self.fill]))
            self.total += self.fill
            self.fill = 0


@dataclass
class SplitResult:
    name: str
    uri: str
    tokens: int
    documents: int
    shards: int
    manifest: Manifest | None = field(default=None, repr=False)


@dataclass
class PrepareResult:
    train: SplitResult
    val: SplitResult | None
    seconds: float
    input_chars: int
    tokenized_tokens: int

    def summary(self) -> str:
        lines = [
            f"train: {self.train.tokens:,} tokens, {self.train.documents:,} documents, "
            f"{self.train.shards} shard(s) -> {self.train.uri}"
        ]
        if self.val is not None:
            lines.append(
                f"val:   {self.val.tokens:,} tokens, {self.val.documents:,} documents, "
                f"{self.val.shards} shard(s) -> {self.val.uri}"
            )
        rate = self.tokenized_tokens / self.seconds if self.seconds > 0 else 0.0
        lines.append(
            f"tokenized {self.tokenized_tokens:,} tokens from {self.input_chars / 1e6:.1f} M "
            f"characters in {self.seconds:.1f} s ({rate / 1e6:.2f} M tokens/s)"
        )
        return "\n".join(lines)


class _Progress:
    """A tqdm bar on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, total: int, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.total = total
        self.done = 0
        self.enabled = enabled
        self.bar = None
        self.last = time.monotonic()
        self.start = self.last
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=total, unit="tok", unit_scale=True, desc="prepare", file=self.stream
                )
            except ImportError:  # pragma: no cover - tqdm is a dependency
                self.bar = None

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            now = time.monotonic()
            if now - self.last >= 5.0:
                self.last = now
                self._line()

    def _line(self) -> None:
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        print(
            f"prepare: {self.done:,}/{self.total:,} tokens ({pct:.0f}%), {rate / 1e6:.2f} M tok/s",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line()


def prepare(
    inputs: list[str | Path],
    out: str | Path,
    unique_tokens: int,
    val_tokens: int = 0,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    text_unit: str = "file",
    overwrite: bool = False,
    progress: bool = True,
    num_threads: int | None = None,
    storage_options: dict | None = None,
    tokenizer: str = tok.NAME,
) -> PrepareResult:
    """Tokenize `inputs` into OUT/train (the first `unique_tokens`) and OUT/val (see module doc)."""
    from diffar.trainer import storage

    if unique_tokens < 1:
        raise PrepareError("--unique-tokens must be at least 1")
    if val_tokens < 0:
        raise PrepareError("--val-tokens must be 0 or more")
    if shard_tokens < 1:
        raise PrepareError("--shard-tokens must be at least 1")
    if not inputs:
        raise PrepareError("no input files given")
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise PrepareError(f"{p}: input file does not exist")
        if p.is_dir():
            raise PrepareError(f"{p}: is a directory; pass the files in it (e.g. {p}/*.jsonl)")

    encoder = tok.load_tokenizer(tokenizer)
    out_uri = str(out).rstrip("/")
    writers = {"train": storage.dataset_writer(storage.join(out_uri, "train"), storage_options)}
    if val_tokens > 0:
        writers["val"] = storage.dataset_writer(storage.join(out_uri, "val"), storage_options)
    for w in writers.values():
        w.begin(overwrite=overwrite)

    dtype = dtype_for_vocab(encoder.vocab_size)
    buffers = {name: _ShardBuffer(shard_tokens, dtype, w.put_shard) for name, w in writers.items()}
    docs = {name: 0 for name in writers}
    want = {"train": unique_tokens, "val": val_tokens}

    start = time.monotonic()
    bar = _Progress(unique_tokens + val_tokens, enabled=progress)
    chars = 0
    tokenized = 0
    split = "train"  # then "val" from the next whole document on, then "done"
    next_split = {"train": "val" if val_tokens > 0 else "done", "val": "done"}
    train_last_doc_index = -1
    total_docs = 0
    counting = _CharCounter(iter_documents(inputs, text_unit))
    failed = True
    try:
        for batch in iter_token_batches(counting, num_threads=num_threads, encoder=encoder):
            for ids in batch:
                tokenized += len(ids)
                buf = buffers[split]
                need = want[split] - buf.total - buf.fill
                take = ids[:need]
                buf.add(take)
                docs[split] += 1
                bar.update(len(take))
                if len(take) == need:  # this split is full: the next document starts the next
                    if split == "train":
                        train_last_doc_index = total_docs
                    split = next_split[split]
                total_docs += 1
                if split == "done":
                    break
            if split == "done":
                break
        chars = counting.chars
        failed = False
    finally:
        bar.close()
        if failed:  # bad input or an upload error mid-way: stop uploads, drop staging files
            for w in writers.values():
                w.abort()

    if total_docs == 0:
        for w in writers.values():
            w.abort()
        raise PrepareError(
            "the inputs hold no text (empty files, or jsonl lines with empty 'text')"
        )
    if split == "train":
        for w in writers.values():
            w.abort()
        have = buffers["train"].total + buffers["train"].fill
        raise PrepareError(
            f"the inputs hold only {have:,} tokens but --unique-tokens asks for {unique_tokens:,}; "
            "add input or lower --unique-tokens"
        )
    if split == "val":
        for w in writers.values():
            w.abort()
        have = buffers["val"].total + buffers["val"].fill
        hint = (
            " (with --text-unit file each text file is one document: pass more files or use "
            "--text-unit paragraph)"
            if text_unit == "file" and not all(_is_jsonl(Path(p)) for p in inputs)
            else ""
        )
        raise PrepareError(
            f"after the first {unique_tokens:,} training tokens the inputs hold only {have:,} "
            f"tokens of later documents but --val-tokens asks for {val_tokens:,}; add input or "
            f"lower --val-tokens{hint}"
        )

    input_names = [str(p) for p in inputs]
    results: dict[str, SplitResult] = {}
    try:
        for name, w in writers.items():
            buf = buffers[name]
            buf.flush()
            if encoder.name != tok.NAME:
                # A trained BPE travels with its dataset, so every later step reads the same one.
                w.store.put_bytes(TOKENIZER_FILE, Path(tokenizer).read_bytes())
            manifest = Manifest(
                tokenizer=encoder.name,
                vocab_size=encoder.vocab_size,
                eod_id=encoder.eod_id,
                total_tokens=buf.total,
                documents=docs[name],
                shards=tuple(buf.shards),
                dtype=dtype,
                source={
                    "inputs": input_names,
                    "split": name,
                    "text_unit": text_unit,
                    "unique_tokens": unique_tokens if name == "train" else None,
                    "first_document": 0 if name == "train" else train_last_doc_index + 1,
                    "note": (
                        "the first unique_tokens tokens of the document stream"
                        if name == "train"
                        else "documents after the last training document; disjoint from train"
                    ),
                },
            )
            w.finish(manifest)
            results[name] = SplitResult(
                name, w.uri, buf.total, docs[name], len(buf.shards), manifest
            )
    except BaseException:
        for w in writers.values():
            w.abort()
        raise

    return PrepareResult(
        train=results["train"],
        val=results.get("val"),
        seconds=time.monotonic() - start,
        input_chars=chars,
        tokenized_tokens=tokenized,
    )


class _CharCounter:
    def __init__(self, docs: Iterable[str]):
        self.docs = docs
        self.chars = 0

    def __iter__(self) -> Iterator[str]:
        for d in self.docs:
            self.chars += len(d)
            yield d
