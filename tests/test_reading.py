"""The reading printed under a recycling table: every claim with its interval and a three-way verdict,
judged on paired differences (table rows per cell; runs and pairs matched by hparams seed)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from conftest import package_literals

from domainbed_recycle.collect import CollectResult
from domainbed_recycle.recycle import evidence
from domainbed_recycle.recycle.reading import format_reading, judge, reading

DATASET = "TextureMNIST"
CELLS = [(env, trial) for env in (1, 2, 3) for trial in (0, 1)]
N_BOOT = 300  # bootstrap draws: fewer than the reading's 2000, enough for these clear-cut cases


def _selected(rows: dict[str, list[float]], pooled: dict[str, list[float]] | None = None) -> CollectResult:
    """Selected runs: each row's test accuracy per cell (in CELLS order); pooled rows per test domain."""
    records = [{"dataset": DATASET, "algorithm": name, "test_env": env, "trial_seed": trial, "test_acc": acc}
               for name, accs in rows.items() for (env, trial), acc in zip(CELLS, accs, strict=True)]
    for name, accs in (pooled or {}).items():
        records += [{"dataset": DATASET, "algorithm": name, "test_env": env, "trial_seed": -1, "test_acc": acc}
                    for env, acc in zip((1, 2, 3), accs, strict=True)]
    return CollectResult(len(records), {"iid": pd.DataFrame(records)}, [])


def _claims(text_or_claims, name):
    return next(c for c in text_or_claims if c["claim"].startswith(name))


def test_table_claims_are_paired_differences_over_cells_with_three_verdicts():
    base = np.array([0.60, 0.61, 0.70, 0.72, 0.50, 0.49])  # test domains differ by 20 points
    result = _selected({
        "Soup-uniform": base, "Ratatouille-uniform": base + 0.01,  # +1 point in every cell: supported
        "Soup-greedy": base, "Ratatouille-greedy": base - 0.02,  # -2 points everywhere: contradicted
        "InterTraining": base + np.array([0.03, -0.03, 0.02, -0.02, 0.01, -0.01]),  # noise around 0
        "LP-FT": base + 0.005, "ERM": base - 0.03,
    }, pooled={"Soup-uniform†": [0.6, 0.7, 0.5], "Ratatouille-uniform†": [0.61, 0.705, 0.52]})
    claims = judge(result, {DATASET: {}})[DATASET]
    uniform = _claims(claims, "recycling > soups (uniform)")
    assert uniform["verdict"] == "supported" and uniform["estimate"] == pytest.approx(1.0)
    assert uniform["n"] == 6 and uniform["units"] == "cells" and uniform["low"] == pytest.approx(1.0)
    assert _claims(claims, "recycling > soups (greedy)")["verdict"] == "contradicted"
    assert _claims(claims, "soups > inter-training (uniform soup)")["verdict"] == "inconclusive"
    assert _claims(claims, "inter-training > LP-FT")["verdict"] == "inconclusive"  # judged against LP-FT too
    assert _claims(claims, "LP-FT > ERM")["verdict"] == "supported"
    pooled = _claims(claims, "recycling > soups (pooled †)")
    assert pooled["n"] == 3 and pooled["units"] == "test domains"  # one pooled model per test domain
    assert not any(c["claim"].startswith("fusing") for c in claims)  # no Fusing row: no Fusing claim


def _entry(delta_re: float, acc_gap_aux: float, gain_of: str, seed: int = 0, m: int = 8, n_aux: int = 3) -> dict:
    """A synthetic analysis entry: every cell has an LP-FT pool (all phi_0) and an auxiliary pool whose run h
    starts from source h mod (K+1), run ⌊h/(K+1)⌋ mod 2; auxiliary-pool pairs from two inits have a
    ratio-error `delta_re` above the LP-FT pair of the same seeds; auxiliary-init runs are `acc_gap_aux`
    below phi_0 runs. `gain_of`: 'diversity' (gain grows with ratio-error) or 'gap' (both follow the
    pair's accuracy gap, no link of their own)."""
    rng = np.random.default_rng(seed)
    runs, pairs = [], []
    for env, trial in CELLS:
        skill = rng.normal(0, 0.03, m) + 0.1 * env  # test domains differ a lot
        for pool in ("LP-FT pool", "auxiliary pool"):
            feats, accs = [], []
            for h in range(m):
                source = h % (n_aux + 1)
                phi0 = pool == "LP-FT pool" or source == 0
                feats.append("phi0" if phi0 else f"aux{source}/{(h // (n_aux + 1)) % 2}")
                accs.append(skill[h] - (0 if phi0 else acc_gap_aux))
                runs.append({"test_env": env, "trial_seed": trial, "pool": pool, "hparams_seed": h,
                             "init_label": "phi0" if phi0 else f"aux:{source}", "acc": accs[-1]})
            for i, j in itertools.combinations(range(m), 2):
                gap = abs(accs[i] - accs[j])
                re = 0.5 + 0.1 * env + (delta_re if feats[i] != feats[j] else 0.0) + rng.normal(0, 0.02)
                if gain_of == "gap":
                    re += 3 * gap
                    gain = 0.5 * gap + rng.normal(0, 0.001)
                else:
                    gain = 0.05 * (re - 0.5 - 0.1 * env) + rng.normal(0, 0.001)
                pairs.append({"test_env": env, "trial_seed": trial, "pool": pool, "hparams_seed_a": i,
                              "hparams_seed_b": j, "init_a": feats[i], "init_b": feats[j],
                              "cross_init": feats[i] != feats[j], "ratio_error": re, "gain": gain,
                              "acc_a": accs[i], "acc_b": accs[j], "barrier": 0.002})
    return {"runs": runs, "pairs": pairs, "lmc_barriers": []}


