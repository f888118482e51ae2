"""The reading of a recycling table: each of the paper's claims, its 95% interval and a three-way verdict.

Pure: `judge` takes the collector's result (its first selection method's chosen runs) and the
pipeline's analysis (`figures.analyze`, every cell) and returns, per dataset, one dict per claim;
`format_reading` prints them under the table. Each claim is a statement "θ > t" or "θ < t" about a
number θ with an interval (`evidence`): *supported* when the interval lies wholly on the claimed side
of t, *contradicted* when wholly on the other side, *inconclusive* otherwise (`stats.verdict`). A claim
whose rows or analysis are missing is skipped.
"""

from __future__ import annotations

import math
from typing import Any

from domainbed_recycle import stats
from domainbed_recycle.collect import CollectResult, get_method
from domainbed_recycle.recycle import evidence
from domainbed_recycle.stats import Interval
from domainbed_recycle.strategies.claims import COMPARISONS

POINTS = "accuracy difference (points)"

BARRIER_MAX = 1.0  # points: "linearly connected" (Hyp. 2) and the premise's barrier bound
WITHIN = 1.0  # points: "as good as" (premise c)

HEADER = ("Reading ({method}; 95% intervals: table rows = paired t over (test domain x trial) cells, pooled † rows "
          "over test domains; run and pair statistics = bootstrap resampling the trials of each test domain, "
          "then the runs of each cell; supported / contradicted = the interval lies wholly on the claim's / "
          "the other side of its threshold, else inconclusive):")


def _claim(claim: str, interval: Interval, threshold: float, direction: str, unit: str, units: str,
           what: str, figures: str = "", verdict: str | None = None) -> dict[str, Any]:
    return {"claim": claim, "verdict": verdict or stats.verdict(interval, threshold, direction),
            "estimate": interval.estimate, "low": interval.low, "high": interval.high, "n": interval.n,
            "units": units, "unit": unit, "threshold": threshold, "direction": direction,
            "method": interval.method, "what": what, "figures": figures}


def _table_claims(result: CollectResult, dataset: str) -> list[dict[str, Any]]:
    if not result.selected:
        return []
    selected = next(iter(result.selected.values()))
    claims = []
    for claim, a, b in COMPARISONS:
        interval = evidence.row_difference(selected, dataset, a, b)
        if interval is not None:
            units = "test domains" if "†" in a else "cells"
            claims.append(_claim(claim, interval, 0.0, ">", POINTS, units, f"{a} - {b}"))
    return claims


def _premise_claims(entry: dict[str, Any], n_boot: int) -> list[dict[str, Any]]:
    claims = []
    diversity = evidence.premise_diversity(entry, n_boot)
    lmc = evidence.lmc_barrier(entry, n_boot)
    if diversity is not None:
        barrier = diversity["barrier"]
        claims.append(_claim("runs from different inits are linearly connected (Hyp. 2, premise a)", barrier,
                             BARRIER_MAX, "<", "barrier (points)", "cells",
                             "midpoint barrier of cross-init pairs",
                             f"{diversity['n_pairs']} pairs, max {diversity['max_barrier']:.2f}"))
    if lmc is not None:
        claims.append(_claim("runs from different inits are linearly connected along the whole path (Hyp. 2, "
                             "11 points, first run of each init)", lmc["barrier"],
                             BARRIER_MAX, "<", "barrier (points)", "cells", "barrier",
                             f"{lmc['n_pairs']} pairs, max {lmc['max_barrier']:.2f}"))
    if diversity is not None:
        delta = diversity["delta"]
        more = stats.verdict(delta, 0.0, ">")
        claims.append(_claim("auxiliary inits add diversity (premise b; same hparams, paired)", delta, 0.0, ">",
                             "ratio-error difference", "cells", "ratio-error across inits - from phi_0",
                             f"more diverse in {diversity['n_more_diverse']} of {diversity['n_pairs']} pairs"))
        connected = stats.verdict(diversity["barrier"], BARRIER_MAX, "<")
        both = (stats.SUPPORTED if more == connected == stats.SUPPORTED else
                stats.CONTRADICTED if stats.CONTRADICTED in (more, connected) else stats.INCONCLUSIVE)
        claims.append(_claim(f"premise (b) as recycling needs it (more diverse and barrier < {BARRIER_MAX:g} point)",
                             delta, 0.0, ">", "ratio-error difference", "cells", "ratio-error difference",
                             f"barrier {_interval_text(diversity['barrier'])} points", verdict=both))
    accuracy = evidence.premise_accuracy(entry, n_boot)
    if accuracy is not None:
        claims.append(_claim(f"auxiliary-init runs as good as phi_0 runs (premise c; same hparams, within "
                             f"{WITHIN:g} point)", accuracy["delta"], -WITHIN, ">", POINTS, "cells",
                             "auxiliary-init run - phi_0 run",
                             f"{accuracy['n_runs']} runs: {accuracy['aux']:.1f} vs {accuracy['phi0']:.1f}"))
    return claims


