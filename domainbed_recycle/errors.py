"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class UserError(Exception):
    """A problem with what the user asked for (bad flag, missing folder, corrupt file...).

    The message must say what is wrong and, where possible, how to fix it.
    """


class RunDiverged(UserError):
    """A run whose loss or weights stopped being finite: its folder is marked `diverged` (final)."""


def os_error_line(error: OSError, where: object = None) -> str:
    """One line for a file-system failure (disk full, read-only, not a directory...): the path
    (the error's own, else `where`) and the system's reason, e.g. '/x/run: No space left on device'."""
    path = error.filename if error.filename is not None else where
    reason = error.strerror or str(error) or type(error).__name__
    text = f"{path}: {reason}" if path is not None else reason
    return text + (f" (and {error.filename2})" if error.filename2 is not None else "")
