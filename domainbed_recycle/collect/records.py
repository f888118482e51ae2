"""Read a sweep folder (run folders written by DomainBed or by this harness) into one DataFrame.

A sweep folder holds one folder per run; each has `results.jsonl` (one JSON record a line) and,
once complete, `done`. Like DomainBed's collector, every `results.jsonl` one level down is read,
whether or not the run is done (`only_done=True` skips unfinished runs); a `results.jsonl` in
the folder itself is read too. Unlike DomainBed's, a broken line (a killed run's truncated last
line, binary garbage, a line that is not JSON, a record without the keys the collector needs)
does not stop the collection: it is skipped and counted, with its file, in a `LoadReport`, and
the valid lines around it are kept. A finished run without any valid record is named too.

No torch here: the collector must start fast.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from domainbed_recycle import rundir
from domainbed_recycle.collect.flatten import DOMAINBED_ENVIRONMENTS, flatten_records
from domainbed_recycle.collect.jsonl import parse_lines
from domainbed_recycle.errors import UserError
from domainbed_recycle.files import read_regular
from domainbed_recycle.performance import describe

RESULTS_FILE = rundir.RESULTS
DONE_FILE = rundir.DONE
DIVERGED_FILE = rundir.DIVERGED

#: Problem kind -> how the warning describes it.
PROBLEMS: dict[str, str] = {
    "truncated_line": "truncated last line (run killed while writing?)",
    "not_text": "line of binary garbage (not UTF-8 text)",
    "bad_json": "line that is not a JSON object",
    "missing_keys": "record missing required keys or with invalid values",
    "unreadable": "file that could not be read (or is a FIFO, a device or a folder)",
    "diverged": "record(s) of diverged runs (loss or weights not finite; never selected)",
}

_ACC_KEY = re.compile(r"^env(\d+)_(in|out)_acc$")


@dataclass
class LoadReport:
    """What `load_records` read and what it had to skip."""

    input_dir: str
    n_files: int = 0
    n_records: int = 0
    n_runs_not_done: int = 0
    n_runs_excluded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    #: Folders of finished runs (with `done`) that gave no valid record: empty or missing
    #: results file, or every line skipped. Such a run is absent from the tables.
    empty_done_runs: list[str] = field(default_factory=list)
    #: Valid records per numeric training settings (`performance.describe`: "fp32", "bf16+channels_last"...).
    settings: dict[str, int] = field(default_factory=dict)

    def add_problem(self, kind: str, file: str, count: int = 1) -> None:
        """Count `count` skipped lines of kind `kind` found in `file`."""
        self.skipped[kind] = self.skipped.get(kind, 0) + count
        names = self.files.setdefault(kind, [])
        if file not in names:
            names.append(file)

    @property
    def n_skipped(self) -> int:
        """Number of lines skipped, all problems together."""
        return sum(self.skipped.values())

    def warning(self, max_files: int = 5) -> str | None:
        """One paragraph describing the skipped lines (None when nothing was skipped)."""
        if not self.n_skipped:
            return None
        parts = []
        for kind, count in self.skipped.items():
            names = self.files[kind]
            shown = _some(names, max_files)
            parts.append(f"{count} {PROBLEMS.get(kind, kind)} ({len(names)} file(s): {shown})")
        return (
            f"warning: skipped {self.n_skipped} line(s) of results under {self.input_dir}: "
            + "; ".join(parts)
            + ". The tables below leave them out."
        )

    def empty_runs_warning(self, max_files: int = 5) -> str | None:
        """One line naming the finished runs without any record (None when there is none)."""
        if not self.empty_done_runs:
            return None
        return (
            f"warning: {len(self.empty_done_runs)} finished run(s) have no valid record (empty or missing "
            f"{RESULTS_FILE}, or every line skipped): {_some(self.empty_done_runs, max_files)}. "
            "The tables below leave them out."
        )

    def settings_warning(self) -> str | None:
        """One line when runs trained with different numeric settings (precision, memory format,
        compile...) are tabulated together (None when all share one)."""
        if len(self.settings) < 2:
            return None
        counts = ", ".join(f"{name}: {count} record(s)" for name, count in sorted(self.settings.items()))
        return (f"warning: runs trained with different speed settings are tabulated together ({counts}); "
                "collect their sweeps from separate folders to compare them")

    def warnings(self, max_files: int = 5) -> list[str]:
        """Every warning, one line each (none when all went well)."""
        found = (self.warning(max_files), self.empty_runs_warning(max_files), self.settings_warning())
        return [w for w in found if w]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "input_dir": self.input_dir,
            "n_files": self.n_files,
            "n_records": self.n_records,
            "n_runs_not_done": self.n_runs_not_done,
            "n_runs_excluded": self.n_runs_excluded,
            "skipped": dict(self.skipped),
            "files": {kind: list(names) for kind, names in self.files.items()},
            "empty_done_runs": list(self.empty_done_runs),
            "settings": dict(self.settings),
        }


def _some(names: list[str], at_most: int) -> str:
    """`a, b, c and 4 more`: the first `at_most` names, then how many are not shown."""
    more = f" and {len(names) - at_most} more" if len(names) > at_most else ""
    return ", ".join(names[:at_most]) + more


def run_folders(input_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """(name, path) of the folders whose `results.jsonl` the collector reads: `input_dir` itself
    (name "."), then each sub-folder sorted by name (whether it holds a results file is not
    checked)."""
    root = os.fspath(input_dir)
    with os.scandir(root) as entries:
        names = sorted(entry.name for entry in entries if entry.is_dir())
    prefix = root if root.endswith(os.sep) else root + os.sep  # = os.path.join, for 10,000 names
    return [(".", root)] + [(name, prefix + name) for name in names]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: parsing builds millions of small objects, and
    the collections it triggers over them would take a good part of the loading time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _int_if_integral(values: pd.Series) -> pd.Series:
    array = values.to_numpy(dtype=float)
    if len(array) and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        return values.astype("int64")
    return values


def load_records(input_dir: str | os.PathLike, only_done: bool = False) -> tuple[pd.DataFrame, LoadReport]:
    """Read every run folder of a sweep into one DataFrame (one row per valid record).

    Columns: `run_dir` (folder name, "." for the sweep folder itself), `line` (1-based), `done`,
    `order` (reading order = row order), `dataset`, `algorithm` (these three categorical),
    `test_envs` (tuple), `n_test_envs`, `test_env0` / `test_env1` (first / second test env, -1 if
    none), `hparams_seed`, `trial_seed`, `environments` (tuple of names or None), `settings`
    (categorical: the numeric speed switches, "fp32" for DomainBed's and older runs), `step`,
    `n_envs`, and `env{i}_in_acc` / `env{i}_out_acc` (floats; NaN beyond a record's domains).
    Raises FileNotFoundError / NotADirectoryError when `input_dir` is not a folder.
    """
    root = os.fspath(input_dir)
    if not os.path.exists(root):
        raise FileNotFoundError(root)
    if not os.path.isdir(root):
        raise NotADirectoryError(root)
    with _gc_paused():
        return _load(root, only_done)


def _results_files(root: str, only_done: bool, report: LoadReport) -> Iterator[tuple[str, str, bool, bytes]]:
    """(run folder name, results file path, whether its run is done, its bytes) of each file to
    parse, in reading order; counts files, unfinished and excluded runs, unreadable files and
    finished runs without a results file in `report`."""
    results, done_file = os.sep + RESULTS_FILE, os.sep + DONE_FILE
    for name, folder in run_folders(root):
        path = folder + results
        done_path = folder + done_file
        try:
            data = read_regular(path, RESULTS_FILE)  # a FIFO or a device would block or never end
        except (FileNotFoundError, IsADirectoryError):
            if os.path.exists(done_path):  # a finished run without its results
                report.empty_done_runs.append(folder)
            continue  # else: not a run folder
        except (OSError, UserError):
            report.n_files += 1
            report.add_problem("unreadable", path)
            continue
        report.n_files += 1
        done = os.path.exists(done_path)
        # `done` wins over `diverged`, as in RunDir.state (and a finished sweep needs one stat per run)
        if not done and os.path.exists(folder + os.sep + DIVERGED_FILE):
            report.add_problem("diverged", path, max(1, data.count(b"\n")))
            continue
        report.n_runs_not_done += not done
        if only_done and not done:
            report.n_runs_excluded += 1
            continue
        yield name, path, done, data


def _load(root: str, only_done: bool) -> tuple[pd.DataFrame, LoadReport]:
    report = LoadReport(input_dir=root)
    all_records: list[dict] = []
    line_numbers: list[int] = []
    # per results file parsed: its run folder's name, whether it is done, how many records it gave
    names: list[str] = []
    done_flags: list[bool] = []
    counts: list[int] = []
    for name, path, done, data in _results_files(root, only_done, report):
        parsed, numbers, problems = parse_lines(data)
        for _, kind in problems:
            report.add_problem(kind, path)
        all_records.extend(parsed)
        line_numbers.extend(numbers)
        names.append(name)
        done_flags.append(done)
        counts.append(len(parsed))

    frame, valid = flatten_records(all_records)
    done_of_file = np.asarray(done_flags, dtype=bool)
    file_of_row = np.repeat(np.arange(len(names)), np.asarray(counts, dtype=np.int64))
    run_dir = pd.Categorical.from_codes(file_of_row, categories=pd.Index(names, dtype=object))
    frame.insert(0, "run_dir", run_dir)
    frame["settings"] = _file_settings(all_records, counts, file_of_row)
    frame.insert(1, "line", np.asarray(line_numbers, dtype=int))
    frame.insert(2, "done", done_of_file[file_of_row])
    for k in np.unique(file_of_row[~valid]):
        report.add_problem("missing_keys", _results_path(root, names[k]), int(np.sum(file_of_row[~valid] == k)))
    n_valid = np.bincount(file_of_row[valid], minlength=len(names))
    report.empty_done_runs += [
        root if names[k] == "." else os.path.join(root, names[k]) for k in np.flatnonzero((n_valid == 0) & done_of_file)
    ]
    frame = frame[valid].reset_index(drop=True)
    frame.insert(3, "order", np.arange(len(frame)))
    for column in ("hparams_seed", "trial_seed"):
        frame[column] = frame[column].astype("int64")
    for column in ("run_dir", "dataset", "algorithm"):
        frame[column] = frame[column].cat.remove_unused_categories()
    frame["step"] = _int_if_integral(frame["step"])
    frame["settings"] = frame["settings"].cat.remove_unused_categories()
    report.settings = {str(name): int(count) for name, count in frame["settings"].value_counts().items()}
    report.n_records = len(frame)
    return frame, report


def _file_settings(records: list[dict], counts: list[int], file_of_row: np.ndarray) -> pd.Categorical:
    """The `settings` column: `performance.describe` of each file's first record's args (a run's records
    share their args), "fp32" when it names no switch (DomainBed's runs, and ours at the defaults)."""
    firsts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)[:-1]]) if counts else np.zeros(0, np.int64)
    names = []
    for first, count in zip(firsts.tolist(), counts, strict=True):
        args = records[first].get("args") if count else None
        switched = type(args) is dict and ("precision" in args or "channels_last" in args or "compile" in args
                                           or "cudnn_benchmark" in args)  # the numeric switches, inlined: fast
        names.append(describe(args) if switched else "fp32")
    categories = sorted(set(names))
    code_of = {name: code for code, name in enumerate(categories)}
    codes = np.fromiter(map(code_of.__getitem__, names), np.int64, len(names))
    return pd.Categorical.from_codes(codes[file_of_row], categories=pd.Index(categories, dtype=object))


def _results_path(root: str, name: str) -> str:
    return os.path.join(root if name == "." else os.path.join(root, name), RESULTS_FILE)


def environment_names(records: pd.DataFrame, dataset: str) -> tuple[str, ...]:
    """Domain names of `dataset`: from its records' `args["environments"]`, else DomainBed's
    names, else `env0`, `env1`, ... (as many as its records have)."""
    rows = records[records["dataset"] == dataset]
    named = rows["environments"].dropna() if "environments" in rows else ()
    if len(named):
        return named.iat[0]
    if dataset in DOMAINBED_ENVIRONMENTS:
        return DOMAINBED_ENVIRONMENTS[dataset]
    n_envs = int(rows["n_envs"].max()) if len(rows) else 0
    return tuple(f"env{i}" for i in range(n_envs))


def acc_columns(records: pd.DataFrame, split: str) -> list[str]:
    """Names of the `env{i}_{split}_acc` columns of a records frame, by domain index."""
    found = [(int(m.group(1)), c) for c in records.columns if (m := _ACC_KEY.match(str(c))) and m.group(2) == split]
    return [c for _, c in sorted(found)]
