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
from itertools import accumulate
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


def _clean(data: bytes) -> bool:
    """Whether `data` can be one of the files of `_whole_files`: complete, non-blank lines."""
    return data.endswith(b"\n") and b"\n\n" not in data and not data.startswith(b"\n")


def _whole_files(datas: list[bytes]) -> list[list[dict]] | None:
    """The records of each of `datas` (each `_clean`) in one decoder call (the common case,
    several times faster than a call per line or per file); None unless every line of every
    file is one JSON object."""
    bodies = [data[:-1] for data in datas]
    try:
        parsed = loads(b"[" + b",".join(bodies).replace(b"\n", b",") + b"]")
    except ValueError:
        return None
    counts = [body.count(b"\n") + 1 for body in bodies]
    # a line holding two values ("1, 2") would shift the count: then read line by line
    if len(parsed) != sum(counts) or not all(type(p) is dict for p in parsed):
        return None
    ends = list(accumulate(counts))
    return [parsed[end - count : end] for end, count in zip(ends, counts, strict=True)]


def parse_files(datas: list[bytes]) -> list[tuple[list[dict], list[int], list[tuple[int, str]]]]:
    """`parse_lines` of each of `datas`, decoding all clean files in one call (the caller keeps
    `datas` to a few MB: the decoder holds a copy)."""
    out: list = [None] * len(datas)
    clean = [k for k, data in enumerate(datas) if _clean(data)]
    parsed = _whole_files([datas[k] for k in clean]) if clean else []
    if parsed is None:  # some file has a bad line: find it file by file
        parsed = [None] * len(clean)
    for k, records in zip(clean, parsed, strict=True):
        if records is not None:
            out[k] = (records, list(range(1, len(records) + 1)), [])
    return [parse_lines(data) if result is None else result for data, result in zip(datas, out, strict=True)]


def parse_lines(data: bytes | str) -> tuple[list[dict], list[int], list[tuple[int, str]]]:
    """Parse the contents of a `results.jsonl`.

    Returns (records, their 1-based line numbers, problems as (line number, kind)). Blank lines
    are ignored. Kinds: `not_text` (a line that is not UTF-8 or holds NUL bytes: binary garbage),
    `truncated_line` (a last line without its newline that does not parse), `bad_json` (any
    other line that is not one JSON object). Valid lines are kept whatever comes before or after them.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    parsed = _whole_files([data]) if _clean(data) else None
    if parsed is not None:
        return parsed[0], list(range(1, len(parsed[0]) + 1)), []
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
