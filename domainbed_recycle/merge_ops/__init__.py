"""Merging operators, one file each, found by name in `MERGE_OPS` (see `base` for what a file declares).

Importing this package registers every operator module in this folder; `operators()` also imports the
user's modules named in $DRECYCLE_PLUGINS, so an operator written outside the package (one file,
README "Adding a merging operator") is registered too.
"""

from __future__ import annotations

import importlib
import pkgutil

from domainbed_recycle.merge_ops.base import (
    MERGE_OPS,
    SEED,
    MergeOp,
    Param,
    markdown_table,
    merge_operator,
    record_point,
    strategy_grid,
    weight_param,
)
from domainbed_recycle.registry import import_plugins

__all__ = [
    "MERGE_OPS", "SEED", "MergeOp", "Param", "get", "markdown_table", "merge_operator", "operators", "record_point",
    "strategy_grid", "weight_param",
]

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):  # one file per operator: no list to edit
    importlib.import_module(f"{__name__}.{_module}")


def operators() -> list[MergeOp]:
    """Every registered operator (built-in and $DRECYCLE_PLUGINS), by name."""
    import_plugins()
    return [MERGE_OPS.get(name) for name in MERGE_OPS.names()]


def get(name: str) -> MergeOp:
    """The operator `name` (UserError listing the known ones if there is none)."""
    import_plugins()
    return MERGE_OPS.get(name)
