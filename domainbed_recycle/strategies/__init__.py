"""Recycling strategies: how target runs are initialised (`plan`) and combined (`combine`).

Importing this package registers every built-in strategy in `STRATEGIES`.
"""

from domainbed_recycle.strategies.base import (
    STRATEGIES,
    Cell,
    Inits,
    ModelOutcome,
    RunRef,
    RunsOutcome,
    Strategy,
    TargetSettings,
)

from domainbed_recycle.strategies import builtin  # noqa: E402,F401  isort: skip  (registers them)
from domainbed_recycle.strategies import merging  # noqa: E402,F401  isort: skip  (registers them)

__all__ = [
    "STRATEGIES", "Cell", "Inits", "ModelOutcome", "RunRef", "RunsOutcome", "Strategy", "TargetSettings",
]
