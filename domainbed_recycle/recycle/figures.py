"""The recycling pipeline's analysis stage: the paper's figures per target dataset, and their numbers.

Into `<out>/plots/` and `<out>/analysis.json`:
- OOD accuracy vs number of averaged models (each strategy's curves), mean over cells;
- diversity (ratio-error) vs weight-averaging gain of pairs of runs (Hypothesis 1), per analysis
  pool a strategy declares, trial 0;
- linear mode connectivity between runs from different inits (Hypothesis 2) of the strategies that
  declare `lmc_across_inits`, trial 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from domainbed_recycle import analysis, plots
from domainbed_recycle.checkpoints import read_metadata
from domainbed_recycle.evaluation import EvaluatorCache
from domainbed_recycle.recycle.combine import COMBINED, combined_outcomes, evaluator, read_marker, run_ids, write_marker
from domainbed_recycle.recycle.stages import Plan
from domainbed_recycle.strategies.base import PHI0, Cell, RunRef, Strategy

PLOTS, ANALYSIS = "plots", "analysis.json"
MARKER = "_analysis.json"  # in <out>/combined/: the runs the saved analysis was made from


def analyze(cells: dict[Cell, dict[str, dict[str, list[RunRef]]]], strategies: list[Strategy], datasets: list[str],
            out: Path, cache: EvaluatorCache) -> dict[str, Any]:
    """Draw the figures and write `analysis.json`; returns its content (per dataset).

    Skipped, returning the saved content, when `analysis.json` was made from exactly these runs (a
    marker in `<out>/combined/` records them), so rerunning a finished pipeline redoes nothing."""
    inputs = {"datasets": datasets, "strategies": [s.name for s in strategies],
              "cells": [[cell.dataset, cell.test_env, cell.trial_seed,
                         {name: run_ids(pools) for name, pools in per.items()}] for cell, per in cells.items()]}
    marker = out / COMBINED / MARKER
    if read_marker(marker).get("inputs") == inputs and (out / ANALYSIS).is_file() and (out / PLOTS).is_dir():
        try:
            return json.loads((out / ANALYSIS).read_text())
        except ValueError:  # damaged: made again below
            pass
    marker.unlink(missing_ok=True)
    result: dict[str, Any] = {}
    for dataset in datasets:
        dataset_cells = [c for c in cells if c.dataset == dataset]
        entry: dict[str, Any] = {"acc_vs_num_models": _curves(dataset, dataset_cells, cells, out)}
        first_trial = [c for c in dataset_cells if c.trial_seed == 0]
        pairs, barriers, lmc_curves = [], [], {}
        for cell in first_trial:
            for strategy in strategies:
                runs = _runs(cells[cell].get(strategy.name, {}))
                if strategy.analysis_pool and len(runs) >= 2:
                    pool, label = strategy.analysis_pool
                    for pair in analysis.pairwise_wa_gains(runs, evaluator(cache, cell, runs[0]), cell.test_env):
                        pairs.append(_pair_entry(pair, runs, out) | {"pool": pool, "label": label,
                                                                     "test_env": cell.test_env})
                if strategy.lmc_across_inits:
                    for a, b, lmc in _lmc_across_inits(runs, cell, cache):
                        barriers.append({"test_env": cell.test_env, "a": a, "b": b, "barrier": lmc["test_barrier"]})
                        if cell.test_env == dataset_cells[0].test_env:
                            lmc_curves[f"{a} ↔ {b}"] = lmc["test_curve"]
        entry |= {"pairs": pairs, "lmc_barriers": barriers, "premise": premise(pairs, barriers)}
        fit = _diversity_figure(dataset, pairs, out)
        if fit:
            entry["diversity_fit"] = fit
        entry["diversity_fit_per_pool"] = {
            pool: _fit([p for p in pairs if p["pool"] == pool]) for pool in dict.fromkeys(p["pool"] for p in pairs)}
        if lmc_curves:
            plots.plot_lmc_curves(lmc_curves, out / PLOTS / f"{dataset}_lmc.png",
                                  title=f"{dataset}: LMC across inits (test domain {dataset_cells[0].test_env})")
        result[dataset] = entry
    (out / ANALYSIS).write_text(json.dumps(analysis.jsonable(result), indent=1))
    write_marker(marker, {"inputs": inputs})
    return result


def _pair_entry(pair: dict[str, Any], runs: list[RunRef], out: Path) -> dict[str, Any]:
    """A pair of runs as analysis.json keeps it: both inits and hparams seeds, paths relative to `out`,
    the ensemble gain, and the barrier of the 3-point path (0, ½, 1): max(0, mean acc − WA acc)."""
    a, b = runs[pair["i"]], runs[pair["j"]]
    return pair | {
        "run_a": str(a.output_dir.relative_to(out)), "run_b": str(b.output_dir.relative_to(out)),
        "init_a": a.init_label, "init_b": b.init_label,
        "hparams_seed_a": a.config.get("hparams_seed", 0), "hparams_seed_b": b.config.get("hparams_seed", 0),
        "ensemble_gain": pair["ensemble_acc"] - pair["mean_acc"],
        "barrier": max(0.0, pair["mean_acc"] - pair["wa_acc"]),
    }


def premise(pairs: list[dict[str, Any]], barriers: list[dict[str, Any]]) -> dict[str, Any]:
    """The paper's premise on the held-out domains, from the analysed pairs (accuracies in [0, 1]):
    (a) target runs from different inits are linearly connected (mean barrier), (b) they are more
    diverse than runs from one init (mean ratio-error), (c) auxiliary-init runs are about as good as
    phi_0 runs (mean individual test accuracy)."""
    cross = [p for p in pairs if p["init_a"] != p["init_b"]]
    same = [p for p in pairs if p["init_a"] == p["init_b"]]
    acc: dict[str, list[float]] = {"phi0": [], "aux": []}
    for p in pairs:
        for init, value in ((p["init_a"], p["acc_a"]), (p["init_b"], p["acc_b"])):
            acc["phi0" if init == PHI0 else "aux"].append(value)

    def mean(values: list[float]) -> float | None:
        values = [v for v in values if np.isfinite(v)]
        return float(np.mean(values)) if values else None

    return {
        "mean_lmc_barrier_cross_init": mean([b["barrier"] for b in barriers]),
        "mean_midpoint_barrier_cross_init": mean([p["barrier"] for p in cross]),
        "mean_ratio_error_cross_init": mean([p["ratio_error"] for p in cross]),
        "mean_ratio_error_same_init": mean([p["ratio_error"] for p in same]),
        "mean_acc_phi0_runs": mean(acc["phi0"]), "mean_acc_aux_init_runs": mean(acc["aux"]),
        "n_pairs_cross_init": len(cross), "n_pairs_same_init": len(same),
    }


def _fit(pairs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Hypothesis 1 on one pool: least-squares fit of WA gain (pp) on ratio-error."""
    finite = [p for p in pairs if np.isfinite(p["ratio_error"])]
    if len(finite) < 3:
        return None
    slope, _, r, pvalue = plots.linear_fit(np.array([p["ratio_error"] for p in finite]),
                                           100 * np.array([p["gain"] for p in finite]))
    return {"slope_pp_per_unit": slope, "r": r, "p": pvalue, "n_pairs": len(finite)}


