"""The exception type the CLI turns into a one-line message instead of a traceback, and the
one place that recognises a full disk."""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """Bad input or environment the user can fix; str(e) says what and how, in one line."""


class DiskFullError(UserError):
    """A write failed for lack of space (or quota); nothing partial was left in place."""


def is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save reports a failed write as RuntimeError("... file write failed"), with no errno
    return isinstance(e, RuntimeError) and "write failed" in str(e)


def _free(where: Path) -> str:
    for p in (where, *where.parents):
        try:
            return f"{shutil.disk_usage(p).free / 1e9:.2f} GB free"
        except OSError:
            continue
    return "free space unknown"


@contextmanager
def disk_space(what: str, where: str | Path, then: str = "rerun"):
    """Turn a full disk (ENOSPC, EDQUOT, torch's "file write failed") into one clear line."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if not is_disk_full(e):
            raise
        raise DiskFullError(
            f"{where}: no space left on the device while writing {what} ({_free(Path(where))}); "
            f"free space or give the volume more room, then {then}"
        ) from None
