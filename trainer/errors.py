"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input or environment the user can fix; str(e) says what and how, in one line."""
