"""DomainBed's three model-selection methods, vectorised over a records frame.

Input: the frame of `collect.records.load_records` (one row per record). A *run* is what DomainBed's
collector treats as one: the records of one (dataset, algorithm, test env, trial seed, hparams
seed). Each method scores every run (`*_run_scores`: its chosen step's validation and test
accuracy) and then keeps, per (dataset, algorithm, test env, trial seed), the run with the best
validation accuracy (`best_over_hparams`). Test accuracy is always `env{test}_in_acc`.

Semantics follow DomainBed's `domainbed/model_selection.py` and `collect_results.py`:

- training-domain validation: only records with exactly one test env; per record,
  val = mean of `env{i}_out_acc` over the other domains; per run the first record (reading
  order) with the best val.
- leave-one-domain-out: for test env t at step s, the single-test-env run (t) must have exactly
  one record at s, and for every other domain v a run with test envs {t, v} (same hparams and
  trial seed) must have a record at the very same step s; val = mean over v of that run's
  `env{v}_in_acc` (the 80% `in` split of domain v, which that run never trained on), test acc =
  the single-test-env run's `env{t}_in_acc` at s. A step missing any of these is dropped (so
  are steps where the single run has two records, e.g. after a restart; among duplicated pair
  records the last read wins); a run with no complete step is dropped; none left -> X.
  Per run the best step wins, ties -> the earliest step.
- test-domain oracle: only single-test-env runs; per run the last record (highest step; ties ->
  the last read), val = `env{test}_out_acc`, no early stopping.
- across hparams seeds: best val; ties -> the largest hparams seed (DomainBed sorts ascending,
  stably, then reverses).

"Reading order" is row order: `load_records` reads run folders sorted by name (DomainBed uses
`os.listdir` order, so its ties between folders depend on the file system). NaN validation
accuracies (impossible after `load_records`' validation) rank lowest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from domainbed_recycle.collect.records import acc_columns

GROUP_KEYS = ["dataset", "algorithm", "test_env", "trial_seed"]
RUN_KEYS = [*GROUP_KEYS, "hparams_seed"]
SCORE_COLUMNS = [*RUN_KEYS, "step", "run_dir", "val_acc", "test_acc"]


def _acc_matrix(records: pd.DataFrame, split: str, rows: np.ndarray | None = None) -> np.ndarray:
    """(n, n_domains) accuracies of one split (of `rows` only when given), NaN where absent."""
    columns = acc_columns(records, split)
    n = len(records) if rows is None else len(rows)
    if not columns:
        return np.empty((n, 0))
    matrix = records[columns].to_numpy(dtype=float)
    return matrix if rows is None else matrix[rows]


def _take(matrix: np.ndarray, env: np.ndarray) -> np.ndarray:
    """matrix[k, env[k]] for every row k."""
    if not len(env):
        return np.empty(0)
    return np.take_along_axis(matrix, env.astype(np.int64)[:, None], axis=1)[:, 0]


def _codes(values: pd.Series) -> np.ndarray:
    """Integer codes of a column (equal values, equal codes); cheap for categoricals."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.codes.to_numpy(dtype=np.int64)
    return pd.factorize(values)[0].astype(np.int64)


def _test_envs(records: pd.DataFrame, k: int) -> np.ndarray:
    """The k-th test env of every record, -1 where it has no such test env."""
    column = f"test_env{k}"
    if column in records:
        return records[column].to_numpy(dtype=np.int64)
    return np.fromiter((t[k] if len(t) > k else -1 for t in records["test_envs"]), np.int64, len(records))


@dataclass(frozen=True)
class _Columns:
    """The columns the selection reads, as numpy arrays (one row per record)."""

    dataset: np.ndarray
    algorithm: np.ndarray
    trial_seed: np.ndarray
    hparams_seed: np.ndarray
    step: np.ndarray
    n_test_envs: np.ndarray
    n_envs: np.ndarray
    test_env0: np.ndarray
    test_env1: np.ndarray

    @classmethod
    def of(cls, records: pd.DataFrame) -> _Columns:
        return cls(
            dataset=_codes(records["dataset"]),
            algorithm=_codes(records["algorithm"]),
            trial_seed=records["trial_seed"].to_numpy(dtype=np.int64),
            hparams_seed=records["hparams_seed"].to_numpy(dtype=np.int64),
            step=records["step"].to_numpy(dtype=float),
            n_test_envs=records["n_test_envs"].to_numpy(dtype=np.int64),
            n_envs=records["n_envs"].to_numpy(dtype=np.int64),
            test_env0=_test_envs(records, 0),
            test_env1=_test_envs(records, 1),
        )

    def keys(self, rows: np.ndarray, test_env: np.ndarray, with_step: bool = False) -> list[np.ndarray]:
        """Run keys (dataset, algorithm, test env, trial seed, hparams seed [, step]) of `rows`."""
        keys = [
            self.dataset[rows],
            self.algorithm[rows],
            test_env,
            self.trial_seed[rows],
            self.hparams_seed[rows],
        ]
        return [*keys, self.step[rows]] if with_step else keys


