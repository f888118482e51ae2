"""The run folder: the one contract between training, launchers, strategies, analysis and collect.

A run folder holds only files the harness writes (names below): `.made_by_drecycle` (written first,
when the harness creates the folder or claims an empty one: the proof that the folder is the
harness's, without which nothing in it is ever deleted), `args.json` (the run's arguments
and provenance), `results.jsonl` (one JSON record per evaluation, flushed line by line),
`model_best.safetensors` (best training-domain validation accuracy), `model.safetensors` (last
step), `model_step<N>.safetensors` (every evaluation, with `--save_model_every_checkpoint`),
`out.txt`/`err.txt` (a launcher's copy of stdout/stderr), atomic-write temp files
(`.<name>.<pid>.tmp`), `resume.pt` (what a killed run needs to continue, see `training`),
`lock` (held while a process works on the run, see `locks`), `diverged` (JSON: step and reason,
written when the loss or the weights stop being finite), and `done`, written last and atomically
once everything else succeeded.

States: `done` (holds `done`), `diverged` (holds `diverged`: final, never selected or averaged),
`incomplete` (exists without either: killed, failed or running), `not_launched` (no folder).
`reset()` deletes only the harness's own files, only in a folder the harness made, and refuses a
folder holding anything else, so a mistyped `--output_dir` never costs a user's files (not even
files that happen to be named `out.txt` or `results.jsonl`). A folder made by an older version,
without the marker, counts as the harness's when its `args.json` or first record carries the
harness's provenance (`versions` and `git_commit`), which no other tool writes.

Torch-free on purpose: the collector, `sweep status` and the launchers' parent process use it.

Why one module of ~340 lines: it is the whole run-folder contract (names, states, reset, records,
atomic writes, divergence, resume and lock files), kept in one torch-free place on purpose.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from domainbed_recycle.errors import UserError
from domainbed_recycle.files import read_regular, read_text
from domainbed_recycle.performance import LOADER_SWITCHES

RESULTS = "results.jsonl"
ARGS = "args.json"
DONE = "done"
DIVERGED = "diverged"
RESUME = "resume.pt"
LOCK = "lock"
BEST = "model_best.safetensors"
LAST = "model.safetensors"
OUT = "out.txt"
ERR = "err.txt"
LOGS = (OUT, ERR)  # what a launcher opens in the folder before training starts
MADE_BY = ".made_by_drecycle"  # written first into a folder the harness makes: its proof of ownership
# Everything the harness writes (besides temp files).
FILES = (ARGS, RESULTS, BEST, LAST, OUT, ERR, DONE, DIVERGED, RESUME, LOCK, MADE_BY)

# States.
STATE_DONE = "done"
STATE_DIVERGED = "diverged"
INCOMPLETE = "incomplete"
NOT_LAUNCHED = "not_launched"
STATES = (STATE_DONE, STATE_DIVERGED, INCOMPLETE, NOT_LAUNCHED)

# Arguments that say where or how a run executes, not what it computes: they never tell two runs apart.
PLACEMENT_ARGS = ("output_dir", "progress", "threads", *LOADER_SWITCHES)


def temp_name(name: str) -> str:
    """The temp file an atomic write of `name` uses (same folder, then `os.replace`)."""
    return f".{name}.{os.getpid()}.tmp"


def step_checkpoint(step: int) -> str:
    """The checkpoint of the evaluation at `step` (DomainBed's `--save_model_every_checkpoint`)."""
    return f"model_step{step}.safetensors"


def _is_step_checkpoint(name: str) -> bool:
    return name.startswith("model_step") and name.endswith(".safetensors") and name[10:-12].isdigit()


def _is_harness_file(name: str) -> bool:
    if name in FILES or _is_step_checkpoint(name):
        return True
    if name.startswith(".") and name.endswith(".tmp"):  # `.<name>.<pid>.tmp`, left by a killed write
        core, _, pid = name[1:-len(".tmp")].rpartition(".")
        return (core in FILES or _is_step_checkpoint(core)) and pid.isdigit()
    return False


def is_made_by_harness(folder: Path) -> bool:
    """Whether `folder` holds the harness's marker (`MADE_BY`, a plain file)."""
    return (Path(folder) / MADE_BY).is_file()


def claim(folder: Path, what: str, legacy: Callable[[], bool] | None = None) -> None:
    """Make `folder` (and its parents) if missing and mark it as the harness's (`MADE_BY`), unless it
    is marked already. UserError, writing nothing, for an existing folder without the marker that holds
    anything, unless `legacy()` proves another way that an older version of the harness made it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is not a folder ({what} expected there)")
    if is_made_by_harness(folder):
        return
    if folder.is_dir() and os.listdir(folder) and not (legacy and legacy()):
        raise UserError(not_ours_message(folder, what))
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / MADE_BY, json.dumps({"made_by": "domainbed_recycle", "what": what,
                                               "created": time.time(), "pid": os.getpid()}) + "\n")


def not_ours_message(folder: Path, what: str) -> str:
    """One line refusing to write into or delete from a folder the harness did not make."""
    names = sorted(os.listdir(folder))
    shown = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"{folder} already holds files ({shown}) and was not made by this harness (no {MADE_BY} marker); "
            f"refusing to write {what} there or delete anything in it: choose a new or empty folder")


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` through a synced temp file in the same folder, then `os.replace`: a
    reader (or a kill) sees the old file or the whole new one, never a part."""
    tmp = path.parent / temp_name(path.name)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunDir:
    """One run folder (`path`); cheap to make, reads the disk only when asked.

    Attributes are file paths; `state`/`is_done` look at the disk each time (a run may finish meanwhile).
    """

    path: Path

    # The file names, also reachable from the class (`RunDir.RESULTS`).
    RESULTS = RESULTS
    ARGS = ARGS
    DONE = DONE
    BEST = BEST
    LAST = LAST
    OUT = OUT
    ERR = ERR
    DIVERGED = DIVERGED
    RESUME = RESUME
    LOCK = LOCK

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        """The folder's name (a sweep job's id)."""
        return self.path.name

    # -------------------------------------------------------------------------- files
    @property
    def results_file(self) -> Path:
        return self.path / RESULTS

    @property
    def args_file(self) -> Path:
        return self.path / ARGS

    @property
    def done_file(self) -> Path:
        return self.path / DONE

    @property
    def out_file(self) -> Path:
        return self.path / OUT

    @property
    def err_file(self) -> Path:
        return self.path / ERR

    @property
    def diverged_file(self) -> Path:
        return self.path / DIVERGED

    @property
    def resume_file(self) -> Path:
        """What a killed run needs to continue (`training.save_resume_state`); gone once done."""
        return self.path / RESUME

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    @property
    def best_checkpoint(self) -> Path:
        """Weights at the best training-domain validation accuracy (what averaging uses)."""
        return self.path / BEST

    @property
    def last_checkpoint(self) -> Path:
        """Weights at the last step."""
        return self.path / LAST

    @property
    def model_checkpoint(self) -> Path | None:
        """The run's model: the best checkpoint if there is one, else the last; None if neither exists."""
        return next((p for p in (self.best_checkpoint, self.last_checkpoint) if p.is_file()), None)

    # -------------------------------------------------------------------------- state
    @property
    def state(self) -> str:
        """`done`, `diverged`, `incomplete` or `not_launched` (see the module docstring)."""
        if self.done_file.is_file():
            return STATE_DONE
        if self.diverged_file.is_file():
            return STATE_DIVERGED
        if self.path.exists():
            return INCOMPLETE
        return NOT_LAUNCHED

    @property
    def is_done(self) -> bool:
        return self.done_file.is_file()

    @property
    def is_diverged(self) -> bool:
        return self.diverged_file.is_file() and not self.is_done

    def diverged_info(self) -> dict[str, Any]:
        """The `diverged` marker's content ({'step', 'reason'}); {} if absent or unreadable."""
        try:
            info = json.loads(read_text(self.diverged_file, DIVERGED, limit=1 << 20))
        except (OSError, ValueError, UserError):
            return {}
        return info if isinstance(info, dict) else {}

    def describe_divergence(self) -> str:
        """One phrase: 'diverged at step N (reason)'."""
        info = self.diverged_info()
        return f"diverged at step {info.get('step', '?')} ({info.get('reason', 'non-finite values')})"

    def foreign_entries(self) -> list[str]:
        """Names in the folder that the harness did not write (sorted); [] for a missing folder."""
        if not self.path.exists():
            return []
        self._check_is_dir()
        return sorted(name for name in os.listdir(self.path)
                      if not _is_harness_file(name) or (self.path / name).is_dir())

    @property
    def is_fresh(self) -> bool:
        """True if the folder is missing or empty, or is the harness's and holds at most a launcher's
        `out.txt`/`err.txt` (and the lock)."""
        if not self.path.exists():
            return True
        self._check_is_dir()
        names = os.listdir(self.path)
        return not names or (self.is_ours and all(name in (*LOGS, LOCK, MADE_BY) and not (self.path / name).is_dir()
                                                  for name in names))

    @property
    def is_ours(self) -> bool:
        """Whether the harness made this folder: it holds `MADE_BY`, or (made by an older version) its
        `args.json` or first record carries the harness's provenance (see the module docstring)."""
        return is_made_by_harness(self.path) or self._has_legacy_provenance()

    def _has_legacy_provenance(self) -> bool:
        for source in (self.args_file, self.results_file):
            try:
                data = read_regular(source, source.name, limit=1 << 24, head=source == self.results_file)
                obj = json.loads(data.split(b"\n", 1)[0] if source == self.results_file else data)
            except (OSError, ValueError, UserError):
                continue
            if isinstance(obj, dict) and "versions" in obj and "git_commit" in obj:
                return True
        return False

    def _check_is_dir(self) -> None:
        if not self.path.is_dir():
            raise UserError(f"{self.path} is not a folder (a run folder is expected there)")

    def check_is_run(self) -> None:
        """UserError (one line) unless the folder is missing, empty, or made by the harness and holding
        only the harness's files."""
        foreign = self.foreign_entries()
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise UserError(
                f"{self.path} holds files this harness did not write ({foreign[0]!r}{more}); refusing to "
                f"touch it: choose a new or empty output folder"
            )
        if self.path.exists() and os.listdir(self.path) and not self.is_ours:
            raise UserError(not_ours_message(self.path, "a run"))

    def reset(self) -> None:
        """Delete the harness's files, so a run starts afresh (the folder itself stays, and so does
        its `lock`, which belongs to whoever holds it).

        Raises UserError, deleting nothing, if the folder holds anything the harness did not write.
        """
        self.check_is_run()
        if not self.path.exists():
            return
        for name in os.listdir(self.path):
            if name not in (LOCK, MADE_BY):
                (self.path / name).unlink(missing_ok=True)

    def remove(self) -> None:
        """`reset()`, then remove the emptied folder (the run becomes `not_launched`); a folder whose
        `lock` is still there (held, or left by a dead process) is kept, emptied."""
        self.reset()
        self.remove_if_empty()

    def remove_if_empty(self) -> None:
        """Remove the folder if it holds nothing but the harness's marker (e.g. a run refused before it
        wrote anything); otherwise leave it as it is."""
        if self.path.is_dir() and not self.path.is_symlink() and set(os.listdir(self.path)) <= {MADE_BY}:
            (self.path / MADE_BY).unlink(missing_ok=True)
            try:
                self.path.rmdir()
            except OSError:  # something appeared meanwhile (another process took the folder): keep it, marked
                claim(self.path, "a run", legacy=lambda: True)

    def create(self) -> RunDir:
        """Make the folder (and its parents) if missing and mark it as the harness's (`MADE_BY`);
        UserError, writing nothing, for an existing folder the harness did not make that holds
        anything. Returns self."""
        claim(self.path, "a run", legacy=self._has_legacy_provenance)
        return self

    def mark_done(self) -> None:
        """Write `done` atomically (temp file, then rename): call it last, once everything succeeded."""
        write_atomic(self.done_file, "done\n")

    def mark_diverged(self, step: int, reason: str) -> None:
        """Write the `diverged` marker atomically: JSON {'step', 'reason'} (the run's final state)."""
        write_atomic(self.diverged_file, json.dumps({"step": step, "reason": reason}) + "\n")

    # -------------------------------------------------------------------------- records
    def open_records(self) -> RecordLog:
        """The results log, opened for appending (use as a context manager)."""
        return RecordLog(open(self.results_file, "a", encoding="utf-8"))

    def read_records(self) -> list[dict[str, Any]]:
        """Every record of `results.jsonl` ([] if there is none); UserError naming a corrupt line."""
        if not self.results_file.is_file():
            return []
        records = []
        for number, line in enumerate(self.results_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                raise UserError(f"{self.results_file}:{number}: not a JSON record") from None
        return records

    def write_args(self, static: Mapping[str, Any]) -> None:
        """Write `args.json` (the run's arguments, hyper-parameters and provenance)."""
        self.args_file.write_text(json.dumps(static, indent=2, sort_keys=True, default=str))

    def read_static(self) -> dict[str, Any]:
        """The whole of `args.json`, else the first record (which repeats it); UserError if neither reads."""
        for source in (self.args_file, self.results_file):
            try:
                text = read_text(source, source.name)  # a FIFO there would block: refused
                obj = json.loads(text if source == self.args_file else text.splitlines()[0])
            except (OSError, ValueError, IndexError, UserError):
                continue
            if isinstance(obj, dict) and isinstance(obj.get("args"), dict):
                return obj
        raise UserError(f"{self.path}: cannot read the run's arguments ({ARGS} missing or corrupt)")

    @property
    def args(self) -> dict[str, Any]:
        """The run's stored arguments (`TrainConfig` fields, steps resolved, plus `environments`)."""
        return dict(self.read_static()["args"])

    def differing_args(self, wanted: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> list[str]:
        """Names of the arguments in `wanted` whose stored value differs (placement args ignored).

        `wanted` is compared after a JSON round trip, as the stored values were written. An argument
        the run did not store (it predates it) counts as its value in `defaults`, when given.
        """
        stored = self.args
        wanted = json.loads(json.dumps(dict(wanted), default=str))
        fallback = json.loads(json.dumps(dict(defaults or {}), default=str))
        return sorted(key for key, value in wanted.items()
                      if key not in PLACEMENT_ARGS and stored.get(key, fallback.get(key)) != value)


class RecordLog:
    """An open `results.jsonl`: `append(record)` writes one JSON line and flushes it."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle

    def append(self, record: Mapping[str, Any]) -> None:
        self._handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        self._handle.flush()

    def extend(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:
            self.append(record)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
