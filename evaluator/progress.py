"""A progress bar on stderr (tqdm, which DeepSpeed already depends on), or nothing."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, enabled: bool, total: int | None = None) -> Iterator[T]:
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm arrives with deepspeed
        yield from items
        return
    yield from tqdm(items, desc=desc, total=total, file=sys.stderr, mininterval=2.0, leave=False)