def test_premise_b_is_paired_by_hparams_seeds_and_leaves_the_shared_phi0_pair_out():
    entry = _entry(delta_re=0.05, acc_gap_aux=0.0, gain_of="diversity")
    found = evidence.premise_diversity(entry, N_BOOT)
    # 28 pairs per cell; the auxiliary pool's two phi_0 runs (h = 0, 4) form the LP-FT pair itself
    assert found["n_pairs"] == 27 * len(CELLS)
    assert found["delta"].estimate == pytest.approx(0.05, abs=0.005) and found["delta"].low > 0
    assert found["barrier"].estimate == pytest.approx(0.2)
    claims = judge(_selected({}), n_boot=N_BOOT, analysis={DATASET: entry})[DATASET]
    assert _claims(claims, "auxiliary inits add diversity")["verdict"] == "supported"
    assert _claims(claims, "premise (b) as recycling needs it")["verdict"] == "supported"
    assert _claims(claims, "runs from different inits are linearly connected (Hyp. 2")["verdict"] == "supported"
    less = _entry(delta_re=-0.05, acc_gap_aux=0.0, gain_of="diversity")
    none = judge(_selected({}), n_boot=N_BOOT, analysis={DATASET: less})[DATASET]
    assert _claims(none, "auxiliary inits add diversity")["verdict"] == "contradicted"
    assert _claims(none, "premise (b) as recycling needs it")["verdict"] == "contradicted"


def test_premise_c_compares_each_auxiliary_init_run_with_the_phi0_run_of_its_hparams_seed():
    entry = _entry(delta_re=0.0, acc_gap_aux=0.05, gain_of="diversity")
    found = evidence.premise_accuracy(entry, N_BOOT)
    assert found["n_runs"] == 6 * len(CELLS)  # the 2 phi_0 runs of each auxiliary pool are not counted
    assert found["delta"].estimate == pytest.approx(-5.0)
    claims = judge(_selected({}), n_boot=N_BOOT, analysis={DATASET: entry})[DATASET]
    assert _claims(claims, "auxiliary-init runs as good as phi_0 runs")["verdict"] == "contradicted"
    close = judge(_selected({}), n_boot=N_BOOT, analysis={DATASET: _entry(0.0, 0.001, "diversity")})[DATASET]
    assert _claims(close, "auxiliary-init runs as good as phi_0 runs")["verdict"] == "supported"


def test_hypothesis1_is_judged_within_cells_and_controlling_for_the_accuracy_gap():
    linked = judge(_selected({}), n_boot=N_BOOT, analysis={DATASET: _entry(0.0, 0.0, "diversity")})[DATASET]
    for pool in ("LP-FT pool", "auxiliary pool"):
        name = f"diversity predicts the WA gain (Hyp. 1, {pool}, within cells"
        assert _claims(linked, f"{name})")["verdict"] == "supported"
        assert _claims(linked, f"{name}, controlling")["verdict"] == "supported"
    confounded = _entry(0.0, 0.0, "gap", seed=1)
    claims = judge(_selected({}), n_boot=N_BOOT, analysis={DATASET: confounded})[DATASET]
    within = _claims(claims, "diversity predicts the WA gain (Hyp. 1, LP-FT pool, within cells)")
    controlled = _claims(claims, "diversity predicts the WA gain (Hyp. 1, LP-FT pool, within cells, controlling")
    assert within["verdict"] == "supported"  # the accuracy gap drives both: a correlation, no link
    assert controlled["verdict"] != "supported" and abs(controlled["estimate"]) < 0.3


def test_every_printed_line_has_an_interval_and_one_of_three_verdicts():
    base = np.linspace(0.5, 0.7, 6)
    result = _selected({"Soup-uniform": base, "Ratatouille-uniform": base + 0.01, "ERM": base - 0.01,
                        "LP-FT": base})
    text = reading(result, {DATASET: _entry(0.02, 0.01, "diversity")}, N_BOOT)
    lines = [line for line in text.splitlines() if line.strip().startswith("- ")]
    assert len(lines) >= 10
    for line in lines:
        assert any(f": {verdict} (" in line for verdict in ("supported", "contradicted", "inconclusive")), line
        assert "[" in line and "]" in line, line
    assert text.splitlines()[0].startswith("Reading (training-domain validation set; 95% intervals")
    assert format_reading({DATASET: []}).endswith(f"  {DATASET}:")


def test_a_single_cell_gives_no_interval_and_no_verdict_but_inconclusive():
    result = CollectResult(2, {"iid": pd.DataFrame([
        {"dataset": DATASET, "algorithm": name, "test_env": 4, "trial_seed": 0, "test_acc": acc}
        for name, acc in (("Soup-greedy", 0.5), ("Ratatouille-greedy", 0.6))])}, [])
    (claim,) = judge(result, {DATASET: {}})[DATASET]
    assert claim["verdict"] == "inconclusive" and np.isnan(claim["low"])
    assert "[no interval]" in reading(result, {DATASET: {}})


def test_claim_rows_come_from_the_strategies_that_report_them():
    from domainbed_recycle.strategies import STRATEGIES, claims
    from domainbed_recycle.strategies.builtin import Soup

    reported = {row for name in STRATEGIES for row in STRATEGIES.get(name).variants}
    pooled = {row for name in STRATEGIES for row in STRATEGIES.get(name).pooled}
    named = {claims.BEST_SOUP, claims.BASELINE, *claims.ABOVE_BASELINE,
             *(row for _, *rows in claims.RECYCLING_VS_SOUPS for row in rows),
             *(row for _, *rows in claims.COMPARISONS for row in rows)}
    assert named <= reported | pooled, named - reported - pooled
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
