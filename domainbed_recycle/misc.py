"""Small pure helpers shared across modules (seeding, hashing)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def seed_hash(*args: Any) -> int:
    """Derive a 31-bit integer seed from any JSON-able arguments (stable across runs and machines)."""
    text = json.dumps(args, sort_keys=True, default=str)
    return int(hashlib.md5(text.encode("utf-8")).hexdigest(), 16) % (2**31)


def args_hash(args: dict[str, Any]) -> str:
    """Stable hex id of a job's arguments (the name of its run folder)."""
    text = json.dumps(args, sort_keys=True, default=str)
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
