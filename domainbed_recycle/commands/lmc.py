"""`drecycle lmc`: accuracy along the straight line between two runs' weights, and its barrier."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

HELP = "Linear mode connectivity of two runs: accuracy of (1-λ)θ_a + λθ_b on the test domain, barrier."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `drecycle lmc`."""
    parser.add_argument("run_a", metavar="RUN_A", help="finished run folder (λ = 0)")
    parser.add_argument("run_b", metavar="RUN_B", help="finished run folder (λ = 1)")
    parser.add_argument("--points", type=int, default=11, help="evenly spaced λ in [0, 1] (default 11)")
    parser.add_argument(
        "--test_env", type=int, default=None, help="domain to measure on (default: the runs' test domain)"
    )
    parser.add_argument("--no_val", action="store_true", help="skip the training-domain validation curve")
    parser.add_argument("--plot", default=None, metavar="OUT.png", help="write the curves as a PNG")
    parser.add_argument("--force", action="store_true", help="overwrite the --plot file if it exists")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Measure, print, and optionally plot."""
    from domainbed_recycle.files import check_new_output
    from domainbed_recycle.validation import Annotated, Bounds, check

    check(args.points, Annotated[int, Bounds(2, limit="points")], "--points")  # 2: the two endpoints
    if args.plot:
        check_new_output(args.plot, args.force, "--plot")
    import numpy as np

    from domainbed_recycle import analysis

    runs = [analysis.load_run(args.run_a), analysis.load_run(args.run_b)]
    evaluator = analysis.evaluator_for(runs)
    test_env = analysis.common_test_env(runs) if args.test_env is None else args.test_env
    lambdas = [float(x) for x in np.linspace(0.0, 1.0, args.points)]
    result = analysis.lmc_between(runs[0], runs[1], evaluator, test_env, lambdas, validation=not args.no_val)
    if args.plot:
        from domainbed_recycle.plots import plot_lmc_curves

        curves = {f"test domain {test_env}": result["test_curve"]}
        if result["val_curve"]:
            curves["training-domain validation"] = result["val_curve"]
        title = f"LMC: {runs[0].name} → {runs[1].name}"
        result["plot"] = str(plot_lmc_curves(curves, args.plot, title=title))
    if args.json:
        print(json.dumps(analysis.jsonable(result), indent=2, allow_nan=False))
    else:
        _print(result, runs[0].dataset)
    return 0


def _pct(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{100 * value:.1f}"


def _print(result: dict[str, Any], dataset: str) -> None:
    from tabulate import tabulate

    val = dict(result["val_curve"] or [])
    rows = []
    for lam, acc in result["test_curve"]:
        row = [f"{lam:.3g}", _pct(acc)]
        if val:
            row.append(_pct(val[lam]))
        rows.append(row)
    headers = ["λ", f"test acc % (domain {result['test_env']})"]
    if val:
        headers.append("val acc % (training domains)")
    print(f"{dataset}: λ = 0 is {result['run_a']}, λ = 1 is {result['run_b']}")
    print(tabulate(rows, headers=headers, disable_numparse=True))
    print(f"barrier (test): {100 * result['test_barrier']:.2f} pp")
    if val:
        print(f"barrier (val, domains {result['val_envs']}): {100 * result['val_barrier']:.2f} pp")
    if result.get("plot"):
        print(f"plot: {result['plot']}")
