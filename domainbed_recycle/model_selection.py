"""DomainBed's three model-selection methods, vectorised over a records frame.

Input: the frame of `records.load_records` (one row per record). A *run* is what DomainBed's
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
  `env{v}_in_acc` (the whole held-out domain v, *in* split). A step missing any of these is
  dropped; a run with no complete step is dropped; no run left -> no result (X).
  Per run the best step wins, ties -> the earliest step.
- test-domain oracle: only single-test-env runs; per run the last record (highest step; ties ->
  the last read), val = `env{test}_out_acc`, no early stopping.
- across hparams seeds: best val; ties -> the largest hparams seed (DomainBed sorts ascending,
  stably, then reverses).

NaN validation accuracies (impossible after `load_records`' validation) rank lowest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from domainbed_recycle.records import acc_columns

GROUP_KEYS = ["dataset", "algorithm", "test_env", "trial_seed"]
RUN_KEYS = [*GROUP_KEYS, "hparams_seed"]
SCORE_COLUMNS = [*RUN_KEYS, "step", "run_dir", "val_acc", "test_acc"]


def _acc_matrix(records: pd.DataFrame, split: str) -> np.ndarray:
    """(n_records, n_domains) accuracies of one split, NaN where a record has no such domain."""
    columns = acc_columns(records, split)
    if not columns:
        return np.empty((len(records), 0))
    return records[columns].to_numpy(dtype=float)


def _take(matrix: np.ndarray, env: np.ndarray) -> np.ndarray:
    """matrix[k, env[k]] for every row k."""
    if not len(env):
        return np.empty(0)
    return np.take_along_axis(matrix, env.astype(int)[:, None], axis=1)[:, 0]


def _pick(frame: pd.DataFrame, keys: list[str], by: list[str], ascending: list[bool]) -> pd.DataFrame:
    """First row of each `keys` group once rows are sorted by `by` (NaN `val_acc` ranks lowest)."""
    ranked = frame.assign(_val=frame["val_acc"].fillna(-np.inf))
    by = ["_val" if column == "val_acc" else column for column in by]
    ranked = ranked.sort_values(by, ascending=ascending, kind="stable")
    return ranked.drop_duplicates(keys, keep="first").drop(columns="_val")


def _empty_scores() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=object) for column in SCORE_COLUMNS})


def _test_env(records: pd.DataFrame, k: int) -> np.ndarray:
    """The k-th test env of every record (all of them have more than k)."""
    return np.fromiter((envs[k] for envs in records["test_envs"]), dtype=np.int64, count=len(records))


def single_test_env_records(records: pd.DataFrame) -> pd.DataFrame:
    """Records of runs with exactly one test env, with that env as column `test_env`."""
    single = records[records["n_test_envs"] == 1]
    return single.assign(test_env=_test_env(single, 0))


def iid_run_scores(records: pd.DataFrame) -> pd.DataFrame:
    """Training-domain validation: per run, the record with the best mean training-domain `out` acc."""
    single = single_test_env_records(records)
    if single.empty:
        return _empty_scores()
    test_env = single["test_env"].to_numpy()
    out = _acc_matrix(single, "out")
    domains = np.arange(out.shape[1])[None, :]
    mask = (domains < single["n_envs"].to_numpy()[:, None]) & (domains != test_env[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        val = np.where(mask, out, 0.0).sum(axis=1) / mask.sum(axis=1)
    scored = single.assign(val_acc=val, test_acc=_take(_acc_matrix(single, "in"), test_env))
    best = _pick(scored, RUN_KEYS, ["val_acc", "order"], [False, True])
    return best[SCORE_COLUMNS].reset_index(drop=True)


def oracle_run_scores(records: pd.DataFrame) -> pd.DataFrame:
    """Test-domain oracle: per run, its last record, scored by the test domain's `out` acc."""
    single = single_test_env_records(records)
    if single.empty:
        return _empty_scores()
    last = single.sort_values(["step", "order"], ascending=[False, False], kind="stable")
    last = last.drop_duplicates(RUN_KEYS, keep="first")
    test_env = last["test_env"].to_numpy()
    scored = last.assign(
        val_acc=_take(_acc_matrix(last, "out"), test_env),
        test_acc=_take(_acc_matrix(last, "in"), test_env),
    )
    return scored[SCORE_COLUMNS].sort_values(RUN_KEYS).reset_index(drop=True)


def _validation_pairs(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (two-test-env record, test env t): the other env v and the record's `env{v}_in_acc`.

    When several records share (run of t, step, v), the last one read wins, as in DomainBed.
    """
    pairs = records[records["n_test_envs"] == 2]
    first, second = _test_env(pairs, 0), _test_env(pairs, 1)
    keep = first != second
    pairs, first, second = pairs[keep], first[keep], second[keep]
    acc_in = _acc_matrix(pairs, "in")
    base = pairs[["dataset", "algorithm", "trial_seed", "hparams_seed", "step", "order"]]
    both = pd.concat(
        [
            base.assign(test_env=first, val_env=second, val=_take(acc_in, second)),
            base.assign(test_env=second, val_env=first, val=_take(acc_in, first)),
        ],
        ignore_index=True,
    )
    both = both.sort_values("order", kind="stable")
    return both.drop_duplicates([*RUN_KEYS, "step", "val_env"], keep="last")


def loo_run_scores(records: pd.DataFrame) -> pd.DataFrame:
    """Leave-one-domain-out cross-validation: per run, its best step whose every other domain
    has a matching two-test-env record (see the module docstring)."""
    single = single_test_env_records(records)
    if single.empty:
        return _empty_scores()
    step_keys = [*RUN_KEYS, "step"]
    counts = single.groupby(step_keys, sort=False)["order"].transform("size")
    single = single[counts.to_numpy() == 1]
    width = len(acc_columns(records, "in"))
    pairs = _validation_pairs(records)
    if pairs.empty or single.empty:
        return _empty_scores()
    wide = pairs.set_index([*step_keys, "val_env"])["val"].unstack("val_env")
    wide = wide.reindex(columns=range(width))
    wide.columns = [f"_val{v}" for v in range(width)]
    merged = single.merge(wide, how="left", left_on=step_keys, right_index=True)
    val_by_domain = merged[[f"_val{v}" for v in range(width)]].to_numpy(dtype=float)
    test_env = merged["test_env"].to_numpy()
    n_envs = merged["n_envs"].to_numpy()
    domains = np.arange(width)[None, :]
    mask = (domains < n_envs[:, None]) & (domains != test_env[:, None])
    complete = ~(np.isnan(val_by_domain) & mask).any(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        val = np.where(mask, val_by_domain, 0.0).sum(axis=1) / (n_envs - 1)
    scored = merged.assign(val_acc=val, test_acc=_take(_acc_matrix(merged, "in"), test_env))[complete]
    if scored.empty:
        return _empty_scores()
    best = _pick(scored, RUN_KEYS, ["val_acc", "step"], [False, True])
    return best[SCORE_COLUMNS].reset_index(drop=True)


def best_over_hparams(run_scores: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, algorithm, test env, trial seed), the run with the best validation accuracy
    (ties -> the largest hparams seed), sorted by those keys."""
    if run_scores.empty:
        return run_scores.reset_index(drop=True)
    best = _pick(run_scores, GROUP_KEYS, ["val_acc", "hparams_seed"], [False, False])
    return best.sort_values(GROUP_KEYS).reset_index(drop=True)


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
