"""Speed switches of a training run: their names, defaults and checks (torch-free, so the CLI and the
spec readers use them without importing torch).

Two kinds:
  - numeric switches change the arithmetic, so they are part of what a run computes (its id and its
    stored arguments): `precision` (fp32, or bf16/fp16 autocast; fp16 with a gradient scaler),
    `channels_last` (NHWC memory format), `compile` (torch.compile), `cudnn_benchmark` (cuDNN picks its
    fastest, non-deterministic, convolution algorithms);
  - loader switches only say how batches reach the model (`loader_workers`, `pin_memory`,
    `persistent_workers`, `prefetch_factor`): placement, like `threads`. Batches are drawn from keys,
    not from worker state (see `datasets.loading`), so they never change a number.

Every default is DomainBed's behaviour (fp32, NCHW, eager, deterministic cuDNN; loader settings None:
sized to the node). A switch at its default is left out of a run's stored arguments and of job ids, so
runs made before the switches existed keep their ids and their records; a run's arguments name every
switch it changed, so runs with different settings never share a job id or look alike in a record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from domainbed_recycle.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")

NUMERIC_SWITCHES: dict[str, Any] = {
    "precision": "fp32",
    "channels_last": False,
    "compile": False,
    "cudnn_benchmark": False,
}
LOADER_SWITCHES: dict[str, Any] = {
    "loader_workers": None,  # None: sized to the node (see training.resolve_loader)
    "pin_memory": None,  # None: on with a GPU
    "persistent_workers": None,  # None: on when there are workers
    "prefetch_factor": None,  # None: torch's (2 batches per worker)
}
DEFAULTS: dict[str, Any] = NUMERIC_SWITCHES | LOADER_SWITCHES

HELP = {
    "precision": "fp32 (default, DomainBed's), bf16 (autocast) or fp16 (autocast + gradient scaler; GPU only)",
    "channels_last": "channels-last (NHWC) memory format for the model and its inputs",
    "compile": "torch.compile the network (needs a C++ compiler on CPU, triton on GPU)",
    "cudnn_benchmark": "let cuDNN pick its fastest convolution algorithms (GPU; not bit-reproducible)",
    "loader_workers": "batch-loading worker processes (default: sized to the node; 0: in the training process)",
    "pin_memory": "page-locked host batches for asynchronous copies to the GPU (default: on with a GPU)",
    "persistent_workers": "keep loader workers alive between evaluations (default: on with workers)",
    "prefetch_factor": "batches each worker prepares ahead (default: torch's, 2)",
}


def is_default(key: str, value: Any) -> bool:
    """Whether `key` is a switch and `value` its default (such a pair is left out of ids and args)."""
    return key in DEFAULTS and type(value) is type(DEFAULTS[key]) and value == DEFAULTS[key]


def drop_defaults(args: Mapping[str, Any]) -> dict[str, Any]:
    """`args` without the switches at their default value."""
    return {key: value for key, value in args.items() if not is_default(key, value)}


def problems(values: Mapping[str, Any]) -> list[str]:
    """What is wrong with a table of switches (unknown names, values of a wrong type or range)."""
    found = []
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        found.append(f"unknown switch(es) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    precision = values.get("precision", "fp32")
    if precision not in PRECISIONS:
        found.append(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    for key in ("channels_last", "compile", "cudnn_benchmark"):
        if key in values and not isinstance(values[key], bool):
            found.append(f"{key} must be true or false, got {values[key]!r}")
    for key in ("pin_memory", "persistent_workers"):
        if values.get(key) is not None and not isinstance(values[key], bool):
            found.append(f"{key} must be true or false, got {values[key]!r}")
    for key, low in (("loader_workers", 0), ("prefetch_factor", 1)):
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            found.append(f"{key} must be an integer >= {low}, got {value!r}")
    return found


def check(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`values` if it is a valid table of switches (a mapping); else UserError naming `where`."""
    if not isinstance(values, Mapping):
        raise UserError(f"{where}: must be a table of switches ({', '.join(DEFAULTS)}), got {values!r}")
    found = problems(values)
    if found:
        raise UserError(f"{where}: " + "; ".join(found))
    return dict(values)


def describe(values: Mapping[str, Any]) -> str:
    """Short name of the numeric settings, e.g. 'fp32' or 'bf16+channels_last+compile'."""
    parts = [str(values.get("precision") or "fp32")]
    parts += [key for key in ("channels_last", "compile", "cudnn_benchmark") if values.get(key)]
    return "+".join(parts)
