"""Read a sweep folder (run folders written by DomainBed or by this harness) into one DataFrame.

A sweep folder holds one folder per run; each has `results.jsonl` (one JSON record a line) and,
once complete, `done`. Like DomainBed's collector, every `results.jsonl` one level down is read,
whether or not the run is done (`only_done=True` skips unfinished runs); a `results.jsonl` in
the folder itself is read too. Unlike DomainBed's, a broken line (a killed run's truncated last
line, a line that is not JSON, a record without the keys the collector needs) does not stop the
collection: it is skipped and counted, with its file, in a `LoadReport`.

No torch here: the collector must start fast.
"""

from __future__ import annotations

import gc
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from operator import contains, itemgetter
from typing import Any

import numpy as np
import pandas as pd

from domainbed_recycle import rundir

RESULTS_FILE = rundir.RESULTS
DONE_FILE = rundir.DONE
DIVERGED_FILE = rundir.DIVERGED

#: Domain names of DomainBed's datasets (its `ENVIRONMENTS`), so that DomainBed sweeps can be
#: tabulated without importing torch. Our own records carry `args["environments"]` instead.
DOMAINBED_ENVIRONMENTS: dict[str, tuple[str, ...]] = {
    "ColoredMNIST": ("+90%", "+80%", "-90%"),
    "RotatedMNIST": ("0", "15", "30", "45", "60", "75"),
    "VLCS": ("C", "L", "S", "V"),
    "PACS": ("A", "C", "P", "S"),
    "OfficeHome": ("A", "C", "P", "R"),
    "TerraIncognita": ("L100", "L38", "L43", "L46"),
    "DomainNet": ("clip", "info", "paint", "quick", "real", "sketch"),
}

#: Keys of `args` every record must have.
REQUIRED_ARGS = ("dataset", "algorithm", "test_envs", "hparams_seed", "trial_seed")

#: Problem kind -> how the warning describes it.
PROBLEMS: dict[str, str] = {
    "truncated_line": "truncated last line (run killed while writing?)",
    "bad_json": "line that is not a JSON object",
    "missing_keys": "record missing required keys or with invalid values",
    "unreadable": "file that could not be read",
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
            shown = ", ".join(names[:max_files])
            more = f" and {len(names) - max_files} more" if len(names) > max_files else ""
            parts.append(f"{count} {PROBLEMS.get(kind, kind)} ({len(names)} file(s): {shown}{more})")
        return (
            f"warning: skipped {self.n_skipped} line(s) of results under {self.input_dir}: "
            + "; ".join(parts)
            + ". The tables below leave them out."
        )

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
        }


def run_folders(input_dir: str | os.PathLike) -> list[str]:
    """The folders whose `results.jsonl` the collector reads: `input_dir` itself, then each
    sub-folder sorted by name (paths as strings; whether they hold a results file is not checked)."""
    root = os.fspath(input_dir)
    with os.scandir(root) as entries:
        names = sorted(entry.name for entry in entries if entry.is_dir())
    return [root] + [os.path.join(root, name) for name in names]


def parse_lines(text: str) -> tuple[list[dict], list[int], list[tuple[int, str]]]:
    """Parse the text of a `results.jsonl`.

    Returns (records, their 1-based line numbers, problems as (line number, kind)). Blank lines
    are ignored; a last line without its newline that does not parse is `truncated_line`.
    """
    if text.endswith("\n") and "\n\n" not in text and not text.startswith("\n"):
        body = text[:-1]
        try:  # fast path: the whole file in one call
            parsed = json.loads("[" + body.replace("\n", ",") + "]")
            if len(parsed) == body.count("\n") + 1 and all(type(p) is dict for p in parsed):
                return parsed, list(range(1, len(parsed) + 1)), []
        except ValueError:
            pass
    lines = text.split("\n")
    complete = text.endswith("\n")
    records, numbers, problems = [], [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            truncated = number == len(lines) and not complete
            problems.append((number, "truncated_line" if truncated else "bad_json"))
            continue
        if isinstance(value, dict):
            records.append(value)
            numbers.append(number)
        else:
            problems.append((number, "bad_json"))
    return records, numbers, problems


def _valid_test_envs(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, tuple) or not value:
        return None
    if not all(type(v) is int and v >= 0 for v in value):
        return None
    return value


def _valid_names(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, tuple) and value and all(type(v) is str for v in value):
        return value
    return None


def _tuples(values: list[Any], check: Callable[[Any], Any]) -> list[Any]:
    """Lists turned into tuples and checked with `check` (once per distinct value); else None."""
    as_tuples = [tuple(v) if type(v) in (list, tuple) else None for v in values]
    try:
        verdicts = {v: check(v) for v in set(as_tuples)}
    except TypeError:  # unhashable items (nested lists, dicts): check each one
        return [check(v) for v in as_tuples]
    return list(map(verdicts.__getitem__, as_tuples))


def _numbers(values: list[Any]) -> np.ndarray:
    """Floats, NaN where a value is missing or not a number."""
    try:
        return np.array(values, dtype=float)
    except (TypeError, ValueError):
        return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)


