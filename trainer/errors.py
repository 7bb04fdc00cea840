"""The exception type the CLI turns into a one-line message instead of a traceback, and the
one place that recognises a full disk."""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """Bad input or environment the user can fix; str(e) says what and how, in one line."""


def read_text(path, what: str = "file") -> str:
    """A file that should hold text (YAML, JSON, CSV), or a one-line UserError: unreadable, or
    binary (a NUL byte or bytes that are not UTF-8), which would otherwise surface as a
    UnicodeDecodeError traceback."""
    from pathlib import Path

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        if b"\0" in data[:8192]:
            raise UnicodeDecodeError("utf-8", data[:1], 0, 1, "NUL byte")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is a binary file, not a text {what}") from None


class DiskFullError(UserError):
    """A write failed for lack of space (or quota); nothing partial was left in place."""


# How torch.save's C++ writer reports a failed write: a RuntimeError with no errno.
_TORCH_WRITE_FAILURES = ("write failed", "iostream error", "unexpected pos")


def is_disk_full(e: BaseException, where: Path | None = None) -> bool:
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    if not isinstance(e, RuntimeError):
        return False
    if any(s in str(e) for s in _TORCH_WRITE_FAILURES):
        return True
    return where is not None and _free_bytes(where) < (64 << 20)


def _free_bytes(where: Path) -> int:
    for p in (where, *where.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return 1 << 62


def _free(where: Path) -> str:
    free = _free_bytes(where)
    return "free space unknown" if free == 1 << 62 else f"{free / 1e9:.2f} GB free"


@contextmanager
def disk_space(what: str, where: str | Path, then: str = "rerun"):
    """Turn a full disk (ENOSPC, EDQUOT, torch's "file write failed") into one clear line."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if not is_disk_full(e, Path(where)):
            raise
        raise DiskFullError(
            f"{where}: no space left on the device while writing {what} ({_free(Path(where))}); "
            f"free space or give the volume more room, then {then}"
        ) from None
