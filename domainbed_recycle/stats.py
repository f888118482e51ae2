"""Uncertainty of the benchmark's claims: intervals, three-way verdicts, within-group correlations.

Pure numpy (and scipy's t quantiles); no run, no file. Two kinds of 95% intervals:

- `t_interval`: mean of independent values with Student's t interval. Used for paired differences
  of two table rows over the (test domain x trial) cells of a benchmark (a cell is one independent
  train-and-select replicate, so the cells are the units).
- `cluster_bootstrap`: percentile bootstrap of any statistic of *rows made of runs* (one run per row,
  or a pair of runs). Pairs of runs from one cell share runs, so they are not independent: each draw
  resamples cells (within their stratum, e.g. the trials of each test domain), then the runs of each
  drawn cell, and weighs a row by the product of its runs' multiplicities (a pair (i, j) counts
  m_i * m_j times, a pair whose run was not drawn drops out). Pairs sharing a run therefore move
  together, as resampling runs rather than pairs requires.

A verdict is three-way: a claim "θ > t" (or "θ < t") is *supported* when the whole interval lies on
the claimed side of t, *contradicted* when it lies wholly on the other side, *inconclusive* otherwise
(or when there is no interval, e.g. a single unit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CONTRADICTED",
    "INCONCLUSIVE",
    "SUPPORTED",
    "Interval",
    "centre_within",
    "cluster_bootstrap",
    "partial_within_r",
    "t_interval",
    "verdict",
    "weighted_mean",
    "within_r",
]

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
LEVEL = 0.95
MIN_UNITS = 3  # fewest independent units (cells) a t interval is made from
N_BOOT = 2000

# statistic(row indices [r], row weights [r] > 0, row groups [r]) -> float; the groups say which rows
# came from one drawn cluster (a cluster drawn twice is two groups).
Statistic = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval.

    Attributes:
        estimate: the statistic on the data as observed.
        low, high: interval bounds (nan when there is no interval, e.g. one unit).
        n: number of independent units behind it (cells, test domains, clusters).
        method: how the interval was made, in words (printed next to it).
        level: confidence level.
    """

    estimate: float
    low: float
    high: float
    n: int
    method: str
    level: float = LEVEL

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def scaled(self, factor: float) -> Interval:
        """The same interval in other units (e.g. fractions -> percentage points)."""
        return Interval(self.estimate * factor, self.low * factor, self.high * factor, self.n, self.method,
                        self.level)


def t_interval(values: ArrayLike, level: float = LEVEL) -> Interval:
    """Mean of `values` [n] (independent units) with its Student's t interval (n − 1 degrees of freedom).

    With fewer than `MIN_UNITS` units the bounds are nan (so the verdict is inconclusive): two cells whose
    differences happen to be equal (accuracies are counts of images) would otherwise give a zero-width
    interval and a verdict one degree of freedom cannot carry.
    """
    from scipy import stats  # imported here: scipy is slow to import

    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "paired t")
    mean = float(x.mean())
    spread = float(x.std(ddof=1)) if n > 1 else 0.0
    if n < MIN_UNITS:
        return Interval(mean, float("nan"), float("nan"), n, f"paired t (fewer than {MIN_UNITS} cells: no interval)")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * spread / np.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, "paired t", level)


def verdict(interval: Interval, threshold: float = 0.0, direction: str = ">") -> str:
    """Three-way verdict of the claim "θ `direction` threshold" (direction ">" or "<") from θ's interval."""
    if direction not in (">", "<"):
        raise ValueError(f"direction must be '>' or '<', got {direction!r}")
    low, high = interval.low, interval.high
    if not (np.isfinite(low) and np.isfinite(high)):
        return INCONCLUSIVE
    above, below = low > threshold, high < threshold
    if direction == ">":
        return SUPPORTED if above else CONTRADICTED if below else INCONCLUSIVE
    return SUPPORTED if below else CONTRADICTED if above else INCONCLUSIVE


def weighted_mean(values: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Σ w·v / Σ w (nan if the weights sum to 0)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    return float((w * v).sum() / total) if total > 0 else float("nan")


def centre_within(values: ArrayLike, groups: ArrayLike, weights: ArrayLike | None = None) -> np.ndarray:
    """`values` [n] or [n, p] minus their (weighted) mean within each group (groups [n] of any labels)."""
    return _demean(np.asarray(values, dtype=np.float64), np.asarray(groups),
                   np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64))


def _demean(values: np.ndarray, groups: np.ndarray, weights: np.ndarray) -> np.ndarray:
    if groups.dtype.kind in "iu" and len(groups) and groups.min() >= 0:
        index = groups  # small non-negative ints already (the bootstrap's draws): no sort needed
    else:
        index = np.unique(groups, return_inverse=True)[1].reshape(-1)
    totals = np.bincount(index, weights)
    with np.errstate(invalid="ignore", divide="ignore"):  # labels never used: 0/0, never indexed
        if values.ndim == 1:
            return values - (np.bincount(index, weights * values) / totals)[index]
        means = np.stack([np.bincount(index, weights * col) / totals for col in values.T], axis=1)
    return values - means[index]