def _columns(dicts: list[dict], keys: list[str]) -> list[list[Any]]:
    """`[[d.get(key) for d in dicts] for key in keys]`, in one pass over `dicts` when every dict
    has every key (the usual case: it is several times faster on a large sweep)."""
    if not keys:
        return []
    try:
        rows = list(map(itemgetter(*keys), dicts))
    except (KeyError, TypeError):
        return [[d.get(key) if type(d) is dict else None for d in dicts] for key in keys]
    if len(keys) == 1:
        return [rows]
    if not rows:
        return [[] for _ in keys]
    return [list(column) for column in zip(*rows, strict=True)]


def _numeric_matrix(dicts: list[dict], keys: list[str]) -> np.ndarray:
    """(len(dicts), len(keys)) floats, NaN where a key is missing or not a number."""
    if not keys:
        return np.empty((len(dicts), 0))
    try:
        return np.array(list(map(itemgetter(*keys), dicts)), dtype=float).reshape(len(dicts), len(keys))
    except (KeyError, TypeError, ValueError):
        return np.column_stack([_numbers([d.get(key) for d in dicts]) for key in keys])


def _n_acc_domains(records: list[dict]) -> int:
    """1 + the largest i such that some record has `env{i}_in_acc` or `env{i}_out_acc`
    (assuming no gaps)."""
    width = 0
    while any(map(contains, records, repeat(f"env{width}_out_acc"))) or any(
        map(contains, records, repeat(f"env{width}_in_acc"))
    ):
        width += 1
    return width


def flatten_records(records: list[dict]) -> tuple[pd.DataFrame, np.ndarray]:
    """Flatten raw records into the collector's columns.

    Returns (frame, valid) where `valid[k]` says whether record k has every required key with a
    valid value: `step`; `args` with `dataset`, `algorithm`, `test_envs` (non-empty list of
    domain indices), `hparams_seed`, `trial_seed`; and `env{i}_in_acc`, `env{i}_out_acc` for every
    domain i. The number of domains is `len(args["environments"])` when the record has it, else
    the count of DomainBed's dataset, else the number of consecutive `env{i}_out_acc` keys.
    """
    n = len(records)
    (args,) = _columns(records, ["args"])
    args = [a if type(a) is dict else {} for a in args]
    datasets, algorithms, test_envs, hparams_seeds, trial_seeds = _columns(args, list(REQUIRED_ARGS))
    datasets = [d if type(d) is str and d else None for d in datasets]
    algorithms = [d if type(d) is str and d else None for d in algorithms]
    hparams_seeds = [v if type(v) is int else None for v in hparams_seeds]
    trial_seeds = [v if type(v) is int else None for v in trial_seeds]
    test_envs = _tuples(test_envs, _valid_test_envs)
    environments = _tuples([a.get("environments") for a in args], _valid_names)

    width = _n_acc_domains(records)
    acc_keys = [f"env{i}_{split}_acc" for i in range(width) for split in ("in", "out")]
    numbers = _numeric_matrix(records, ["step", *acc_keys])
    step, acc_in, acc_out = numbers[:, 0], numbers[:, 1::2], numbers[:, 2::2]

    consecutive = np.cumprod(~np.isnan(acc_out), axis=1).sum(axis=1) if width else np.zeros(n, int)
    known = np.array([len(DOMAINBED_ENVIRONMENTS.get(d, ())) for d in datasets], dtype=int)
    named = np.array([len(e) if e else 0 for e in environments], dtype=int)
    n_envs = np.where(named > 0, named, np.where(known > 0, known, consecutive)).astype(int)
    shape = {
        t: (len(t), max(t), t[0], t[1] if len(t) > 1 else -1) if t else (0, -1, -1, -1)
        for t in set(test_envs)
    }
    n_test_envs, max_test_env, test_env0, test_env1 = (
        np.array(list(map(shape.__getitem__, test_envs)), dtype=np.int64).reshape(n, 4).T
    )

    needed = np.arange(width)[None, :] < n_envs[:, None]
    accs_ok = (
        ~((np.isnan(acc_in) | np.isnan(acc_out)) & needed).any(axis=1) & (n_envs > 0) & (n_envs <= width)
    )
    out = pd.DataFrame(
        {
            "dataset": pd.Series(datasets, dtype=object),
            "algorithm": pd.Series(algorithms, dtype=object),
            "test_envs": pd.Series(test_envs, dtype=object),
            "hparams_seed": pd.Series(hparams_seeds, dtype=object),
            "trial_seed": pd.Series(trial_seeds, dtype=object),
            "environments": pd.Series(environments, dtype=object),
            "n_test_envs": n_test_envs,
            "test_env0": test_env0,
            "test_env1": test_env1,
            "step": step,
            "n_envs": n_envs,
        }
    )
    present = out[["dataset", "algorithm", "test_envs", "hparams_seed", "trial_seed"]].notna().all(axis=1)
    valid = present.to_numpy() & ~np.isnan(step) & accs_ok & (max_test_env < n_envs)
    acc_in = np.where(needed, acc_in, np.nan)
    acc_out = np.where(needed, acc_out, np.nan)
    accs = {}
    for i in range(width):
        accs[f"env{i}_in_acc"] = acc_in[:, i]
        accs[f"env{i}_out_acc"] = acc_out[:, i]
    return pd.concat([out, pd.DataFrame(accs, index=out.index)], axis=1), valid


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
    none), `hparams_seed`, `trial_seed`, `environments` (tuple of names or None), `step`,
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


