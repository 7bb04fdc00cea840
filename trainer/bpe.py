"""A small byte-level BPE trained on the corpus itself, for tiny models on a CPU.

With GPT-2's 50257-token vocabulary a 1M-parameter model spends most of its parameters and
FLOPs on the embedding and the output softmax; a 4096-token BPE learned from the training text
trains several times faster per token at this scale (measured in docs/quickstart.md). The
tokenizer is byte-level like GPT-2's (any text encodes, decoding is exact) and is saved as a
Hugging Face `tokenizer.json` beside the dataset it produced, so every later step reads the
same one.

End-of-document is id 0 (`<|endoftext|>`), the first special token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffar.trainer.errors import UserError

ENDOFTEXT = "<|endoftext|>"
FILENAME = "tokenizer.json"


def train_bpe(texts: Iterable[str], vocab_size: int, out: Path) -> Path:
    """Learn a byte-level BPE of `vocab_size` ids (EOD included) and write tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out))
    return out


@dataclass(frozen=True)
class BPETokenizer:
    """A trained byte-level BPE, with the interface `diffar data prepare` and the evaluator use."""

    path: Path
    name: str
    vocab_size: int
    eod_id: int

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        path = Path(path)
        try:
            raw = path.read_bytes()
            tok = Tokenizer.from_str(raw.decode())
        except (OSError, ValueError, Exception) as e:
            raise UserError(f"{path}: not a readable tokenizer.json ({e})") from None
        eod = tok.token_to_id(ENDOFTEXT)
        if eod is None:
            raise UserError(f"{path}: tokenizer has no {ENDOFTEXT} token")
        digest = hashlib.sha256(raw).hexdigest()[:12]
        return cls(
            path=path,
            name=f"bpe{tok.get_vocab_size()}-{digest}",
            vocab_size=tok.get_vocab_size(),
            eod_id=eod,
        )

    @property
    def _tok(self):
        return _load(self.path)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_documents(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        del num_threads  # the Rust batch encoder picks its own parallelism
        return [
            [*enc.ids, self.eod_id]
            for enc in self._tok.encode_batch(texts, add_special_tokens=False)
        ]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([i for i in ids if i != self.eod_id])

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each id stands for (byte-level: one character of its string per byte);
        EOD counts as one byte, the separator it stands for."""
        out = np.ones(self.vocab_size, dtype=np.int64)
        for token, i in self._tok.get_vocab().items():
            if i != self.eod_id:
                out[i] = len(token)
        return out


_CACHE: dict[Path, object] = {}


def _load(path: Path):
    from tokenizers import Tokenizer

    if path not in _CACHE:
        _CACHE[path] = Tokenizer.from_file(str(path))
    return _CACHE[path]
