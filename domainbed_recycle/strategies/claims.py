"""The table rows that the paper's claims compare, named from the strategies that report them.

`recycle/reading.py` judges the claims; it spells no row name: each comes from a strategy's `name` or
`variants` here, so renaming a strategy's row renames it in the reading too (a row that no strategy
reports raises at import, and `tests/test_reading.py` checks each against the registry).
"""

from __future__ import annotations

from domainbed_recycle.strategies.base import Strategy
from domainbed_recycle.strategies.builtin import ERM, LPFT, Fusing, InterTraining, Ratatouille, Soup


def _row(strategy: type[Strategy], kind: str | None = None) -> str:
    """The row `strategy` reports: its name, or `<name>-<kind>` (one of its variants)."""
    row = strategy.name if kind is None else f"{strategy.name}-{kind}"
    if row not in strategy.variants:
        raise ValueError(f"strategy {strategy.name} reports no row {row!r} (its rows: {', '.join(strategy.variants)})")
    return row


def _pooled(strategy: type[Strategy], kind: str) -> str:
    """The pooled (†) row `strategy` reports after its row `<name>-<kind>`."""
    row = _row(strategy, kind)
    found = [p for p, after in strategy.pooled.items() if after == row]
    if not found:
        raise ValueError(f"strategy {strategy.name} reports no pooled row after {row!r}")
    return found[0]


#: (kind, recycling row, soup row): "recycling >= soups" for uniform and greedy averaging
RECYCLING_VS_SOUPS: tuple[tuple[str, str, str], ...] = tuple(
    (kind, _row(Ratatouille, kind), _row(Soup, kind)) for kind in ("uniform", "greedy"))
#: the soup that "soups > inter-training and fusing" takes
BEST_SOUP: str = _row(Soup, "greedy")
#: the rows that start from other foundations than phi_0 alone
OTHER_INITS: tuple[str, ...] = (_row(InterTraining), _row(Fusing))
#: the baseline of "LP-FT, inter-training and fusing > ERM", and the rows that claim compares with it
BASELINE: str = _row(ERM)
ABOVE_BASELINE: tuple[str, ...] = (_row(LPFT), *OTHER_INITS)
ABOVE_BASELINE_CLAIM: str = f"{_row(LPFT)}, inter-training and fusing"

#: (claim, row a, row b): the reading's claim "a > b", judged on the paired difference of two table rows
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    *((f"recycling > soups ({kind})", recycled, soup) for kind, recycled, soup in RECYCLING_VS_SOUPS),
    ("recycling > soups (pooled †)", _pooled(Ratatouille, "uniform"), _pooled(Soup, "uniform")),
    *((f"soups > {what} ({kind} soup)", _row(Soup, kind), other)
      for what, other in (("inter-training", _row(InterTraining)), ("fusing", _row(Fusing)))
      for kind in ("uniform", "greedy")),
    (f"{_row(LPFT)} > {BASELINE}", _row(LPFT), BASELINE),
    (f"inter-training > {BASELINE}", _row(InterTraining), BASELINE),
    (f"inter-training > {_row(LPFT)} (the reference's ERM starts from the probe)", _row(InterTraining), _row(LPFT)),
    (f"fusing > {BASELINE}", _row(Fusing), BASELINE),
    (f"fusing > {_row(LPFT)}", _row(Fusing), _row(LPFT)),
)
