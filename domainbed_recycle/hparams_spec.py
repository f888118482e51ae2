"""How a hyper-parameter is declared: a default, a seeded sampler, and a kind with its range.

Algorithms declare theirs with `define(name, default, sampler, kind)` (see
`Algorithm.define_hparams`); `hparams_registry` collects, draws and checks them. Torch-free.

    define("lr", 1e-3, log_uniform(-3.5, -2.5), Real(low=0, low_open=True))
    define("batch_size", 64, lambda rng: int(2 ** rng.uniform(5, 7)), Integer(low=1))
    define("optimizer", "adam", None, OneOf(("adam", "sgd")))     # None: every seed keeps the default
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from domainbed_recycle import validation

Sampler = Callable[[np.random.RandomState], Any]


def log_uniform(low: float, high: float) -> Sampler:
    """10 ** U(low, high)."""
    return lambda rng: float(10 ** rng.uniform(low, high))


def choice(values: list[Any]) -> Sampler:
    """One of `values`, uniformly."""
    return lambda rng: values[rng.randint(len(values))]


class Kind(Protocol):
    def problem(self, value: Any) -> str | None:
        """None if `value` is acceptable, else what it must be (e.g. 'an integer >= 1')."""


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    def text(v: float) -> str:
        return f"{v:,}" if isinstance(v, int) else f"{v:g}"

    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {text(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {text(high)}")
    return " and ".join(parts)


def _outside(value: float, low: float | None, high: float | None, low_open: bool, high_open: bool) -> bool:
    if low is not None and (value < low or (low_open and value == low)):
        return True
    return high is not None and (value > high or (high_open and value == high))


@dataclass(frozen=True)
class Real:
    """A finite number (an int may stand for it), optionally bounded; `*_open` excludes the bound."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: Any) -> str | None:
        bounds = _bounds(self.low, self.high, self.low_open, self.high_open)
        wanted = f"a finite number {bounds}".rstrip()
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return wanted
        return wanted if _outside(value, self.low, self.high, self.low_open, self.high_open) else None


@dataclass(frozen=True)
class Integer:
    """An int (not a bool, not 2.5 nor 2.0), optionally bounded (inclusive); `limit` names one of the
    harness's limits (`validation.LIMITS`, e.g. "width"), an upper bound the environment may raise."""

    low: int | None = None
    high: int | None = None
    limit: str | None = None

    def problem(self, value: Any) -> str | None:
        high = self.high if self.limit is None else validation.limit(self.limit)
        wanted = f"an integer {_bounds(self.low, high, False, False)}".rstrip()
        if self.limit is not None:
            wanted += f" (set {validation.LIMITS[self.limit].env} to raise this limit)"
        if isinstance(value, bool) or not isinstance(value, int):
            return wanted
        return wanted if _outside(value, self.low, high, False, False) else None


@dataclass(frozen=True)
class Flag:
    """true or false."""

    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else "true or false"


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values (e.g. optimiser or architecture names)."""

    values: tuple[Any, ...]

    def problem(self, value: Any) -> str | None:
        ok = any(value == v and type(value) is type(v) for v in self.values)
        return None if ok else f"one of {', '.join(map(repr, self.values))}"


@dataclass(frozen=True)
class HParam:
    """One declared hyper-parameter. `sampler` None: every hparams seed keeps `default`."""

    name: str
    default: Any
    sampler: Sampler | None
    kind: Kind

    def problem(self, value: Any) -> str | None:
        """One line saying why `value` is not acceptable, or None."""
        wanted = self.kind.problem(value)
        return None if wanted is None else f"hyper-parameter '{self.name}' must be {wanted}, got {value!r}"


class Define(Protocol):
    def __call__(self, name: str, default: Any, sampler: Sampler | None, kind: Kind) -> None: ...
