"""The numbers behind each claim of the reading, each with its 95% interval (pure: tables and analysis in).

Inputs are the collector's selected runs (one test accuracy per table row and cell) and one dataset's
entry of `analysis.json` (`figures.analyze`: every analysed run and pair of runs of every cell, i.e.
every (test domain, trial seed)). Units: accuracies and barriers in percentage points, ratio-errors as
they are, correlations as r.

- Table rows are compared by their paired differences over cells (`stats.t_interval`): a cell is one
  independent replicate (its own splits, seeds and model selection).
- Statistics of runs and pairs of runs use `stats.cluster_bootstrap`, resampling the trials of each
  test domain, then the runs of each cell; a run is identified by its hparams seed, which is also what
  pairs a run of the auxiliary pool with the LP-FT run of the same hyper-parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from domainbed_recycle import stats
from domainbed_recycle.stats import Interval
from domainbed_recycle.strategies.base import PHI0

Rows = list[dict[str, Any]]


def row_difference(selected: pd.DataFrame, dataset: str, a: str, b: str) -> Interval | None:
    """Paired difference (points) of table rows `a` − `b` over the cells both have, with its t interval.

    `selected` is a selection method's chosen runs (`CollectResult.selected[method]`: dataset,
    algorithm, test_env, trial_seed, test_acc in [0, 1]). Pooled (†) rows have one cell per test domain
    (trial seed -1), so two of them are paired over test domains. None if the rows share no cell.
    """
    if selected.empty:
        return None
    frame = selected[selected["dataset"] == dataset]
    keys = ["test_env", "trial_seed"]
    left = frame[frame["algorithm"] == a][[*keys, "test_acc"]]
    right = frame[frame["algorithm"] == b][[*keys, "test_acc"]]
    if left.empty or right.empty:
        return None
    both = left.merge(right, on=keys, suffixes=("_a", "_b"))
    if both.empty:
        return None
    return stats.t_interval(100 * (both["test_acc_a"].to_numpy(float) - both["test_acc_b"].to_numpy(float)))


def _cell_keys(rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """(cluster id, stratum id) per row: the cell (test domain, trial) and its test domain."""
    cells = [(int(r["test_env"]), int(r["trial_seed"])) for r in rows]
    index = {cell: k for k, cell in enumerate(dict.fromkeys(cells))}
    return np.array([index[c] for c in cells]), np.array([c[0] for c in cells])


def _bootstrap_mean(rows: Rows, values: np.ndarray, units: np.ndarray, n_boot: int) -> Interval | None:
    if not rows:
        return None
    clusters, strata = _cell_keys(rows)
    return stats.cluster_bootstrap(lambda i, w, g: stats.weighted_mean(values[i], w), clusters, units, strata,
                                   n_boot=n_boot)


def pools(entry: dict[str, Any]) -> tuple[str | None, str | None]:
    """(baseline pool, cross-init pool) among the analysed pools: the first whose runs all start from
    phi_0 (the LP-FT pool) and the first whose runs start from several inits (the auxiliary pool)."""
    inits: dict[str, set[str]] = {}
    for run in entry.get("runs", []):
        inits.setdefault(run["pool"], set()).add(run["init_label"])
    baseline = next((p for p, labels in inits.items() if labels == {PHI0}), None)
    cross = next((p for p, labels in inits.items() if len(labels) > 1), None)
    return baseline, cross


def _by_seed(entry: dict[str, Any], pool: str) -> dict[tuple[int, int, int], dict[str, Any]]:
    return {(r["test_env"], r["trial_seed"], r["hparams_seed"]): r for r in entry.get("runs", []) if r["pool"] == pool}


def _pairs_by_seeds(entry: dict[str, Any], pool: str) -> dict[tuple[int, int, int, int], dict[str, Any]]:
    found = {}
    for p in entry.get("pairs", []):
        if p["pool"] == pool:
            a, b = sorted((p["hparams_seed_a"], p["hparams_seed_b"]))
            found[(p["test_env"], p["trial_seed"], a, b)] = p
    return found


def premise_diversity(entry: dict[str, Any], n_boot: int = stats.N_BOOT) -> dict[str, Any] | None:
    """Premise (b), paired: for every pair of hparams seeds (h1, h2) whose auxiliary-pool runs start from
    different inits, its ratio-error minus that of the LP-FT runs with the same seeds (same
    hyper-parameters, both from phi_0). Pairs whose two auxiliary-pool runs are both phi_0 runs are the
    LP-FT pair itself and are left out (no double count).

    Returns {"delta": Interval (ratio-error), "n_pairs", "n_more_diverse", "barrier": Interval (points,
    midpoint barrier of the cross-init pairs), "max_barrier"} or None without both pools.
    """
    baseline, cross = pools(entry)
    if baseline is None or cross is None:
        return None
    same = _pairs_by_seeds(entry, baseline)
    rows, delta, barrier, units = [], [], [], []
    for key, pair in _pairs_by_seeds(entry, cross).items():
        if not pair.get("cross_init") or key not in same:
            continue
        a, b = pair["ratio_error"], same[key]["ratio_error"]
        if a is None or b is None or not (np.isfinite(a) and np.isfinite(b)):
            continue
        rows.append(pair)
        delta.append(a - b)
        barrier.append(100 * pair["barrier"])
        units.append(key[2:])
    if not rows:
        return None
    delta_a, barrier_a, units_a = np.array(delta), np.array(barrier), np.array(units)
    return {"delta": _bootstrap_mean(rows, delta_a, units_a, n_boot), "n_pairs": len(rows),
            "n_more_diverse": int((delta_a > 0).sum()),
            "barrier": _bootstrap_mean(rows, barrier_a, units_a, n_boot), "max_barrier": float(barrier_a.max())}


def premise_accuracy(entry: dict[str, Any], n_boot: int = stats.N_BOOT) -> dict[str, Any] | None:
    """Premise (c), paired: each auxiliary-init run's test accuracy minus that of the LP-FT run with the
    same hparams seed (points). The auxiliary pool's phi_0 runs are the LP-FT runs and are not counted.

    Returns {"delta": Interval (points), "n_runs", "aux", "phi0" (mean accuracies, points)} or None."""
    baseline, cross = pools(entry)
    if baseline is None or cross is None:
        return None
    lp = _by_seed(entry, baseline)
    rows, delta, aux, phi0, units = [], [], [], [], []
    for key, run in _by_seed(entry, cross).items():
        if run["init_label"] == PHI0 or key not in lp:
            continue
        rows.append(run)
        aux.append(100 * run["acc"])
        phi0.append(100 * lp[key]["acc"])
        delta.append(aux[-1] - phi0[-1])
        units.append(key[2])
    if not rows:
        return None
    return {"delta": _bootstrap_mean(rows, np.array(delta), np.array(units), n_boot), "n_runs": len(rows),
            "aux": float(np.mean(aux)), "phi0": float(np.mean(phi0))}


def lmc_barrier(entry: dict[str, Any], n_boot: int = stats.N_BOOT) -> dict[str, Any] | None:
    """Hypothesis 2 along the whole path (11 points): barrier (points) between the first runs of every two
    inits of each cell. Returns {"barrier": Interval, "n_pairs", "max_barrier"} or None."""
    rows = [b for b in entry.get("lmc_barriers", []) if b.get("barrier") is not None]
    if not rows:
        return None
    values = 100 * np.array([b["barrier"] for b in rows])
    units = np.array([(b["hparams_seed_a"], b["hparams_seed_b"]) for b in rows])
    return {"barrier": _bootstrap_mean(rows, values, units, n_boot), "n_pairs": len(rows),
            "max_barrier": float(values.max())}


def hypothesis1(entry: dict[str, Any], pool: str, control_gap: bool,
                n_boot: int = stats.N_BOOT) -> dict[str, Any] | None:
    """Hypothesis 1 in one pool: correlation of a pair's ratio-error with its weight-averaging gain *within
    cells* (each centred on its cell's means, so differences between test domains and trials cannot make
    it), optionally controlling for the pair's accuracy gap |acc_a − acc_b| (a weak run makes its pairs
    both more "diverse" and more gainful). Interval: bootstrap over cells and runs (pairs sharing a run
    are resampled together). Returns {"r": Interval, "n_pairs"} or None with fewer than 3 pairs."""
    rows = [p for p in entry.get("pairs", []) if p["pool"] == pool and p.get("ratio_error") is not None
            and np.isfinite(p["ratio_error"])]
    if len(rows) < 3:
        return None
    x = np.array([p["ratio_error"] for p in rows])
    y = np.array([p["gain"] for p in rows])
    gap = np.abs(np.array([p["acc_a"] - p["acc_b"] for p in rows]))
    units = np.array([(p["hparams_seed_a"], p["hparams_seed_b"]) for p in rows])
    clusters, strata = _cell_keys(rows)
    statistic: Callable[[np.ndarray, np.ndarray, np.ndarray], float]
    if control_gap:
        def statistic(i, w, g):
            return stats.partial_within_r(x[i], y[i], gap[i], g, w)
    else:
        def statistic(i, w, g):
            return stats.within_r(x[i], y[i], g, w)
    return {"r": stats.cluster_bootstrap(statistic, clusters, units, strata, n_boot=n_boot), "n_pairs": len(rows)}
