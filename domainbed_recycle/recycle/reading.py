"""A short reading of a recycling table: which of the paper's claims this run supports, with figures.

Pure: it takes the collector's result (first selection method's per-dataset table, `Avg` column)
and the pipeline's analysis (`figures.analyze`), and says for each claim "supported" or "not
supported" next to the numbers it rests on. A claim whose rows or analysis are missing is skipped.
"""

from __future__ import annotations

import math
from typing import Any

from domainbed_recycle.collect import CollectResult
from domainbed_recycle.strategies.claims import (
    ABOVE_BASELINE,
    ABOVE_BASELINE_CLAIM,
    BASELINE,
    BEST_SOUP,
    OTHER_INITS,
    RECYCLING_VS_SOUPS,
)


def _averages(result: CollectResult, dataset: str) -> dict[str, float]:
    """Row -> mean test accuracy (%) over the dataset's held-out domains, first selection method."""
    for table in result.tables:
        if table.dataset == dataset:
            # the held-out domains of this run: columns with a number (a demo holds out only some)
            domains = table.mean.drop(columns=["Avg"], errors="ignore").dropna(axis="columns", how="all")
            column = domains.mean(axis="columns", skipna=False)
            return {row: float(value) for row, value in column.items() if not math.isnan(float(value))}
    return {}


def _verdict(ok: bool) -> str:
    return "supported" if ok else "NOT supported"


def reading(result: CollectResult, analysis: dict[str, Any]) -> str:
    """Lines under the table: the paper's claims, each supported or not by this run, with figures."""
    lines = ["Reading (first selection method; mean over held-out domains; analysis on trial 0):"]
    for dataset, entry in analysis.items():
        row = _averages(result, dataset).get
        claims: list[tuple[str, bool, str]] = []
        for kind, recycled_row, soup_row in RECYCLING_VS_SOUPS:
            rata, soup = row(recycled_row), row(soup_row)
            if rata is not None and soup is not None:
                claims.append((f"recycling >= soups ({kind})", rata >= soup, f"{rata:.1f} vs {soup:.1f}"))
        soup = row(BEST_SOUP)
        others = {name: row(name) for name in OTHER_INITS if row(name) is not None}
        if soup is not None and others:
            claims.append(("soups > inter-training and fusing", all(soup > v for v in others.values()),
                           f"{BEST_SOUP} {soup:.1f} vs " + ", ".join(f"{k} {v:.1f}" for k, v in others.items())))
        erm = row(BASELINE)
        if erm is not None:
            above = {name: row(name) for name in ABOVE_BASELINE if row(name) is not None}
            if above:
                claims.append((f"{ABOVE_BASELINE_CLAIM} > {BASELINE}", all(v > erm for v in above.values()),
                               f"{BASELINE} {erm:.1f} vs " + ", ".join(f"{k} {v:.1f}" for k, v in above.items())))
        premise = entry.get("premise") or {}
        cross, same = premise.get("mean_ratio_error_cross_init"), premise.get("mean_ratio_error_same_init")
        if cross is not None and same is not None:
            claims.append(("auxiliary inits make target runs more diverse", cross > same,
                           f"ratio-error {cross:.2f} across inits vs {same:.2f} from one init"))
        barrier = premise.get("mean_lmc_barrier_cross_init")
        if barrier is not None:
            claims.append(("runs from different inits are linearly connected (Hyp. 2)", barrier <= 0.01,
                           f"mean barrier {100 * barrier:.2f} points"))
        phi0, aux = premise.get("mean_acc_phi0_runs"), premise.get("mean_acc_aux_init_runs")
        if phi0 is not None and aux is not None:
            claims.append(("auxiliary-init runs as good as phi_0 runs (within 1 point)", aux >= phi0 - 0.01,
                           f"{100 * aux:.1f} vs {100 * phi0:.1f}"))
        for pool, fit in (entry.get("diversity_fit_per_pool") or {}).items():
            if fit:
                claims.append((f"diversity predicts the WA gain (Hyp. 1, {pool})", fit["r"] > 0,
                               f"r = {fit['r']:.2f} over {fit['n_pairs']} pairs"))
        lines.append(f"  {dataset}:")
        lines += [f"    - {claim}: {_verdict(ok)} ({figures})" for claim, ok, figures in claims]
    return "\n".join(lines)
