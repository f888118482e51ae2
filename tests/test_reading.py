"""The reading printed under a recycling table states each claim with the figures it rests on."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import package_literals

from domainbed_recycle.collect import CollectResult
from domainbed_recycle.collect.tables import ResultTable
from domainbed_recycle.recycle.reading import reading


def _result(avgs: dict[str, float]) -> CollectResult:
    mean = pd.DataFrame({"plain": avgs, "Avg": avgs})
    table = ResultTable("t", "iid", "TextureMNIST", mean, mean[["plain"]] * 0, mean[["plain"]] * 0 + 3)
    return CollectResult(1, {}, [table])


def test_each_claim_is_judged_from_its_numbers():
    avgs = {"ERM": 60.0, "LP-FT": 62.0, "Soup-uniform": 63.0, "Soup-greedy": 64.0, "InterTraining": 61.0,
            "Fusing": 61.5, "Ratatouille-uniform": 63.5, "Ratatouille-greedy": 63.0}
    analysis = {"TextureMNIST": {
        "premise": {"mean_ratio_error_cross_init": 0.9, "mean_ratio_error_same_init": 0.7,
                    "mean_lmc_barrier_cross_init": 0.03, "mean_acc_phi0_runs": 0.70, "mean_acc_aux_init_runs": 0.65},
        "diversity_fit_per_pool": {"LP-FT pool": {"r": -0.2, "n_pairs": 6}}}}
    text = reading(_result(avgs), analysis)
    assert "recycling >= soups (uniform): supported (63.5 vs 63.0)" in text
    assert "recycling >= soups (greedy): NOT supported (63.0 vs 64.0)" in text
    assert "soups > inter-training and fusing: supported" in text
    assert "LP-FT, inter-training and fusing > ERM: supported (ERM 60.0" in text
    assert "more diverse: supported (ratio-error 0.90 across inits vs 0.70" in text
    assert "linearly connected (Hyp. 2): NOT supported (mean barrier 3.00 points)" in text
    assert "as good as phi_0 runs (within 1 point): NOT supported (65.0 vs 70.0)" in text
    assert "(Hyp. 1, LP-FT pool): NOT supported (r = -0.20 over 6 pairs)" in text


def test_a_run_holding_out_some_domains_reads_those_domains():
    mean = pd.DataFrame({"plain": {"ERM": float("nan"), "LP-FT": float("nan")},
                         "photo": {"ERM": 30.0, "LP-FT": 35.0}, "Avg": {"ERM": float("nan"), "LP-FT": float("nan")}})
    table = ResultTable("t", "iid", "TextureMNIST", mean, mean * 0, mean * 0 + 2)
    text = reading(CollectResult(1, {}, [table]), {"TextureMNIST": {}})
    assert "ERM 30.0 vs LP-FT 35.0" in text


def test_missing_rows_skip_their_claims():
    text = reading(_result({"ERM": 50.0}), {"TextureMNIST": {}})
    assert "recycling" not in text and "TextureMNIST" in text


def test_claim_rows_come_from_the_strategies_that_report_them():
    from domainbed_recycle.strategies import STRATEGIES, claims
    from domainbed_recycle.strategies.builtin import Soup

    reported = {row for name in STRATEGIES for row in STRATEGIES.get(name).variants}
    named = {claims.BEST_SOUP, claims.BASELINE, *claims.ABOVE_BASELINE,
             *(row for _, *rows in claims.RECYCLING_VS_SOUPS for row in rows)}
    assert named <= reported, named - reported
    with pytest.raises(ValueError, match="reports no row 'Soup-median'"):
        claims._row(Soup, "median")


def test_no_strategy_row_is_spelled_outside_strategies_and_merge_ops():
    """A string literal (or an f-string's literal part) equal to a strategy's name or row, or to such a name
    followed by '-', appears only in strategies/ and merge_ops/ (whose files declare the operator rows);
    docstrings and the names that are also training algorithms (ERM, MovingAverage) are left out."""
    from domainbed_recycle.algorithms import ALGORITHMS
    from domainbed_recycle.strategies import STRATEGIES

    names = {n for name in STRATEGIES for n in (name, STRATEGIES.get(name).name, *STRATEGIES.get(name).variants)}
    names -= set(ALGORITHMS.names())
    spelled = names | {f"{n}-" for n in names}
    found = [f"{path}:{line}: {value!r}" for path, line, value in package_literals()
             if value in spelled and path.split("/")[0] not in ("strategies", "merge_ops")]
    assert "Soup-greedy" in names and "Ratatouille-" in spelled  # the check can find what it looks for
    assert not found, found
