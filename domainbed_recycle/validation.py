"""One type-driven validator for everything read from a spec, a flag or a job: values and their limits.

`check(value, hint, what)` checks a value against a type hint as a dataclass field declares it, and
`build(cls, table, where)` makes a dataclass from a table (unknown keys refused, every field checked);
the recycle spec, the sweep spec and `TrainConfig` are checked by the same code, so a dry run checks
exactly what a run would. Each problem is one `UserError` line naming the key.

Beyond Python's types:
  - a number is finite (no NaN or infinity); an integer is not a bool (TOML's 3.0 is no integer);
  - a string holds no NUL byte and no lone surrogate (no path or name can);
  - `Annotated[T, Bounds(...)]` bounds a number, `NonEmpty()` and `Unique()` constrain a list;
  - an upper bound may be one of the harness's limits (`LIMITS`, e.g. `Bounds(1, limit="jobs")`): a
    size that would make a run or a plan allocate without end (2**63 trials, a 100,000-channel
    network, 100,000 threads) is refused before anything is planned or allocated, with a message
    that gives the limit and the environment variable that raises it.

Torch-free, imports only `errors` (contracts floor): every floor above may use it.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import MISSING, dataclass, fields, is_dataclass
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from domainbed_recycle.errors import UserError

__all__ = ["LIMITS", "Bounds", "NonEmpty", "Unique", "Annotated", "build", "check", "check_fields", "limit",
           "check_limit", "check_text", "is_text"]


@dataclass(frozen=True)
class Limit:
    """An upper bound on a size, `default` unless the environment variable `env` gives another."""

    env: str
    default: int
    unit: str  # what is counted, for messages ("jobs", "training steps")


LIMITS: dict[str, Limit] = {
    "jobs": Limit("DRECYCLE_MAX_JOBS", 100_000, "jobs (runs) planned by one spec"),
    "steps": Limit("DRECYCLE_MAX_STEPS", 10_000_000, "training steps of one run"),
    "workers": Limit("DRECYCLE_MAX_WORKERS", 256, "parallel worker processes"),
    "threads": Limit("DRECYCLE_MAX_THREADS", 1024, "torch threads of one process"),
    "width": Limit("DRECYCLE_MAX_WIDTH", 4096, "channels of a network layer"),
    "batch": Limit("DRECYCLE_MAX_BATCH", 16_384, "images per domain in a minibatch"),
    "points": Limit("DRECYCLE_MAX_POINTS", 1001, "points of a curve"),
}


def limit(name: str) -> int:
    """The current value of limit `name` (its environment variable, else its default)."""
    spec = LIMITS[name]
    text = os.environ.get(spec.env)
    if text is None or not text.strip():
        return spec.default
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"${spec.env} must be a whole number (a limit on {spec.unit}), got {text!r}") from None
    if value < 1:
        raise UserError(f"${spec.env} must be >= 1 (a limit on {spec.unit}), got {value}")
    return value


def check_limit(name: str, value: int, what: str) -> None:
    """UserError (one line giving the limit and how to raise it) if `value` exceeds limit `name`;
    `what` names the value ("the sweep's jobs (2 datasets x ...)")."""
    if value > limit(name):
        spec = LIMITS[name]
        raise UserError(f"{what}: {value:,}, above this harness's limit of {limit(name):,} {spec.unit} "
                        f"(set {spec.env} to raise it)")


@dataclass(frozen=True)
class Bounds:
    """Bounds of a number: `low`/`high` (inclusive unless `*_open`), and `limit`, a name in `LIMITS`
    (an upper bound the environment may raise)."""

    low: float | None = None
    high: float | None = None
    limit: str | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_number(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_number(self.high)}")
        if self.limit is not None:
            parts.append(f"<= {limit(self.limit):,} (set {LIMITS[self.limit].env} to raise this limit)")
        return " and ".join(parts)

    def outside(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return True
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return True
        return self.limit is not None and value > limit(self.limit)


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


@dataclass(frozen=True)
class NonEmpty:
    """A list with at least one item."""


@dataclass(frozen=True)
class Unique:
    """A list without repeated items."""


# Field types shared by the recycle spec, the sweep spec and `TrainConfig` (one declaration each).
Count = Annotated[int, Bounds(1, limit="jobs")]  # runs, trials, hparams seeds: each multiplies the jobs planned
Steps = Annotated[int, Bounds(1, limit="steps")]  # steps, checkpoint_freq
Fraction = Annotated[float, Bounds(0, 1, low_open=True, high_open=True)]  # holdout_fraction
Workers = Annotated[int, Bounds(1, limit="workers")]
Threads = Annotated[int, Bounds(1, limit="threads")]
Seed = Annotated[int, Bounds(0, 2**63 - 1)]  # torch.manual_seed takes at most 64 bits
Text = Annotated[str, NonEmpty()]  # a path or a name that must be given
Names = Annotated[list[str], NonEmpty(), Unique()]
Domains = Annotated[list[Annotated[int, Bounds(0)]], NonEmpty(), Unique()]  # test domain indices


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def check_text(value: str, what: str) -> None:
    """UserError unless `value` is a string usable as a name or a path (no NUL byte, no lone surrogate)."""
    check(value, str, what)


def check(value: Any, hint: Any, what: str) -> None:
    """UserError (one line naming `what`) unless `value` fits `hint` (see the module docstring)."""
    if not _ok(value, hint):
        raise UserError(_problem(value, hint, what) or f"{what} must be {describe(hint)}, got {_short(value)}")


def _ok(value: Any, hint: Any) -> bool:
    """Whether `value` fits `hint` (the fast path of `check`; `_problem` says why not)."""
    inner, rules, origin, args = _parts(hint)
    if origin in (Union, UnionType):
        return any(_ok(value, arg) for arg in args)
    if not _shape(value, inner):
        return False
    if rules and _rule_problem(value, hint, rules, ""):
        return False
    if origin is list:
        return all(_ok(item, args[0]) for item in value)
    if origin is dict:
        return all(_ok(item, args[1]) for item in value.values())
    return True


def _problem(value: Any, hint: Any, what: str) -> str | None:
    """Why `value` does not fit `hint`, as one line naming `what`; None when it fits. A value with the
    right shape but out of range is told its range (of the first alternative of a union it has the
    shape of), else what it should have been."""
    inner, rules, origin, args = _parts(hint)
    if origin in (Union, UnionType):
        if any(_ok(value, arg) for arg in args):
            return None
        shaped = [arg for arg in args if _shape(value, arg)]
        if shaped:
            return _problem(value, shaped[0], what)
    elif _shape(value, inner):
        return _rule_problem(value, hint, rules, what) or _item_problem(value, inner, what)
    if isinstance(value, str) and not is_text(value):
        return f"{what} holds a NUL byte or a lone surrogate, which no name or path can: {_short(value)}"
    return f"{what} must be {describe(hint)}, got {_short(value)}"


def _rule_problem(value: Any, hint: Any, rules: tuple[Any, ...], what: str) -> str | None:
    """The first bound, emptiness or repetition rule of `hint` that `value` breaks."""
    for rule in rules:
        if isinstance(rule, Bounds) and isinstance(value, int | float) and rule.outside(value):
            return f"{what} must be {describe(hint)}, got {_short(value)}"
        if isinstance(rule, NonEmpty) and not value:
            return f"{what} is empty" + ("" if isinstance(value, str) else ": give at least one")
        if isinstance(rule, Unique) and isinstance(value, list):
            seen: list[Any] = []
            for item in value:
                if item in seen:
                    return f"{what} lists {_short(item)} twice: give each once"
                seen.append(item)
    return None


def _item_problem(value: Any, hint: Any, what: str) -> str | None:
    """The first problem of an item of a list or a table."""
    _, _, origin, args = _parts(hint)
    if origin is list:
        return next((p for i, item in enumerate(value) if (p := _problem(item, args[0], f"{what}[{i}]"))), None)
    if origin is dict:
        return next((p for key, item in value.items() if (p := _problem(item, args[1], f"{what}[{key!r}]"))),
                    None)
    return None


def is_text(value: str) -> bool:
    """No NUL byte, and encodable as a file name (a JSON spec may hold a lone surrogate, "\\ud800")."""
    if "\x00" in value:
        return False
    try:
        os.fsencode(value)
    except UnicodeError:
        return False
    return True


def _finite(value: float) -> bool:
    """Finite, and (for an int) representable as a float (10**400 is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@functools.cache
def _is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and is_dataclass(hint)


@functools.cache
def _parts(hint: Any) -> tuple[Any, tuple[Any, ...], Any, tuple[Any, ...]]:
    """(inner type, `Annotated` rules, its origin, its arguments) of `hint`, worked out once per hint."""
    inner, rules = _strip(hint)
    return inner, rules, get_origin(inner), get_args(inner)


def _strip(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """(the type inside `Annotated[...]`, its metadata); (hint, ()) for a plain type."""
    if get_origin(hint) is Annotated:
        args = get_args(hint)
        return args[0], tuple(args[1:])
    return hint, ()


def _shape(value: Any, hint: Any) -> bool:
    """Whether `value` has the shape of `hint`: its types, finite numbers, strings without NUL (the
    ranges of `Annotated` rules are `_problem`'s)."""
    hint, _, origin, args = _parts(hint)
    if hint is Any:
        return True
    if _is_dataclass_type(hint):
        return isinstance(value, dict | hint)
    if origin in (Union, UnionType):
        return any(_shape(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and _finite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str) and is_text(value)
    if hint is bool:
        return isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_shape(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and is_text(k) and _shape(v, args[1])
                                               for k, v in value.items())
    return isinstance(value, hint)


def describe(hint: Any) -> str:
    """What a value of `hint` must be, in words ('an integer >= 1 and <= 100000', 'a list of strings')."""
    hint, rules = _strip(hint)
    origin, args = get_origin(hint), get_args(hint)
    bounds = " ".join(rule.describe() for rule in rules if isinstance(rule, Bounds) and rule.describe())
    if origin in (Union, UnionType):  # None stands for "not given": not worth saying
        arms = [arg for arg in args if arg is not type(None)]
        words = []
        for arg in arms:
            value_type = get_args(arg)[1] if get_origin(arg) is dict else None
            same = value_type is not None and [a for a in get_args(value_type) if a is not type(None)][:1] == arms[:1]
            words.append("a table of them per key" if same else describe(arg))
        text = " or ".join(words) or "absent"
    elif hint is type(None):
        text = "absent"
    elif origin is list:
        text = f"a {'non-empty ' if any(isinstance(r, NonEmpty) for r in rules) else ''}list of {_plural(args[0])}"
    elif origin is dict:
        text = f"a table of {_plural(args[1])}" if args[1] is not Any else "a table"
    elif isinstance(hint, type) and is_dataclass(hint):
        text = "a table"
    else:
        text = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}.get(
            hint, getattr(hint, "__name__", str(hint)))
    return f"{text} {bounds}" if bounds else text


def _plural(hint: Any) -> str:
    inner, _ = _strip(hint)
    words = {int: "integers", float: "finite numbers", str: "strings", bool: "true/false values"}
    if inner in words:
        text = describe(hint)
        return words[inner] + text[len(describe(inner)):]
    return describe(hint)


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """The field types of dataclass `cls`, `Annotated` rules kept (computed once per class)."""
    return get_type_hints(cls, include_extras=True)


def build(cls: type, values: Any, where: str) -> Any:
    """An instance of dataclass `cls` from the table `values`: UserError (one line) for a value that is
    no table, a missing required key, an unknown key or a value that does not fit its field."""
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a table of keys, got {_short(values)}")
    known = [f.name for f in fields(cls) if f.init]
    unknown = sorted(str(key) for key in values if key not in known)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    missing = [f.name for f in fields(cls)
               if f.init and f.default is MISSING and f.default_factory is MISSING and f.name not in values]
    if missing:
        raise UserError(f"{where}: '{missing[0]}' is required")
    hints = type_hints(cls)
    for key, value in values.items():
        check(value, hints[key], f"{where}: '{key}'")
    return cls(**values)


def check_fields(obj: Any, where: str, skip: tuple[str, ...] = ()) -> None:
    """Check every field of dataclass instance `obj` against its declared type (as `build` does)."""
    hints = type_hints(type(obj))
    for f in fields(obj):
        if f.name not in skip:
            check(getattr(obj, f.name), hints[f.name], f"{where}{f.name}")
