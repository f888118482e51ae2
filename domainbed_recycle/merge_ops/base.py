"""What a merging operator declares, checked once, and what is generated from it.

An operator is one function registered with `merge_operator`: its name (`drecycle merge --method`),
its parameters (type, default, range, validation grid, per model or not), its reference, whether it needs
the base θ0 and how many fine-tuned models it takes. The function's keyword-only arguments must be
exactly the declared parameters, so the signature and the config keys cannot drift apart (as mergekit's
`@merge_method`, whose signature becomes the config keys). From the declarations come the options of
`drecycle merge`, the keys of a merge config, the merging strategies (`strategies/merging.py`, one row each
for the operators that name a `row`) and README's operator table (`markdown_table`).

Torch-free: the operators import the math (`merging`, `averaging`) inside their functions, so building
the command line stays instant.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domainbed_recycle.errors import UserError
from domainbed_recycle.registry import Registry

State = Mapping[str, Any]  # a state dict: name -> torch.Tensor (typed loosely here to stay torch-free)
Result = Any  # what an operator returns: a new state dict, or (state dict, {name: JSON-able} to record)

SEED = "seed"  # the parameter name a strategy fills with the cell's own seed (e.g. DARE's masks)


@dataclass(frozen=True)
class Param:
    """One parameter of a merging operator.

    name: the config key, the `drecycle merge --NAME` option and the operator's keyword argument.
    type: float, int or str. default: the value when none is given (with `per_k`, in units of 1/K).
    low/high (+ `low_open`/`high_open` for an open bound) or `choices`: the valid values.
    grid: the values a merging strategy tries, choosing on training-domain validation (empty: the
        default is used). per_k: the default and the grid are multiples of 1/K, K the number of models
        (task arithmetic's λ = s/K; the record names s and λ). scale: the operator is linear in this
        parameter around θ0 (θ(g) = θ0 + g/u · (θ(u) − θ0)), so a strategy merges once at the unit value
        u (1, or 1/K with `per_k`) and interpolates for the others. per_model: one value per model
        allowed (a config's `models[i].parameters`, or K values to the option). record: the key under
        which strategies and merged files record it (default: the name).
    """

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    grid: tuple[Any, ...] = ()
    per_k: bool = False
    scale: bool = False
    per_model: bool = False
    record: str | None = None

    @property
    def key(self) -> str:
        return self.record or self.name

    def range_text(self) -> str:
        """'(0, 1]', '[0, 1)', '≥ 0', one of 'a, b', or '' (any finite value)."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.low is not None and self.high is not None:
            return f"{'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '≥'} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '≤'} {_num(self.high)}"
        return ""

    def default_text(self) -> str:
        return f"{_num(self.default)}/K" if self.per_k else _num(self.default)

    def check(self, value: Any) -> Any:
        """`value` as this parameter's type; ValueError (one line) if it has another type or is out of range."""
        if self.type is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise ValueError(f"{self.name} must be {self.range_text() or 'text'}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.type is int and value != int(value)):
            raise ValueError(f"{self.name} must be {'an integer' if self.type is int else 'a number'}, got {value!r}")
        value = self.type(value)
        if not math.isfinite(value):
            raise ValueError(f"{self.name} must be finite, got {value}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            raise ValueError(f"{self.name} must be in {self.range_text()}, got {_num(value)}")
        return value


WEIGHT_HELP = "weight w_k of each model (mergekit's per-model `weight`)"


def weight_param() -> Param:
    """The per-model weight w_k that several operators read (> 0, default 1)."""
    return Param("weight", float, 1.0, WEIGHT_HELP, low=0.0, low_open=True, per_model=True)


@dataclass(frozen=True)
class MergeOp:
    """A registered merging operator (see `merge_operator`)."""

    name: str
    function: Callable[..., Result]
    params: tuple[Param, ...]
    summary: str
    reference: str
    url: str = ""
    needs_base: bool = True
    min_models: int = 1
    max_models: int | None = None
    row: str | None = None
    param_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_names", tuple(p.name for p in self.params))

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    @property
    def scale_param(self) -> Param | None:
        return next((p for p in self.params if p.scale), None)

    def members_text(self) -> str:
        """Which runs a merging strategy of this operator merges."""
        return "best LP-FT run" if self.max_models == 1 else "auxiliary pool"

    def arguments(self, k: int, given: Mapping[str, Any] | None = None,
                  per_model: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """The keyword arguments of one call on K models: `given` values (one value, or K for a per-model
        parameter), each model's own `per_model[i]` values, else the defaults; all checked.

        Raises:
            UserError: one line naming the problem (unknown parameter, bad value, wrong K).
        """
        given, per_model = dict(given or {}), list(per_model or [{}] * k)
        self.check_count(k)
        if len(per_model) != k:
            raise UserError(f"{self.name}: got parameters for {len(per_model)} models, expected {k}")
        for key in given:
            if key not in self.param_names:
                raise UserError(f"{self.name} has no parameter '{key}' (its parameters: {self._names()})")
        for index, own in enumerate(per_model):
            for key in own:
                if key not in self.param_names or not self.param(key).per_model:
                    shared = [p.name for p in self.params if p.per_model]
                    raise UserError(f"{self.name}: '{key}' is not a per-model parameter of model {index + 1} "
                                    f"(per-model parameters: {', '.join(shared) or 'none'})")
        out: dict[str, Any] = {}
        try:
            for param in self.params:
                value = given.get(param.name, param.default / k if param.per_k else param.default)
                if param.per_model:
                    values = list(value) if isinstance(value, (list, tuple)) else [value]
                    values = values * k if len(values) == 1 else values  # one value: every model's
                    if len(values) != k:
                        raise ValueError(f"{param.name}: got {len(values)} values for {k} models (give 1 or {k})")
                    values = [own.get(param.name, v) for own, v in zip(per_model, values, strict=True)]
                    out[param.name] = [param.check(v) for v in values]
                elif isinstance(value, (list, tuple)):
                    raise ValueError(f"{param.name} takes one value, got {len(value)}")
                else:
                    out[param.name] = param.check(value)
        except ValueError as error:
            raise UserError(f"{self.name}: {error}") from None
        return out

    def check_count(self, k: int) -> None:
        """UserError unless this operator takes K fine-tuned models."""
        if k < self.min_models:
            raise UserError(f"{self.name} needs at least {self.min_models} fine-tuned model(s), got {k}")
        if self.max_models is not None and k > self.max_models:
            raise UserError(f"{self.name} takes {self.max_models} fine-tuned model(s) besides the base, got {k}")

    def __call__(self, base: State | None, models: Sequence[State], **arguments: Any) -> tuple[dict, dict]:
        """(merged state dict, {name: value} the operator reports) for checked `arguments`."""
        result = self.function(base, models, **arguments)
        return result if isinstance(result, tuple) else (result, {})

    def _names(self) -> str:
        return ", ".join(self.param_names) or "none"


MERGE_OPS: Registry[MergeOp] = Registry("merging operator")


def merge_operator(
    name: str, *, summary: str, reference: str, url: str = "", params: Iterable[Param] = (), needs_base: bool = True,
    min_models: int = 1, max_models: int | None = None, row: str | None = None,
) -> Callable[[Callable[..., Result]], Callable[..., Result]]:
    """Register the decorated function ``f(base, models, *, <params>) -> state dict | (state dict, info)``.

    `base` is θ0 (None for an operator that does not need one), `models` the K fine-tuned state dicts; the
    keyword-only arguments receive checked values (a list of K for per-model parameters).

    Args:
        name: `drecycle merge --method NAME` and a config's `merge_method`.
        summary: what it computes, in one line (README's table).
        reference: who proposed it (e.g. "Yadav et al. 2023"); url: where.
        params: its parameters; must match the function's keyword-only arguments, in order.
        needs_base: whether it reads θ0 (`--base`, a config's `base_model`).
        min_models, max_models: how many fine-tuned models it takes besides θ0.
        row: the merging strategy (a row of the recycling tables) made from it, or None for none.
    """
    params = tuple(params)

    def decorator(function: Callable[..., Result]) -> Callable[..., Result]:
        signature = inspect.signature(function)
        positional = [p.name for p in signature.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
        keywords = [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY]
        if positional != ["base", "models"] or keywords != [p.name for p in params]:
            raise ValueError(f"merging operator '{name}': its function must read (base, models, *, "
                             f"{', '.join(p.name for p in params)}), got {signature}")
        if sum(p.scale for p in params) > 1:
            raise ValueError(f"merging operator '{name}': at most one scale parameter")
        for param in params:  # a declaration must satisfy itself
            defaults = [param.default] if not param.per_k else []
            for value in [*defaults, *(param.grid if not param.per_k else [])]:
                param.check(value)
        MERGE_OPS.register(name)(MergeOp(name, function, params, summary, reference, url, needs_base, min_models,
                                         max_models, row))
        return function

    return decorator


def strategy_grid(op: MergeOp) -> list[dict[str, Any]]:
    """The points a merging strategy tries, as {parameter name: grid value}: the product of the grids, in
    declaration order with the scale parameter last (it varies fastest). A `per_k` value is s (λ = s/K).
    [] for an operator without a grid."""
    gridded = sorted((p for p in op.params if p.grid), key=lambda p: p.scale)
    if not gridded:
        return []
    points: list[dict[str, Any]] = [{}]
    for param in gridded:
        points = [{**point, param.name: g} for point in points for g in param.grid]
    return points


def record_point(op: MergeOp, point: Mapping[str, Any], k: int) -> dict[str, Any]:
    """A grid point as strategies record it: record keys; a `per_k` value as s and its value s/K."""
    out: dict[str, Any] = {}
    for name, value in point.items():
        param = op.param(name)
        if param.per_k:
            out["s"] = value
            out[param.key] = value / k
        else:
            out[param.key] = value
    return out


def markdown_table(ops: Iterable[MergeOp]) -> str:
    """README's operator table (`drecycle merge --list`): one row per operator."""
    lines = ["| `--method` | strategy row (members) | what it computes | parameters: range, default; grid of the row "
             "| θ0 | reference |", "|---|---|---|---|---|---|"]
    for op in ops:
        params = "; ".join(_param_cell(p, bool(op.row)) for p in op.params) or "none"
        row = f"`{op.row}` ({op.members_text()})" if op.row else "—"
        reference = f"[{op.reference}]({op.url})" if op.url else op.reference
        lines.append(f"| `{op.name}` | {row} | {op.summary} | {params} | {'yes' if op.needs_base else 'no'} "
                     f"| {reference} |")
    return "\n".join(lines)


def _param_cell(param: Param, row: bool) -> str:
    parts = [param.range_text(), f"default {param.default_text()}", "per model" if param.per_model else "",
             "the row's: per cell" if row and param.name == SEED else ""]
    if row and param.grid:
        values = "{" + ", ".join(_num(g) for g in param.grid) + "}"
        parts.append(f"grid s/K, s ∈ {values}" if param.per_k else f"grid {values}")
    return f"`{param.name}` " + ", ".join(part for part in parts if part)


def _num(value: Any) -> str:
    """0.5 -> '0.5', 1.0 -> '1', 1e-06 -> '1e-06', 'model' -> 'model'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