def _runs(pools: dict[str, list[RunRef]]) -> list[RunRef]:
    return [run for pool in pools.values() for run in pool]


def _curves(dataset: str, dataset_cells: list[Cell], cells: dict[Cell, Any], out: Path) -> dict[str, Any]:
    """Mean over cells of each variant's accuracy-vs-number-of-averaged-models curve (and its plot)."""
    curves: dict[str, dict[int, list[float]]] = {}
    for cell in dataset_cells:
        for name in cells[cell]:
            for outcome in combined_outcomes(out, cell, name):
                for k, acc in outcome.get("info", {}).get("curve", []):
                    curves.setdefault(outcome["variant"], {}).setdefault(int(k), []).append(acc)
    mean = {v: [(k, float(np.mean(a))) for k, a in sorted(c.items())] for v, c in curves.items()}
    if mean:
        plots.plot_acc_vs_num_models(mean, out / PLOTS / f"{dataset}_acc_vs_num_models.png",
                                     title=f"{dataset}: OOD accuracy vs number of averaged models")
    return mean


def _lmc_across_inits(runs: list[RunRef], cell: Cell, cache: EvaluatorCache) -> list[tuple[str, str, dict]]:
    """LMC between the first run of each init and the first run of every other init."""
    by_init: dict[str, RunRef] = {}
    for run in runs:
        by_init.setdefault(run.init_label, run)
    labels = list(by_init)
    if len(labels) < 2:
        return []
    ev = evaluator(cache, cell, runs[0])
    return [(a, b, analysis.lmc_between(by_init[a], by_init[b], ev, cell.test_env, validation=False))
            for i, a in enumerate(labels) for b in labels[i + 1:]]


