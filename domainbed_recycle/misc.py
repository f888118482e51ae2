"""Small pure helpers shared across modules (seeding, hashing, per-dataset values)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any


def seed_hash(*args: Any) -> int:
    """Derive a 31-bit integer seed from any JSON-able arguments (stable across runs and machines)."""
    text = json.dumps(args, sort_keys=True, default=str)
    return int(hashlib.md5(text.encode("utf-8")).hexdigest(), 16) % (2**31)


def domainbed_seed_hash(*args: Any) -> int:
    """DomainBed's `misc.seed_hash`: md5 of `str(args)`, modulo 2**31.

    Not the same numbers as `seed_hash` (which hashes JSON): runs of DomainBed's protocol (its datasets,
    the "mnist" hyper-parameter profile, sweeps of its datasets) use this one, so that their splits,
    random hyper-parameters and job seeds are DomainBed's for the same arguments. The built-in CPU
    benchmark keeps `seed_hash`, on which its published tables were made.
    """
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2**31)


def args_hash(args: dict[str, Any]) -> str:
    """Stable hex id of a job's arguments (the name of its run folder)."""
    text = json.dumps(args, sort_keys=True, default=str)
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def per_dataset(value: Any, dataset: str) -> Any:
    """A spec value given once, or as a table {dataset: value}: the value for `dataset` (a table may name
    a dataset with its options, "PACS?resolution=96", or without them, "PACS"); None if it lacks it."""
    if not isinstance(value, Mapping):
        return value
    return value[dataset] if dataset in value else value.get(dataset.partition("?")[0])


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
