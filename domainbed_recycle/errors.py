"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class UserError(Exception):
    """A problem with what the user asked for (bad flag, missing folder, corrupt file...).

    The message must say what is wrong and, where possible, how to fix it.
    """


class RunDiverged(UserError):
    """A run whose loss or weights stopped being finite: its folder is marked `diverged` (final)."""