def _hypothesis1_claims(entry: dict[str, Any], n_boot: int) -> list[dict[str, Any]]:
    claims = []
    for pool in dict.fromkeys(p["pool"] for p in entry.get("pairs", [])):
        for control, name in ((False, "within cells"), (True, "within cells, controlling for the accuracy gap")):
            fit = evidence.hypothesis1(entry, pool, control, n_boot)
            if fit is not None:
                claims.append(_claim(f"diversity predicts the WA gain (Hyp. 1, {pool}, {name})", fit["r"], 0.0, ">",
                                     "correlation r", "cells", "r", f"{fit['n_pairs']} pairs"))
    return claims


def judge(result: CollectResult, analysis: dict[str, Any],
          n_boot: int = stats.N_BOOT) -> dict[str, list[dict[str, Any]]]:
    """Per dataset of `analysis`, its claims (dicts: claim, verdict, estimate, low, high, n, units, unit,
    threshold, direction, method, what, figures), table comparisons first, then the premise, then
    Hypothesis 1. `n_boot`: bootstrap draws (seeded: the same inputs give the same intervals)."""
    return {dataset: _table_claims(result, dataset) + _premise_claims(entry, n_boot) +
            _hypothesis1_claims(entry, n_boot) for dataset, entry in analysis.items()}


def _number(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "nan"


def _interval_text(interval: Interval | dict[str, Any]) -> str:
    est, low, high = ((interval.estimate, interval.low, interval.high) if isinstance(interval, Interval)
                      else (interval["estimate"], interval["low"], interval["high"]))
    bounds = f"[{_number(low)}, {_number(high)}]" if math.isfinite(low) and math.isfinite(high) else "[no interval]"
    return f"{_number(est)} {bounds}"


def format_claim(claim: dict[str, Any]) -> str:
    """One line: '- claim: verdict (what = estimate [low, high] unit, n units; figures)'."""
    low, high = (v if v is not None else math.nan for v in (claim["low"], claim["high"]))
    text = _interval_text({"estimate": claim["estimate"], "low": low, "high": high})
    points = " points" if "points" in claim["unit"] else ""
    units = claim["units"].removesuffix("s") if claim["n"] == 1 else claim["units"]
    figures = f"; {claim['figures']}" if claim.get("figures") else ""
    return (f"- {claim['claim']}: {claim['verdict']} ({claim['what']} = {text}{points}, {claim['n']} {units}"
            f"{figures})")


def format_reading(claims: dict[str, list[dict[str, Any]]], selection: str = "iid") -> str:
    """The lines printed under the table."""
    lines = [HEADER.format(method=get_method(selection).name)]
    for dataset, judged in claims.items():
        lines.append(f"  {dataset}:")
        lines += [f"    {format_claim(claim)}" for claim in judged]
    return "\n".join(lines)


def reading(result: CollectResult, analysis: dict[str, Any], n_boot: int = stats.N_BOOT) -> str:
    """`format_reading(judge(result, analysis))`, for the result's first selection method."""
    selection = next(iter(result.selected), "iid")
    return format_reading(judge(result, analysis, n_boot), selection)
