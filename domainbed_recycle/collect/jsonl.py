"""Decode the bytes of a `results.jsonl` (one JSON object a line) into records, keeping every
valid line whatever surrounds it (a killed run's truncated last line, binary garbage after a
crash, a line of something else).

The decoder is orjson when it is installed (`pip install domainbed-recycle[fast]`: 3-4x faster
on a large sweep), else the standard library's `json`. Both give the same records: a line orjson
refuses (`NaN`, as `json.dumps` writes a diverged loss; integers beyond 64 bits) is decoded again
by `json`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

try:  # optional: the `fast` extra
    import orjson

    _fast_loads: Callable[[bytes], Any] | None = orjson.loads
    _FastError: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads, _FastError = None, ValueError

#: Name of the JSON decoder in use ("orjson" or "json").
DECODER = "orjson" if _fast_loads is not None else "json"


def _loads_std(data: bytes) -> Any:
    """`json.loads` of UTF-8 bytes (UnicodeDecodeError is a ValueError)."""
    return json.loads(data.decode("utf-8"))


def loads(data: bytes) -> Any:
    """One JSON document from UTF-8 bytes: the fast decoder, then `json` for what it refuses;
    ValueError when neither can."""
    if _fast_loads is not None:
        try:
            return _fast_loads(data)
        except _FastError:
            pass
    return _loads_std(data)


def _whole_file(data: bytes) -> list[dict] | None:
    """All records of a file of complete, non-blank lines of JSON objects, decoded the fastest
    way (the common case); None when the file is not one."""
    if not data.endswith(b"\n") or b"\n\n" in data or data.startswith(b"\n"):
        return None
    try:
        if _fast_loads is not None:  # orjson: a call per line beats one call on a joined array
            parsed = list(map(_fast_loads, data[:-1].split(b"\n")))
        else:  # json: one call for the whole file, its Python-level overhead is per call
            body = data[:-1].decode("utf-8")
            parsed = json.loads("[" + body.replace("\n", ",") + "]")
            # a line holding two values ("1, 2") would shift the count: then read line by line
            if len(parsed) != body.count("\n") + 1:
                return None
    except ValueError:
        return None
    if not all(type(p) is dict for p in parsed):
        return None
    return parsed


def parse_lines(data: bytes | str) -> tuple[list[dict], list[int], list[tuple[int, str]]]:
    """Parse the contents of a `results.jsonl`.

    Returns (records, their 1-based line numbers, problems as (line number, kind)). Blank lines
    are ignored. Kinds: `not_text` (a line that is not UTF-8 or holds NUL bytes: binary garbage),
    `truncated_line` (a last line without its newline that does not parse), `bad_json` (any
    other line that is not one JSON object). Valid lines are kept whatever comes before or after them.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    parsed = _whole_file(data)
    if parsed is not None:
        return parsed, list(range(1, len(parsed) + 1)), []
    lines = data.split(b"\n")
    complete = data.endswith(b"\n")
    records, numbers, problems = [], [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = loads(line)
        except ValueError:
            if _is_binary(line):
                kind = "not_text"
            else:
                kind = "truncated_line" if number == len(lines) and not complete else "bad_json"
            problems.append((number, kind))
            continue
        if type(value) is dict:
            records.append(value)
            numbers.append(number)
        else:
            problems.append((number, "bad_json"))
    return records, numbers, problems


def _is_binary(line: bytes) -> bool:
    """Whether `line` is not UTF-8 text or holds NUL bytes (what a crash leaves in a file)."""
    if b"\x00" in line:
        return True
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
