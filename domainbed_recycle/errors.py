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
    blocking = _file_in_the_way(error) if isinstance(error, FileExistsError) else None
    if blocking is not None:  # mkdir's "File exists" alone would not say why it matters
        reason += " (a file, where a folder is needed)" if blocking == str(path) else f" ({blocking} is a file)"
    text = f"{path}: {reason}" if path is not None else reason
    return text + (f" (and {error.filename2})" if error.filename2 is not None else "")


def write_error_reason(error: OSError) -> str:
    """The reason a write failed, in words: a path of a missing folder's parents that is a file says so
    (mkdir's own 'File exists' would not tell which file, nor why it matters)."""
    blocking = _file_in_the_way(error)
    if blocking is not None:
        return f"{blocking} is a file, not a folder"
    reason = error.strerror or str(error) or type(error).__name__
    return f"{reason} ({error.filename})" if error.filename is not None else reason


def _file_in_the_way(error: OSError) -> str | None:
    """For a 'File exists' or 'Not a directory' error, the file standing where a folder of the error's
    path should be (None if there is none)."""
    import os

    if not isinstance(error, FileExistsError | NotADirectoryError) or error.filename is None:
        return None
    part = os.fspath(error.filename)
    while part and part != os.path.dirname(part):
        if os.path.lexists(part) and not os.path.isdir(part):
            return part
        part = os.path.dirname(part)
    return None
