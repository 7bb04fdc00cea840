"""Small synthetic jsonl corpora for the storage tests."""

from __future__ import annotations

import json
import random
from pathlib import Path


def write_corpus(path: Path, docs: int = 300, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = [
        "the",
        "river",
        "of",
        "time",
        "flows",
        "past",
        "quiet",
        "stones",
        "and",
        "1848",
        "bright",
        "café",
        "towns",
    ]
    with open(path, "w") as f:
        for _ in range(docs):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(10, 150)))
            f.write(json.dumps({"text": text}) + "\n")
    return path
