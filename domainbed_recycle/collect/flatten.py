"""Raw records (dicts) -> the collector's validated columns, vectorised over a whole sweep.

A record is valid when it has `step`; `args` with `dataset`, `algorithm`, `test_envs` (a
non-empty list of domain indices), `hparams_seed`, `trial_seed`; and `env{i}_in_acc`,
`env{i}_out_acc` for each of its dataset's domains.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain, repeat
from operator import contains, is_not, itemgetter
from typing import Any

import numpy as np
import pandas as pd

#: Domain names of DomainBed's datasets (its `ENVIRONMENTS`), so that DomainBed sweeps can be
#: tabulated without importing torch. Our own records carry `args["environments"]` instead.
DOMAINBED_ENVIRONMENTS: dict[str, tuple[str, ...]] = {
    "ColoredMNIST": ("+90%", "+80%", "-90%"),
    "RotatedMNIST": ("0", "15", "30", "45", "60", "75"),
    "VLCS": ("C", "L", "S", "V"),
    "PACS": ("A", "C", "P", "S"),
    "OfficeHome": ("A", "C", "P", "R"),
    "TerraIncognita": ("L100", "L38", "L43", "L46"),
    "DomainNet": ("clip", "info", "paint", "quick", "real", "sketch"),
}

#: Keys of `args` every record must have.
REQUIRED_ARGS = ("dataset", "algorithm", "test_envs", "hparams_seed", "trial_seed")


def _valid_test_envs(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, tuple) or not value:
        return None
    if not all(type(v) is int and v >= 0 for v in value):
        return None
    return value


def _valid_names(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, tuple) and value and all(type(v) is str for v in value):
        return value
    return None


def _tuples(values: list[Any], check: Callable[[Any], Any]) -> list[Any]:
    """Lists turned into tuples and checked with `check` (once per distinct value); else None."""
    as_tuples = [tuple(v) if type(v) in (list, tuple) else None for v in values]
    try:
        verdicts = {v: check(v) for v in set(as_tuples)}
    except TypeError:  # unhashable items (nested lists, dicts): check each one
        return [check(v) for v in as_tuples]
    return list(map(verdicts.__getitem__, as_tuples))


def _numbers(values: list[Any]) -> np.ndarray:
    """Floats, NaN where a value is missing or not a number."""
    try:
        return np.array(values, dtype=float)
    except (TypeError, ValueError):
        return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)


def _columns(dicts: list[dict], keys: list[str]) -> list[list[Any]]:
    """`[[d.get(key) for d in dicts] for key in keys]`, in one pass over `dicts` when every dict
    has every key (the usual case: it is several times faster on a large sweep)."""
    if not keys:
        return []
    try:
        rows = list(map(itemgetter(*keys), dicts))
    except (KeyError, TypeError):
        return [[d.get(key) if type(d) is dict else None for d in dicts] for key in keys]
    if len(keys) == 1:
        return [rows]
    if not rows:
        return [[] for _ in keys]
    return [list(column) for column in zip(*rows, strict=True)]


def _numeric_matrix(dicts: list[dict], keys: list[str]) -> np.ndarray:
    """(len(dicts), len(keys)) floats, NaN where a key is missing or not a number."""
    if not keys:
        return np.empty((len(dicts), 0))
    values = map(itemgetter(*keys), dicts)
    try:  # one flat pass: faster than np.array of a list of tuples
        flat = np.fromiter(values if len(keys) == 1 else chain.from_iterable(values), float, len(dicts) * len(keys))
        return flat.reshape(len(dicts), len(keys))
    except (KeyError, TypeError, ValueError):
        return np.column_stack([_numbers([d.get(key) for d in dicts]) for key in keys])


def _n_acc_domains(records: list[dict]) -> int:
    """1 + the largest i such that some record has `env{i}_in_acc` or `env{i}_out_acc`
    (assuming no gaps)."""
    width = 0
    while any(map(contains, records, repeat(f"env{width}_out_acc"))) or any(
        map(contains, records, repeat(f"env{width}_in_acc"))
    ):
        width += 1
    return width


def _not_none(values: list[Any]) -> np.ndarray:
    """Booleans: which of `values` are not None."""
    return np.fromiter(map(is_not, values, repeat(None)), bool, len(values))


def _categorical(values: list[str | None]) -> pd.Categorical:
    """`values` as a categorical with sorted categories, None missing (as `astype("category")`
    makes it, several times faster on a long list of few distinct names)."""
    names = sorted({v for v in dict.fromkeys(values) if v is not None})
    code_of = {name: code for code, name in enumerate(names)}
    code_of[None] = -1
    codes = np.fromiter(map(code_of.__getitem__, values), np.int64, len(values))
    return pd.Categorical.from_codes(codes, categories=pd.Index(names, dtype=object))


def flatten_records(records: list[dict]) -> tuple[pd.DataFrame, np.ndarray]:
    """Flatten raw records into the collector's columns.

    Returns (frame, valid) where `valid[k]` says whether record k has every required key with a
    valid value: `step`; `args` with `dataset`, `algorithm`, `test_envs` (non-empty list of
    domain indices), `hparams_seed`, `trial_seed`; and `env{i}_in_acc`, `env{i}_out_acc` for every
    domain i. The number of domains is `len(args["environments"])` when the record has it, else
    the count of DomainBed's dataset, else the number of consecutive `env{i}_out_acc` keys.
    """
    n = len(records)
    (args,) = _columns(records, ["args"])
    args = [a if type(a) is dict else {} for a in args]
    datasets, algorithms, test_envs, hparams_seeds, trial_seeds = _columns(args, list(REQUIRED_ARGS))
    datasets = [d if type(d) is str and d else None for d in datasets]
    algorithms = [d if type(d) is str and d else None for d in algorithms]
    hparams_seeds = [v if type(v) is int else None for v in hparams_seeds]
    trial_seeds = [v if type(v) is int else None for v in trial_seeds]
    test_envs = _tuples(test_envs, _valid_test_envs)
    environments = _tuples([a.get("environments") for a in args], _valid_names)

    width = _n_acc_domains(records)
    acc_keys = [f"env{i}_{split}_acc" for i in range(width) for split in ("in", "out")]
    numbers = _numeric_matrix(records, ["step", *acc_keys])
    step, acc_in, acc_out = numbers[:, 0], numbers[:, 1::2], numbers[:, 2::2]

    consecutive = np.cumprod(~np.isnan(acc_out), axis=1).sum(axis=1) if width else np.zeros(n, int)
    known = np.array([len(DOMAINBED_ENVIRONMENTS.get(d, ())) for d in datasets], dtype=int)
    named = np.array([len(e) if e else 0 for e in environments], dtype=int)
    n_envs = np.where(named > 0, named, np.where(known > 0, known, consecutive)).astype(int)
    shape = {t: (len(t), max(t), t[0], t[1] if len(t) > 1 else -1) if t else (0, -1, -1, -1) for t in set(test_envs)}
    n_test_envs, max_test_env, test_env0, test_env1 = (
        np.array(list(map(shape.__getitem__, test_envs)), dtype=np.int64).reshape(n, 4).T
    )

    needed = np.arange(width)[None, :] < n_envs[:, None]
    accs_ok = ~((np.isnan(acc_in) | np.isnan(acc_out)) & needed).any(axis=1) & (n_envs > 0) & (n_envs <= width)
    out = pd.DataFrame(
        {
            "dataset": _categorical(datasets),
            "algorithm": _categorical(algorithms),
            "test_envs": pd.Series(test_envs, dtype=object),
            "hparams_seed": pd.Series(hparams_seeds, dtype=object),
            "trial_seed": pd.Series(trial_seeds, dtype=object),
            "environments": pd.Series(environments, dtype=object),
            "n_test_envs": n_test_envs,
            "test_env0": test_env0,
            "test_env1": test_env1,
            "step": step,
            "n_envs": n_envs,
        }
    )
    present = np.logical_and.reduce(
        [_not_none(column) for column in (datasets, algorithms, test_envs, hparams_seeds, trial_seeds)]
    )
    valid = present & ~np.isnan(step) & accs_ok & (max_test_env < n_envs)
    acc_in = np.where(needed, acc_in, np.nan)
    acc_out = np.where(needed, acc_out, np.nan)
    accs = {}
    for i in range(width):
        accs[f"env{i}_in_acc"] = acc_in[:, i]
        accs[f"env{i}_out_acc"] = acc_out[:, i]
    return pd.concat([out, pd.DataFrame(accs, index=out.index)], axis=1), valid
