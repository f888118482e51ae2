"""Small pure helpers shared across modules (seeding, hashing)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def seed_hash(*args: Any) -> int:
    """Derive a 31-bit integer seed from any JSON-able arguments (stable across runs and machines)."""
    text = json.dumps(args, sort_keys=True, default=str)
    return int(hashlib.md5(text.encode("utf-8")).hexdigest(), 16) % (2**31)


def args_hash(args: dict[str, Any]) -> str:
    """Stable hex id of a job's arguments (the name of its run folder)."""
    text = json.dumps(args, sort_keys=True, default=str)
    return hashlib.md5(text.encode("utf-8")).hexdigest()
