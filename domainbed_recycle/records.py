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

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS_FILE = "results.jsonl"
DONE_FILE = "done"

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


def find_results_files(input_dir: str | os.PathLike) -> list[Path]:
    """`results.jsonl` of the folder itself and of each sub-folder, sub-folders sorted by name."""
    root = Path(input_dir)
    found = [root / RESULTS_FILE] if (root / RESULTS_FILE).is_file() else []
    with os.scandir(root) as entries:
        names = sorted(entry.name for entry in entries if entry.is_dir())
    for name in names:
        path = root / name / RESULTS_FILE
        if path.is_file():
            found.append(path)
    return found


def parse_lines(text: str) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """Parse the text of a `results.jsonl`.

    Returns (records as (line number, dict)), (problems as (line number, kind)). Blank lines are
    ignored; a last line without its newline that does not parse is `truncated_line`.
    """
    lines = text.split("\n")
    complete = text.endswith("\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    try:  # fast path: the whole file in one call
        parsed = json.loads("[" + ",".join(line for _, line in numbered) + "]")
        if len(parsed) == len(numbered) and all(isinstance(p, dict) for p in parsed):
            return [(n, p) for (n, _), p in zip(numbered, parsed, strict=True)], []
    except ValueError:
        pass
    records, problems = [], []
    last = len(lines)
    for number, line in numbered:
        try:
            value = json.loads(line)
        except ValueError:
            truncated = number == last and not complete
            problems.append((number, "truncated_line" if truncated else "bad_json"))
            continue
        if isinstance(value, dict):
            records.append((number, value))
        else:
            problems.append((number, "bad_json"))
    return records, problems


def _valid_test_envs(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, (list, tuple)) or not value:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return None
    return tuple(value)


def _valid_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _valid_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _valid_names(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _acc_matrix(frame: pd.DataFrame, split: str, width: int) -> np.ndarray:
    """(n_records, width) float matrix of `env{i}_{split}_acc`, NaN where absent or not a number."""
    columns = []
    for i in range(width):
        key = f"env{i}_{split}_acc"
        if key in frame:
            columns.append(pd.to_numeric(frame[key], errors="coerce").to_numpy(dtype=float))
        else:
            columns.append(np.full(len(frame), np.nan))
    return np.column_stack(columns) if columns else np.empty((len(frame), 0))


def flatten_records(records: list[dict]) -> tuple[pd.DataFrame, np.ndarray]:
    """Flatten raw records into the collector's columns.

    Returns (frame, valid) where `valid[k]` says whether record k has every required key with a
    valid value: `step`; `args` with `dataset`, `algorithm`, `test_envs` (non-empty list of
    domain indices), `hparams_seed`, `trial_seed`; and `env{i}_in_acc`, `env{i}_out_acc` for every
    domain i. The number of domains is `len(args["environments"])` when the record has it, else
    the count of DomainBed's dataset, else the number of consecutive `env{i}_out_acc` keys.
    """
    raw = pd.DataFrame.from_records(records) if records else pd.DataFrame(index=range(0))
    n = len(raw)
    args = [a if isinstance(a, dict) else {} for a in raw.get("args", pd.Series([None] * n))]
    out = pd.DataFrame(
        {
            "dataset": [_valid_str(a.get("dataset")) for a in args],
            "algorithm": [_valid_str(a.get("algorithm")) for a in args],
            "test_envs": [_valid_test_envs(a.get("test_envs")) for a in args],
            "hparams_seed": [_valid_int(a.get("hparams_seed")) for a in args],
            "trial_seed": [_valid_int(a.get("trial_seed")) for a in args],
            "environments": [_valid_names(a.get("environments")) for a in args],
        },
        index=raw.index,
    )
    step = (
        pd.to_numeric(raw["step"], errors="coerce") if "step" in raw else pd.Series(np.nan, index=raw.index)
    )
    indices = [int(m.group(1)) for m in map(_ACC_KEY.match, raw.columns) if m]
    width = max(indices) + 1 if indices else 0
    acc_in = _acc_matrix(raw, "in", width)
    acc_out = _acc_matrix(raw, "out", width)

    consecutive = np.cumprod(~np.isnan(acc_out), axis=1).sum(axis=1) if width else np.zeros(n, int)
    known = out["dataset"].map(lambda d: len(DOMAINBED_ENVIRONMENTS.get(d, ())))
    named = out["environments"].map(lambda e: len(e) if e else 0)
    n_envs = np.where(named > 0, named, np.where(known > 0, known, consecutive)).astype(int)

    columns = np.arange(width)
    needed = columns[None, :] < n_envs[:, None]
    accs_ok = ~((np.isnan(acc_in) | np.isnan(acc_out)) & needed).any(axis=1) & (n_envs > 0)
    accs_ok &= n_envs <= width
    max_test_env = out["test_envs"].map(lambda t: max(t) if t else -1).to_numpy()

    valid = (
        out[["dataset", "algorithm", "test_envs", "hparams_seed", "trial_seed"]]
        .notna()
        .all(axis=1)
        .to_numpy()
        & step.notna().to_numpy()
        & accs_ok
        & (max_test_env < n_envs)
    )
    out["n_test_envs"] = out["test_envs"].map(lambda t: len(t) if t else 0)
    out["step"] = step
    out["n_envs"] = n_envs
    acc_in = np.where(needed, acc_in, np.nan)
    acc_out = np.where(needed, acc_out, np.nan)
    for i in range(width):
        out[f"env{i}_in_acc"] = acc_in[:, i]
        out[f"env{i}_out_acc"] = acc_out[:, i]
    return out, valid


def load_records(input_dir: str | os.PathLike, only_done: bool = False) -> tuple[pd.DataFrame, LoadReport]:
    """Read every run folder of a sweep into one DataFrame (one row per valid record).

    Columns: `run_dir` (folder name, "." for the sweep folder itself), `line` (1-based), `done`,
    `order` (reading order), `dataset`, `algorithm`, `test_envs` (tuple), `n_test_envs`,
    `hparams_seed`, `trial_seed`, `environments` (tuple of names or None), `step`, `n_envs`, and
    `env{i}_in_acc` / `env{i}_out_acc` (floats; NaN beyond a record's domains). Raises
    FileNotFoundError / NotADirectoryError when `input_dir` is not a folder.
    """
    root = Path(input_dir)
    if not root.exists():
        raise FileNotFoundError(str(root))
    if not root.is_dir():
        raise NotADirectoryError(str(root))
    report = LoadReport(input_dir=str(root))
    all_records: list[dict] = []
    run_dirs: list[str] = []
    line_numbers: list[int] = []
    done_flags: list[bool] = []
    for path in find_results_files(root):
        report.n_files += 1
        run_dir = "." if path.parent == root else path.parent.name
        done = (path.parent / DONE_FILE).exists()
        report.n_runs_not_done += not done
        if only_done and not done:
            report.n_runs_excluded += 1
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            report.add_problem("unreadable", str(path))
            continue
        parsed, problems = parse_lines(text)
        for _, kind in problems:
            report.add_problem(kind, str(path))
        all_records.extend(record for _, record in parsed)
        line_numbers.extend(number for number, _ in parsed)
        run_dirs.extend([run_dir] * len(parsed))
        done_flags.extend([done] * len(parsed))

    frame, valid = flatten_records(all_records)
    frame.insert(0, "run_dir", run_dirs)
    frame.insert(1, "line", np.asarray(line_numbers, dtype=int))
    frame.insert(2, "done", np.asarray(done_flags, dtype=bool))
    frame.insert(3, "order", np.arange(len(frame)))
    for k in np.flatnonzero(~valid):
        report.add_problem("missing_keys", str(root / frame["run_dir"].iat[k] / RESULTS_FILE))
    frame = frame[valid].reset_index(drop=True)
    frame["order"] = np.arange(len(frame))
    frame["hparams_seed"] = frame["hparams_seed"].astype("int64")
    frame["trial_seed"] = frame["trial_seed"].astype("int64")
    report.n_records = len(frame)
    return frame, report


def environment_names(records: pd.DataFrame, dataset: str) -> tuple[str, ...]:
    """Domain names of `dataset`: from its records' `args["environments"]`, else DomainBed's
    names, else `env0`, `env1`, ... (as many as its records have)."""
    rows = records[records["dataset"] == dataset]
    named = [e for e in rows["environments"] if e] if "environments" in rows else []
    if named:
        return named[0]
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
