"""Reading and writing files the user may have put anything in: special files, links and paths that
lead elsewhere, existing outputs.

- `read_regular` reads a file only if it is a plain file: a FIFO or a device would block a reader
  forever or never end (it is opened without blocking, then checked), and a size limit bounds what a
  damaged file can make the harness read;
- `check_inside` refuses a path that, once resolved (links followed), lies outside the folder that
  owns it, before anything there is deleted;
- `check_new_output` refuses to overwrite an existing file unless the user said `--force`.

Torch-free, imports only `errors` (contracts floor).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from domainbed_recycle.errors import UserError

DEFAULT_LIMIT = 1 << 30  # bytes: no spec, marker, log or lock of the harness comes near


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def describe_kind(path: str | os.PathLike[str]) -> str:
    """What `path` is, in words ("a FIFO (named pipe)", "a folder", "a regular file"), links followed."""
    mode = os.stat(path).st_mode
    return "a regular file" if stat.S_ISREG(mode) else _kind(mode)


def read_regular(path: str | os.PathLike[str], what: str = "file", limit: int = DEFAULT_LIMIT,
                 head: bool = False) -> bytes:
    """The bytes of the plain file `path` (with `head`, its first `limit` bytes at most). UserError (one
    line) for a FIFO, device or socket (opened without blocking, then checked: nothing waits on a pipe)
    or, unless `head`, a file above `limit` bytes; OSError (FileNotFoundError, IsADirectoryError...) as
    `open` raises it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path}: {_kind(info.st_mode)}, not a {what} this harness can read (expected a "
                            "regular file)")
        if info.st_size > limit and not head:
            raise UserError(f"{path}: {info.st_size:,} bytes, more than a {what} can hold (at most {limit:,})")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike[str], what: str = "file", limit: int = DEFAULT_LIMIT) -> str:
    """`read_regular` decoded as UTF-8; UserError naming the file and the byte offset if it is not UTF-8."""
    data = read_regular(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start} is {data[error.start:error.start + 1]!r}); "
                        f"save the {what} as UTF-8") from None


def is_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether `path`, resolved (links followed, `..` removed), lies inside `folder` resolved (or is it)."""
    target, root = Path(path).resolve(), Path(folder).resolve()
    return target == root or root in target.parents


def check_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str], what: str) -> None:
    """UserError (one line: nothing is deleted) unless `path` resolves inside `folder`."""
    if not is_inside(path, folder):
        raise UserError(f"{what} {path} leads out of {folder} (to {Path(path).resolve()}): refusing to touch it; "
                        f"nothing was deleted")


def check_new_output(path: str | os.PathLike[str], force: bool, flag: str) -> Path:
    """`path` as a Path, checked to be writable as a new output: UserError if it exists and `force` is
    false (or is a folder, or a special file, even with `force`), if one of its parents is a file, or if
    it holds a NUL byte."""
    text = os.fspath(path)
    if "\x00" in text:
        raise UserError(f"{flag} holds a NUL byte (\\x00), which no path can: {text!r}")
    path = Path(text)
    if path.is_symlink() or path.exists():
        if path.is_dir():
            raise UserError(f"{flag} {path} is a folder: give a file name")
        if path.exists() and not path.is_file():
            raise UserError(f"{flag} {path} is {_kind(path.stat().st_mode)}: give a regular file name")
        if not force:
            raise UserError(f"{path} exists: choose another {flag}, or pass --force to overwrite it")
    for parent in path.parents:  # the folders it goes in are made later: none of them may be a file
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    return path
