"""The one exception type the CLI turns into a one-line message instead of a traceback."""


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
