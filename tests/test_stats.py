"""The statistics behind every verdict of the reading: intervals, three-way verdicts, within-group r."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from domainbed_recycle import stats


def test_t_interval_matches_the_textbook_value():
    interval = stats.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, s = sqrt(2.5), t(0.975, 4) = 2.776445
    half = 2.776445 * np.sqrt(2.5) / np.sqrt(5)
    assert interval.estimate == 3.0 and interval.n == 5
    assert interval.low == pytest.approx(3 - half, abs=1e-5) and interval.high == pytest.approx(3 + half, abs=1e-5)


def test_one_unit_has_no_interval_and_no_verdict():
    interval = stats.t_interval([0.7])
    assert interval.estimate == 0.7 and np.isnan(interval.low) and np.isnan(interval.high)
    assert stats.verdict(interval) == stats.INCONCLUSIVE


@pytest.mark.parametrize("values", [[-0.06, -0.06], [1.0, 2.0]])
def test_two_cells_give_no_interval_and_no_verdict(values):
    """Two cells whose differences are equal (accuracies are counts of images) made a zero-width
    interval and a "contradicted" verdict in the demo; fewer than 3 cells is inconclusive."""
    interval = stats.t_interval(values)
    assert interval.estimate == pytest.approx(float(np.mean(values)))
    assert np.isnan(interval.low) and np.isnan(interval.high) and "no interval" in interval.method
    assert stats.verdict(interval) == stats.INCONCLUSIVE


@pytest.mark.parametrize(("low", "high", "threshold", "direction", "expected"), [
    (0.1, 0.5, 0.0, ">", stats.SUPPORTED),
    (-0.5, -0.1, 0.0, ">", stats.CONTRADICTED),
    (-0.1, 0.5, 0.0, ">", stats.INCONCLUSIVE),
    (0.1, 0.9, 1.0, "<", stats.SUPPORTED),  # e.g. a barrier below 1 point
    (1.1, 2.0, 1.0, "<", stats.CONTRADICTED),
    (0.5, 1.5, 1.0, "<", stats.INCONCLUSIVE),
    (-0.5, 0.5, -1.0, ">", stats.SUPPORTED),  # e.g. "within 1 point": the whole interval above -1
])
def test_verdicts_are_three_way(low, high, threshold, direction, expected):
    interval = stats.Interval((low + high) / 2, low, high, 10, "test")
    assert stats.verdict(interval, threshold, direction) == expected


def test_within_r_removes_differences_between_groups():
    # inside each group y falls as x rises; the groups' offsets alone would make the pooled r positive
    x = np.array([0.0, 1, 2, 10, 11, 12])
    y = np.array([10.0, 9, 8, 20, 19, 18])
    groups = np.array([0, 0, 0, 1, 1, 1])
    assert np.corrcoef(x, y)[0, 1] > 0.8
    assert stats.within_r(x, y, groups) == pytest.approx(-1.0)


def test_partial_r_controls_for_a_common_cause():
    rng = np.random.default_rng(0)
    gap = rng.uniform(0, 1, 400)  # e.g. the accuracy gap of a pair drives both measures
    x = gap + 0.05 * rng.normal(size=400)
    y = gap + 0.05 * rng.normal(size=400)
    groups = np.repeat(np.arange(8), 50)
    assert stats.within_r(x, y, groups) > 0.9
    assert abs(stats.partial_within_r(x, y, gap, groups)) < 0.15
    # a real link survives the control
    y_linked = y + 2 * (x - gap)
    assert stats.partial_within_r(x, y_linked, gap, groups) > 0.6


def test_integer_weights_equal_duplicated_rows():
    rng = np.random.default_rng(1)
    x, y, z = rng.normal(size=(3, 30))
    groups = np.repeat([0, 1, 2], 10)
    weights = rng.integers(1, 4, size=30)
    rows = np.repeat(np.arange(30), weights)
    assert stats.within_r(x, y, groups, weights) == pytest.approx(stats.within_r(x[rows], y[rows], groups[rows]))
    assert stats.partial_within_r(x, y, z, groups, weights) == pytest.approx(
        stats.partial_within_r(x[rows], y[rows], z[rows], groups[rows]))
    assert stats.weighted_mean(x, weights) == pytest.approx(x[rows].mean())


def _pairs_of_runs(n_cells: int, m: int, rng: np.random.Generator, run_sd: float = 1.0):
    """Pair values driven by run effects (v_ij = a_i + a_j + noise): pairs sharing a run are correlated."""
    cells, units, values = [], [], []
    for cell in range(n_cells):
        effects = run_sd * rng.normal(size=m)
        for i, j in itertools.combinations(range(m), 2):
            cells.append(cell)
            units.append((i, j))
            values.append(effects[i] + effects[j] + 0.1 * rng.normal())
    return np.array(cells), np.array(units), np.array(values)


def _mean_of(values):
    return lambda index, weights, groups: stats.weighted_mean(values[index], weights)


def test_resampling_runs_widens_the_interval_of_pairs_sharing_runs():
    rng = np.random.default_rng(2)
    cells, units, values = _pairs_of_runs(8, 8, rng)
    by_runs = stats.cluster_bootstrap(_mean_of(values), cells, units, seed=0, n_boot=500)
    naive = stats.t_interval(values)  # as if the 224 pairs were independent
    assert by_runs.estimate == pytest.approx(values.mean())
    assert by_runs.low < by_runs.estimate < by_runs.high
    assert (by_runs.high - by_runs.low) > 2 * (naive.high - naive.low)
    assert by_runs.n == 8 and "bootstrap" in by_runs.method


def test_the_bootstrap_is_reproducible_and_covers_the_truth():
    rng = np.random.default_rng(3)
    covered = 0
    for trial in range(40):
        cells, units, values = _pairs_of_runs(6, 6, rng, run_sd=0.5)  # true mean 0
        interval = stats.cluster_bootstrap(_mean_of(values), cells, units, seed=trial, n_boot=300)
        covered += interval.low <= 0.0 <= interval.high
    assert covered >= 32  # nominal 95%: a bootstrap with 6 clusters covers somewhat less, never half
    again = stats.cluster_bootstrap(_mean_of(values), cells, units, seed=7, n_boot=300)
    assert again == stats.cluster_bootstrap(_mean_of(values), cells, units, seed=7, n_boot=300)


def test_strata_keep_their_number_of_clusters_in_every_draw():
    # two strata with very different means: resampling within strata never mixes them up
    values = np.array([0.0, 0.1, 10.0, 10.1])
    cells = np.array([0, 1, 2, 3])
    strata = np.array([0, 0, 1, 1])
    interval = stats.cluster_bootstrap(_mean_of(values), cells, np.zeros(4, dtype=int), strata, n_boot=200)
    assert 5.0 <= interval.low <= interval.high <= 5.1
    unstratified = stats.cluster_bootstrap(_mean_of(values), cells, np.zeros(4, dtype=int), n_boot=200)
    assert unstratified.high - unstratified.low > 5


def test_a_statistic_undefined_in_most_draws_gives_no_interval():
    values = np.array([1.0, 2.0])
    interval = stats.cluster_bootstrap(lambda i, w, g: float("nan"), np.array([0, 1]), np.array([0, 0]),
                                       n_boot=50)
    assert np.isnan(interval.low) and stats.verdict(interval) == stats.INCONCLUSIVE
    assert np.isnan(interval.estimate) and len(values) == 2
