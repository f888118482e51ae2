"""Resume state: what a killed run needs to continue exactly where its last save left it.

The state is one nested dict of tensors, numbers, strings, None, lists and dicts, written with
`torch.save` to a temp file then renamed (atomic), and read with `torch.load(weights_only=True)`,
which refuses anything else: no pickled code is ever run. RNG states are converted to that form
(numpy's key array becomes a tensor, Python's tuple a list).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainbed_recycle.errors import UserError

FORMAT = 1  # bumped when the layout changes (an old state is then refused, and the run restarts)


def numpy_rng_state(rng: np.random.RandomState | None = None) -> dict[str, Any]:
    """State of `rng` (default: numpy's global generator) as tensors and numbers."""
    name, keys, pos, has_gauss, gauss = (rng.get_state() if rng is not None else np.random.get_state())
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def set_numpy_rng_state(state: dict[str, Any], rng: np.random.RandomState | None = None) -> None:
    value = (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
             state["gauss"])
    (rng.set_state if rng is not None else np.random.set_state)(value)


def global_rng_state() -> dict[str, Any]:
    """torch (CPU and, if present, CUDA), numpy and Python `random` global states."""
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(),
             "python": {"version": version, "internal": list(internal), "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    set_numpy_rng_state(state["numpy"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (synced temp file in the same folder, then rename); a failed
    write is an OSError or one UserError line naming `path`, and leaves no temp file."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as handle:
            try:
                torch.save({"format": FORMAT, **state}, handle)
            except RuntimeError as error:  # torch's writer wraps the system's error (no space left...)
                raise UserError(f"cannot write {path}: {(str(error).splitlines() or ['write failed'])[0]}") from None
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path) -> dict[str, Any]:
    """The state saved by `save` (tensors on the CPU); UserError naming the file if it cannot be used."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or holding something other than data
        raise UserError(f"{path}: unreadable resume state ({type(error).__name__}); delete it to "
                        f"restart the run from scratch") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: resume state of another format; delete it to restart the run from scratch")
    return state