def _diversity_figure(dataset: str, pairs: list[dict[str, Any]], out: Path) -> dict[str, Any] | None:
    """Scatter of ratio-error vs WA gain over every analysed pair, with its linear fit."""
    finite = [p for p in pairs if np.isfinite(p["ratio_error"])]
    if len(finite) < 2:
        return None
    _, slope, r, pvalue = plots.plot_diversity_vs_accuracy(
        [p["ratio_error"] for p in finite], [p["gain"] for p in finite], [p["label"] for p in finite],
        out / PLOTS / f"{dataset}_diversity_vs_wa_gain.png", xlabel="ratio-error of the pair",
        ylabel="WA acc − mean individual acc (pp)", signed=True,
        title=f"{dataset}: diversity vs weight-averaging gain (pairs of runs)")
    return {"slope_pp_per_unit": slope, "r": r, "p": pvalue, "n_pairs": len(finite)}


def init_report(plan: Plan, cache: EvaluatorCache) -> dict[str, list[dict[str, Any]]]:
    """`analysis.init_paths` of every auxiliary featurizer, per (target dataset, test domain), trial 0:
    the diagnostic for choosing a regime before spending a full benchmark."""
    report = {}
    for cell in plan.cells:
        if cell.trial_seed != 0:
            continue
        probe = plan.probe_jobs[(cell.dataset, cell.test_env)].run.best_checkpoint
        aux = [(f"{source.label}#{i}", path) for source in plan.inits[cell].auxiliary
               for i, path in enumerate(source.checkpoints)]
        ev = cache.get(cell.dataset, cell.trial_seed, read_metadata(probe)["arch"])
        report[f"{cell.dataset} test_env={cell.test_env}"] = analysis.init_paths(
            plan.foundation, aux, probe, ev, cell.test_env)
    return report


def format_init_report(report: dict[str, list[dict[str, Any]]]) -> str:
    """One line per featurizer: distance, probe accuracy at λ = 0, ½, 1 and the barrier (percent)."""
    lines = []
    for where, rows in report.items():
        lines.append(f"{where}: target probe on (1-λ)φ0 + λφ_aux")
        lines.append(f"  {'featurizer':<24} {'rel.dist':>8} {'test λ=0':>9} {'λ=.5':>6} {'λ=1':>6} "
                     f"{'barrier':>8} {'val λ=1':>8} {'barrier':>8}")
        for row in rows:
            test = dict(row["test_curve"])
            lines.append(f"  {row['label']:<24} {row['relative_distance']:8.3f} {100 * test[0.0]:9.1f} "
                         f"{100 * test[0.5]:6.1f} {100 * test[1.0]:6.1f} {100 * row['test_barrier']:8.1f} "
                         f"{100 * dict(row['val_curve'])[1.0]:8.1f} {100 * row['val_barrier']:8.1f}")
    return "\n".join(lines)