def _weighted_r(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Weighted correlation of x and y, both already centred (nan if one is constant)."""
    sxx, syy = float((w * x * x).sum()), float((w * y * y).sum())
    if sxx <= 1e-24 or syy <= 1e-24:
        return float("nan")
    return float((w * x * y).sum() / np.sqrt(sxx * syy))


def within_r(x: ArrayLike, y: ArrayLike, groups: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Pearson correlation of x and y *within* groups: both centred on their (weighted) group means,
    so differences between groups (e.g. between test domains) cannot make or break the correlation."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w = np.ones_like(xa) if weights is None else np.asarray(weights, dtype=np.float64)
    g = np.asarray(groups)
    return _weighted_r(_demean(xa, g, w), _demean(ya, g, w), w)


def partial_within_r(x: ArrayLike, y: ArrayLike, covariates: ArrayLike, groups: ArrayLike,
                     weights: ArrayLike | None = None) -> float:
    """Correlation of x and y within groups *and* controlling for `covariates` [n] or [n, p]: the
    correlation of the residuals of x and y after a weighted least-squares fit on group offsets and the
    covariates (Frisch–Waugh: centre everything within groups, then regress on the centred covariates)."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w = np.ones_like(xa) if weights is None else np.asarray(weights, dtype=np.float64)
    g = np.asarray(groups)
    z = np.asarray(covariates, dtype=np.float64)
    z = z[:, None] if z.ndim == 1 else z
    xc, yc, zc = _demean(xa, g, w), _demean(ya, g, w), _demean(z, g, w)
    root = np.sqrt(w)[:, None]
    residuals = []
    for target in (xc, yc):
        beta, *_ = np.linalg.lstsq(zc * root, target * root[:, 0], rcond=None)
        residuals.append(target - zc @ beta)
    return _weighted_r(residuals[0], residuals[1], w)


@dataclass(frozen=True)
class _Cluster:
    rows: np.ndarray  # [r] row indices of this cluster
    units: np.ndarray  # [r, k] local unit index (0..n_units-1) of each row's runs
    n_units: int


def _clusters(clusters: np.ndarray, units: np.ndarray) -> list[_Cluster]:
    found = []
    for cluster in dict.fromkeys(clusters.tolist()):
        rows = np.flatnonzero(clusters == cluster)
        ids, local = np.unique(units[rows], return_inverse=True)
        found.append(_Cluster(rows, local.reshape(units[rows].shape), len(ids)))
    return found


def cluster_bootstrap(statistic: Statistic, clusters: ArrayLike, units: ArrayLike, strata: ArrayLike | None = None,
                      n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of `statistic` over rows grouped in clusters of runs.

    Args:
        statistic: (row indices, row weights, row groups) -> float, e.g. a weighted mean of the rows'
            values (see the module docstring). It is called once on the data as observed (every row,
            weight 1, group = its cluster) for the estimate.
        clusters: [R] cluster of each row (e.g. the cell: test domain x trial).
        units: [R] or [R, k] the runs (ids within the cluster) each row is made of: one for a run, two
            for a pair of runs.
        strata: [R] stratum of each row's cluster (e.g. its test domain); clusters are resampled within
            their stratum, so each draw keeps every stratum's number of clusters. None: one stratum.
        n_boot, level, seed: number of draws, confidence level, seed of the draws (same seed, same interval).

    Returns:
        Interval with n = number of clusters; nan bounds when fewer than half the draws give a finite value.
    """
    cl = np.asarray(clusters)
    un = np.asarray(units)
    un = un[:, None] if un.ndim == 1 else un
    st = np.zeros(len(cl), dtype=np.int64) if strata is None else np.asarray(strata)
    if not len(cl):
        return Interval(float("nan"), float("nan"), float("nan"), 0, "cluster bootstrap")
    groups = _clusters(cl, un)
    by_stratum: dict[Any, list[int]] = {}
    for k, group in enumerate(groups):
        by_stratum.setdefault(st[group.rows[0]].item(), []).append(k)
    estimate = float(statistic(np.arange(len(cl)), np.ones(len(cl)), cl))
    rng = np.random.default_rng(seed)
    draws = np.full(n_boot, np.nan)
    for b in range(n_boot):
        index, weight, label = [], [], []
        drawn = 0
        for members in by_stratum.values():
            for k in rng.choice(members, size=len(members), replace=True):
                group = groups[k]
                counts = rng.multinomial(group.n_units, np.full(group.n_units, 1.0 / group.n_units))
                w = counts[group.units[:, 0]].astype(np.float64)
                for column in range(1, group.units.shape[1]):
                    w *= counts[group.units[:, column]]
                keep = w > 0
                index.append(group.rows[keep])
                weight.append(w[keep])
                label.append(np.full(int(keep.sum()), drawn))
                drawn += 1
        idx = np.concatenate(index)
        if len(idx):
            draws[b] = statistic(idx, np.concatenate(weight), np.concatenate(label))
    finite = draws[np.isfinite(draws)]
    method = f"bootstrap over cells and runs ({n_boot} draws)"
    if len(finite) < n_boot / 2:
        return Interval(estimate, float("nan"), float("nan"), len(groups), method, level)
    low, high = np.quantile(finite, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(estimate, float(low), float(high), len(groups), method, level)