def _load(root: str, only_done: bool) -> tuple[pd.DataFrame, LoadReport]:
    report = LoadReport(input_dir=root)
    all_records: list[dict] = []
    run_dirs: list[str] = []
    line_numbers: list[int] = []
    done_flags: list[bool] = []
    for folder in run_folders(root):
        path = os.path.join(folder, RESULTS_FILE)
        try:
            with open(path, "rb") as file:
                data = file.read()
        except (FileNotFoundError, IsADirectoryError):
            continue  # not a run folder
        except OSError:
            report.n_files += 1
            report.add_problem("unreadable", path)
            continue
        report.n_files += 1
        if os.path.exists(os.path.join(folder, DIVERGED_FILE)):
            report.add_problem("diverged", path, max(1, len(data.splitlines())))
            continue
        done = os.path.exists(os.path.join(folder, DONE_FILE))
        report.n_runs_not_done += not done
        if only_done and not done:
            report.n_runs_excluded += 1
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            report.add_problem("unreadable", path)
            continue
        parsed, numbers, problems = parse_lines(text)
        for _, kind in problems:
            report.add_problem(kind, path)
        all_records.extend(parsed)
        line_numbers.extend(numbers)
        run_dir = "." if folder == root else os.path.basename(folder)
        run_dirs.extend([run_dir] * len(parsed))
        done_flags.extend([done] * len(parsed))

    frame, valid = flatten_records(all_records)
    frame.insert(0, "run_dir", pd.Series(run_dirs, dtype=object))
    frame.insert(1, "line", np.asarray(line_numbers, dtype=int))
    frame.insert(2, "done", np.asarray(done_flags, dtype=bool))
    for k in np.flatnonzero(~valid):
        folder = root if run_dirs[k] == "." else os.path.join(root, run_dirs[k])
        report.add_problem("missing_keys", os.path.join(folder, RESULTS_FILE))
    frame = frame[valid].reset_index(drop=True)
    frame.insert(3, "order", np.arange(len(frame)))
    for column in ("hparams_seed", "trial_seed"):
        frame[column] = frame[column].astype("int64")
    for column in ("run_dir", "dataset", "algorithm"):
        frame[column] = frame[column].astype("category")
    frame["step"] = _int_if_integral(frame["step"])
    report.n_records = len(frame)
    return frame, report


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
    found = [
        (int(m.group(1)), c) for c in records.columns if (m := _ACC_KEY.match(str(c))) and m.group(2) == split
    ]
    return [c for _, c in sorted(found)]
