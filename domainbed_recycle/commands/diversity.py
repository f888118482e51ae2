"""`drecycle diversity`: pairwise diversity of finished runs vs the gain of their weight averages."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from domainbed_recycle.errors import UserError

HELP = "Pairwise diversity of runs on their test domain vs the accuracy gain of their weight averages."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `drecycle diversity`."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders (at least 2)")
    parser.add_argument(
        "--test_env", type=int, default=None, help="domain to measure on (default: the runs' test domain)"
    )
    parser.add_argument(
        "--plot", default=None, metavar="OUT.png", help="write a PNG of WA gain vs ratio-error of the pairs"
    )
    parser.add_argument("--force", action="store_true", help="overwrite the --plot file if it exists")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of tables")


def run(args: argparse.Namespace) -> int:
    """Measure, print, and optionally plot."""
    if len(args.run_dirs) < 2:
        raise UserError(f"give at least 2 run folders, got {len(args.run_dirs)}")
    if args.plot:
        from domainbed_recycle.files import check_new_output

        check_new_output(args.plot, args.force, "--plot")
    from domainbed_recycle import analysis

    runs = [analysis.load_run(path) for path in args.run_dirs]
    evaluator = analysis.evaluator_for(runs)
    test_env = analysis.common_test_env(runs) if args.test_env is None else args.test_env
    predictions = analysis.test_predictions(runs, evaluator, test_env)
    report = analysis.diversity_report(runs, evaluator, test_env, predictions)
    pairs = analysis.pairwise_wa_gains(runs, evaluator, test_env, predictions)
    report["pairs"] = pairs
    report["wa_gain_fit"] = _gain_fit(pairs)
    if args.plot:
        report["plot"] = str(_plot(pairs, args.plot, test_env))
    if args.json:
        print(json.dumps(analysis.jsonable(report), indent=2, allow_nan=False))
    else:
        _print(report, runs[0].dataset)
    return 0


def _finite_pairs(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs whose ratio-error is defined (the models err together at least once)."""
    return [p for p in pairs if math.isfinite(p["ratio_error"])]


def _gain_fit(pairs: list[dict[str, Any]]) -> dict[str, float] | None:
    """Least-squares WA gain (pp) vs ratio-error over the pairs, or None with fewer than 2 defined pairs."""
    from domainbed_recycle.plots import linear_fit

    usable = _finite_pairs(pairs)
    if len(usable) < 2:
        return None
    slope, intercept, r, p = linear_fit([q["ratio_error"] for q in usable], [100 * q["gain"] for q in usable])
    return {"slope_pp_per_unit": slope, "intercept_pp": intercept, "r": r, "p": p, "n_pairs": len(usable)}


def _plot(pairs: list[dict[str, Any]], path: str, test_env: int) -> Path:
    """Scatter of each pair's WA gain (percentage points, may be negative) against its ratio-error."""
    from domainbed_recycle.plots import plot_diversity_vs_accuracy

    usable = _finite_pairs(pairs)
    if not usable:
        raise UserError("no pair has a defined ratio-error (no two models err together): nothing to plot")
    out, _, _, _ = plot_diversity_vs_accuracy(
        [p["ratio_error"] for p in usable], [p["gain"] for p in usable], [f"{p['i']}-{p['j']}" for p in usable],
        path, xlabel="diversity of the pair (ratio-error)", ylabel="WA accuracy − mean individual accuracy (pp)",
        title=f"Diversity vs weight-averaging gain (test domain {test_env})", signed=True,
    )
    return out


def _num(value: float, scale: float = 1.0, digits: int = 3) -> str:
    return "nan" if not math.isfinite(value) else f"{scale * value:.{digits}f}"


def _print(report: dict[str, Any], dataset: str) -> None:
    """Models table, pairs table, summary lines."""
    from tabulate import tabulate

    pct = lambda v: _num(v, 100, 1)  # noqa: E731
    models = [
        [i, path, label, pct(acc)]
        for i, (path, label, acc) in enumerate(
            zip(report["runs"], report["init_labels"], report["accuracies"], strict=True)
        )
    ]
    print(f"{dataset}, test domain {report['test_env']} ({report['n_samples']} samples of its in split)")
    print(tabulate(models, headers=["#", "run", "init", "test acc %"]))
    print()
    rows = [
        [f"{p['i']}-{p['j']}", _num(p["disagreement"]), _num(p["ratio_error"]), _num(p["q_statistic"]),
         pct(p["mean_acc"]), pct(p["wa_acc"]), _num(p["gain"], 100, 2), pct(p["ensemble_acc"])]
        for p in report["pairs"]
    ]
    print(tabulate(rows, headers=["pair", "disagree", "ratio-err", "Q", "mean acc %", "WA acc %",
                                  "WA gain pp", "ens acc %"], disable_numparse=True))
    print()
    mean = report["mean"]
    names = ("disagreement", "ratio_error", "q_statistic", "double_fault")
    print("mean over pairs: " + ", ".join(f"{name} {_num(mean[name])}" for name in names))
    print(f"ensemble of all {len(report['runs'])}: {pct(report['ensemble_accuracy'])}% vs mean individual "
          f"{pct(report['mean_accuracy'])}% (gain {_num(report['ensemble_gain'], 100, 2)} pp)")
    fit = report.get("wa_gain_fit")
    if fit:
        print(f"WA gain vs ratio-error over {fit['n_pairs']} pairs: slope {_num(fit['slope_pp_per_unit'])} "
              f"pp/unit, r={_num(fit['r'])}, p={_num(fit['p'], digits=2)}")
    if report.get("plot"):
        print(f"plot: {report['plot']}")