def _group_ids(keys: list[np.ndarray]) -> np.ndarray:
    """One integer id per distinct combination of `keys` (parallel arrays)."""
    if not len(keys[0]):
        return np.empty(0, dtype=np.int64)
    frame = pd.DataFrame({str(k): key for k, key in enumerate(keys)})
    return frame.groupby(list(frame.columns), sort=False).ngroup().to_numpy(dtype=np.int64)


def _first_per_group(groups: np.ndarray, *priority: np.ndarray) -> np.ndarray:
    """Index of the first element of each group once sorted by `priority` (first key first)."""
    if not len(groups):
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((*reversed(priority), groups))
    sorted_groups = groups[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_groups[1:] != sorted_groups[:-1]
    return order[first]


def _descending(val: np.ndarray) -> np.ndarray:
    """Sort key putting the highest validation accuracy first and NaN last."""
    return np.where(np.isnan(val), np.inf, -val)


def _scores(
    records: pd.DataFrame, rows: np.ndarray, test_env: np.ndarray, val: np.ndarray, test: np.ndarray
) -> pd.DataFrame:
    """The run-scores frame (`SCORE_COLUMNS`) of the chosen record `rows`, sorted by `RUN_KEYS`."""
    chosen = records.iloc[rows]
    frame = pd.DataFrame(
        {
            "dataset": chosen["dataset"].astype(str).to_numpy(dtype=object),
            "algorithm": chosen["algorithm"].astype(str).to_numpy(dtype=object),
            "test_env": test_env.astype(np.int64),
            "trial_seed": chosen["trial_seed"].to_numpy(),
            "hparams_seed": chosen["hparams_seed"].to_numpy(),
            "step": chosen["step"].to_numpy(),
            "run_dir": chosen["run_dir"].astype(str).to_numpy(dtype=object),
            "val_acc": val.astype(float),
            "test_acc": test.astype(float),
        }
    )
    return frame.sort_values(RUN_KEYS, kind="stable").reset_index(drop=True)


def _single(records: pd.DataFrame) -> tuple[_Columns, np.ndarray, np.ndarray]:
    """(columns, rows of single-test-env records, their test env)."""
    columns = _Columns.of(records)
    rows = np.flatnonzero(columns.n_test_envs == 1)
    return columns, rows, columns.test_env0[rows]


def iid_run_scores(records: pd.DataFrame) -> pd.DataFrame:
    """Training-domain validation: per run, the record with the best mean training-domain `out` acc."""
    columns, rows, test_env = _single(records)
    out = _acc_matrix(records, "out", rows)
    domains = np.arange(out.shape[1])[None, :]
    mask = (domains < columns.n_envs[rows][:, None]) & (domains != test_env[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        val = np.where(mask, out, 0.0).sum(axis=1) / mask.sum(axis=1)
    test = _take(_acc_matrix(records, "in", rows), test_env)
    runs = _group_ids(columns.keys(rows, test_env))
    best = _first_per_group(runs, _descending(val), rows)  # ties: the first record read
    return _scores(records, rows[best], test_env[best], val[best], test[best])


def oracle_run_scores(records: pd.DataFrame) -> pd.DataFrame:
    """Test-domain oracle: per run, its last record, scored by the test domain's `out` acc."""
    columns, rows, test_env = _single(records)
    runs = _group_ids(columns.keys(rows, test_env))
    last = _first_per_group(runs, -columns.step[rows], -rows)  # ties: the last record read
    rows, test_env = rows[last], test_env[last]
    val = _take(_acc_matrix(records, "out", rows), test_env)
    test = _take(_acc_matrix(records, "in", rows), test_env)
    return _scores(records, rows, test_env, val, test)


def loo_run_scores(records: pd.DataFrame) -> pd.DataFrame:
    """Leave-one-domain-out cross-validation: per run, its best step whose every other domain
    has a matching two-test-env record (see the module docstring)."""
    columns, rows, test_env = _single(records)
    pairs = np.flatnonzero((columns.n_test_envs == 2) & (columns.test_env0 != columns.test_env1))
    first, second = columns.test_env0[pairs], columns.test_env1[pairs]
    # each two-test-env record validates domain v for test env t, both ways round
    pair_rows = np.concatenate([pairs, pairs])
    pair_test = np.concatenate([first, second])
    pair_val_env = np.concatenate([second, first])
    acc_in = _acc_matrix(records, "in")
    pair_val = _take(acc_in[pair_rows], pair_val_env) if len(pair_rows) else np.empty(0)

    # one id per (run, step), shared by the single records and the pairs
    ids = _group_ids(
        [
            np.concatenate([a, b])
            for a, b in zip(
                columns.keys(rows, test_env, with_step=True),
                columns.keys(pair_rows, pair_test, with_step=True),
                strict=True,
            )
        ]
    )
    single_ids, pair_ids = ids[: len(rows)], ids[len(rows) :]
    n_ids = int(ids.max()) + 1 if len(ids) else 0
    n_single = np.bincount(single_ids, minlength=n_ids)

    width = acc_in.shape[1]
    by_domain = np.full((n_ids, width), np.nan)
    if len(pair_rows):
        # duplicates of (run, step, v): the last record read wins
        keep = _first_per_group(_group_ids([pair_ids, pair_val_env]), -pair_rows)
        by_domain[pair_ids[keep], pair_val_env[keep]] = pair_val[keep]

    val_by_domain = by_domain[single_ids]
    n_envs = columns.n_envs[rows]
    domains = np.arange(width)[None, :]
    mask = (domains < n_envs[:, None]) & (domains != test_env[:, None])
    complete = ~(np.isnan(val_by_domain) & mask).any(axis=1) & (n_single[single_ids] == 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        val = np.where(mask, val_by_domain, 0.0).sum(axis=1) / (n_envs - 1)
    test = _take(acc_in[rows], test_env)

    rows, test_env, val, test = rows[complete], test_env[complete], val[complete], test[complete]
    runs = _group_ids(columns.keys(rows, test_env))
    best = _first_per_group(runs, _descending(val), columns.step[rows])  # ties: the earliest step
    return _scores(records, rows[best], test_env[best], val[best], test[best])


def best_over_hparams(run_scores: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, algorithm, test env, trial seed), the run with the best validation accuracy
    (ties -> the largest hparams seed), sorted by those keys."""
    if run_scores.empty:
        return run_scores.reset_index(drop=True)
    groups = _group_ids([_codes(run_scores[key]) for key in GROUP_KEYS])
    val = run_scores["val_acc"].to_numpy(dtype=float)
    hparams = run_scores["hparams_seed"].to_numpy(dtype=np.int64)
    best = _first_per_group(groups, _descending(val), -hparams)
    chosen = run_scores.iloc[best]
    return chosen.sort_values(GROUP_KEYS, kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class SelectionMethod:
    """A model-selection method: `key` for the CLI, `name` as DomainBed prints it."""

    key: str
    name: str
    run_scores: Callable[[pd.DataFrame], pd.DataFrame]

    def select(self, records: pd.DataFrame) -> pd.DataFrame:
        """Chosen run per (dataset, algorithm, test_env, trial_seed): columns `SCORE_COLUMNS`."""
        return best_over_hparams(self.run_scores(records))


METHODS: dict[str, SelectionMethod] = {
    method.key: method
    for method in (
        SelectionMethod("iid", "training-domain validation set", iid_run_scores),
        SelectionMethod("loo", "leave-one-domain-out cross-validation", loo_run_scores),
        SelectionMethod("oracle", "test-domain validation set (oracle)", oracle_run_scores),
    )
}


def get_method(key: str) -> SelectionMethod:
    """The method registered under `key` ("iid", "loo" or "oracle"); KeyError otherwise."""
    return METHODS[key]


def select(records: pd.DataFrame, method: str) -> pd.DataFrame:
    """Shortcut for `get_method(method).select(records)`."""
    return get_method(method).select(records)
