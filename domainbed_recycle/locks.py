"""Lock files: one process at a time works on a run folder, a sweep folder or a recycle folder.

A lock is a file created with `O_CREAT | O_EXCL` (atomic on local filesystems and on NFS v3+,
Lustre, GPFS), holding JSON {host, pid, proc_start, started, command}. It is released by deleting it.
A process killed with SIGKILL leaves its lock behind; the next process on the SAME host sees that
the pid is gone (or is another process: `proc_start`, the start time from /proc, differs) and takes
the lock over. A lock held from ANOTHER host cannot be checked: it is always respected, and when it
is older than `max_age_h` (env `DRECYCLE_LOCK_MAX_AGE_H`, default 24) the message says so and how to
remove it by hand — a lock is never stolen across hosts.

Torch-free: the launchers' parent process and `sweep status` use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from domainbed_recycle.errors import UserError
from domainbed_recycle.files import read_text

MAX_AGE_ENV = "DRECYCLE_LOCK_MAX_AGE_H"
DEFAULT_MAX_AGE_H = 24.0
_UNWRITTEN_GRACE_S = 60.0  # a lock file still empty after this long was left by a killed creator


class LockHeld(UserError):
    """The lock belongs to another live (or unverifiable) process; the message names it."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # fields after the command name, which may hold spaces


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": _proc_start(os.getpid()),
            "started": time.time(), "command": " ".join(sys.argv)[:300]}


def is_alive(holder: dict[str, Any]) -> bool:
    """False only when the holder is provably gone: same host and its pid is dead or reused."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    start = _proc_start(pid)
    return start is None or holder.get("proc_start") in (None, start)


def describe(holder: dict[str, Any]) -> str:
    """'host H pid P since YYYY-mm-dd HH:MM:SS'."""
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, int | float) else "?"
    return f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} since {when}"


def max_age_h() -> float:
    try:
        return float(os.environ.get(MAX_AGE_ENV, DEFAULT_MAX_AGE_H))
    except ValueError:
        return DEFAULT_MAX_AGE_H


class Lock:
    """The lock file `path`, guarding `what` (words for messages, e.g. 'run folder X').

    `acquire()` raises LockHeld (a UserError naming the holder) if another live process holds it;
    use `with Lock(...):` to hold it for a block. Not re-entrant.
    """

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._mine: dict[str, Any] | None = None

    def read(self) -> dict[str, Any] | None:
        """The holder's JSON; None if there is no lock; {} if it is unreadable or not a lock's JSON (being
        written, or not written by this harness)."""
        try:
            text = read_text(self.path, "lock", limit=1 << 16)  # a FIFO or a huge file is no lock of ours
        except FileNotFoundError:
            return None
        except (OSError, UserError):
            return {}
        try:
            holder = json.loads(text)
        except ValueError:
            return {}
        # what `_me` writes, at least a host and a pid: anything else is no lock of ours ({})
        ok = isinstance(holder, dict) and isinstance(holder.get("host"), str) and isinstance(holder.get("pid"), int)
        return holder if ok else {}

    def _stale(self, holder: dict[str, Any]) -> bool:
        if not holder:  # empty: its creator was killed between create and write, or is writing now
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                return True
            # A file with other content is no lock of ours: respected, never deleted.
            return stat.st_size == 0 and time.time() - stat.st_mtime > _UNWRITTEN_GRACE_S
        return not is_alive(holder)

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        mine = _me()
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(mine))
            handle.flush()
            os.fsync(handle.fileno())
        self._mine = mine
        return True

    def _take_over(self, stale: dict[str, Any]) -> None:
        """Move a stale lock aside (rename is atomic: of two processes, one wins), then make sure
        what was moved is the stale lock and not a live one just created by a faster process."""
        # Named like the run folder's atomic-write temp files, so a kill here leaves a harness file.
        aside = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(read_text(aside, "lock", limit=1 << 16) or "{}")
        except (OSError, ValueError, UserError):
            moved = {}
        if moved != stale and moved and is_alive(moved):  # someone else's fresh lock: give it back
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)

    def acquire(self) -> None:
        for _ in range(5):
            if self._create():
                return
            holder = self.read()
            if holder is None:
                continue  # released meanwhile
            if self._stale(holder):
                self._take_over(holder)
                continue
            raise LockHeld(self._held_message(holder), holder)
        raise LockHeld(f"{self.what} is locked ({self.path}) and the lock keeps changing hands", {})

    def _held_message(self, holder: dict[str, Any]) -> str:
        if not holder:  # empty (a creator still writing it) or holding something that is no lock of ours
            try:
                size = self.path.stat().st_size
            except OSError:
                size = 0
            if size == 0:
                return (f"{self.what} is being locked by another process right now ({self.path} is still empty): "
                        f"try again in a minute; if it stays empty, no process is writing it: delete it")
            return (f"{self.what} is locked by {self.path}, which is not a lock this harness wrote (its content "
                    f"is not a lock's JSON): if no drecycle process is working there, delete that file "
                    f"(rm {self.path}) and try again")
        message = f"{self.what} is in use by {describe(holder)} (lock {self.path})"
        started = holder.get("started")
        if holder.get("host") != socket.gethostname() and isinstance(started, int | float):
            age_h = (time.time() - started) / 3600
            if age_h > max_age_h():
                message += (f"; the lock is {age_h:.0f} h old: if that process is gone, delete {self.path} "
                            f"(a lock from another host is never taken over)")
        return message

    def release(self) -> None:
        """Delete the lock if it is still ours."""
        if self._mine is not None and self.read() == self._mine:
            self.path.unlink(missing_ok=True)
        self._mine = None

    @property
    def held(self) -> bool:
        return self._mine is not None

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def release_if_mine(path: str | os.PathLike[str], children: bool = False) -> bool:
    """Delete the lock file `path` if this process (host and pid) holds it, or with `children` one of
    its child processes; True if it did. For a process about to be requeued from a signal handler,
    whose `Lock` objects (or whose pool workers') are out of reach."""
    holder = Lock(path, "").read()
    mine = {os.getpid()} | (_child_pids() if children else set())
    if holder and holder.get("host") == socket.gethostname() and holder.get("pid") in mine:
        Path(path).unlink(missing_ok=True)
        return True
    return False


def _child_pids() -> set[int]:
    """Pids of this process's children (Linux's /proc/self/task/*/children; empty elsewhere)."""
    pids: set[int] = set()
    for listing in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(pid) for pid in listing.read_text().split())
    return pids


FOLDER_LOCK = ".drecycle.lock"  # the lock of a sweep or recycle output folder


def folder_lock(folder: str | os.PathLike[str], what: str) -> Lock:
    """The lock of a sweep or recycle output folder (created if missing)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Lock(Path(folder) / FOLDER_LOCK, what)


@contextlib.contextmanager
def try_hold(lock: Lock) -> Iterator[dict[str, Any] | None]:
    """Hold `lock` for the block if it is free; else yield the holder (the block runs unlocked)."""
    try:
        lock.acquire()
    except LockHeld as held:
        yield held.holder or {}
        return
    try:
        yield None
    finally:
        lock.release()
