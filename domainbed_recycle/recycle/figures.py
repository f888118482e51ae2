"""The recycling pipeline's analysis stage: the paper's figures per target dataset, and their numbers.

Into `<out>/plots/` and `<out>/analysis.json`, over every cell (test domain x trial seed):
- OOD accuracy vs number of averaged models (each strategy's curves), mean over cells with 95% t
  intervals as error bars;
- every run of each analysis pool a strategy declares (test accuracy, init, hparams seed) and every
  pair of runs of a pool: ratio-error, weight-averaging gain, midpoint barrier (Hypothesis 1, premise);
  the diversity figure plots them within cells (each centred on its cell's means);
- linear mode connectivity between the first runs of every two inits of the strategies that declare
  `lmc_across_inits` (Hypothesis 2), mean curve over cells with intervals;
- `record_claims` adds the reading's claims (`reading.judge`) to `analysis.json` and draws them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from domainbed_recycle import analysis, plots, stats
from domainbed_recycle.checkpoints import read_metadata
from domainbed_recycle.evaluation import EvaluatorCache
from domainbed_recycle.recycle import evidence
from domainbed_recycle.recycle.combine import COMBINED, combined_outcomes, evaluator, read_marker, run_ids, write_marker
from domainbed_recycle.recycle.stages import Plan
from domainbed_recycle.strategies.base import Cell, RunRef, Strategy

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
        runs_seen, pairs, barriers = [], [], []
        for cell in dataset_cells:
            where = {"test_env": cell.test_env, "trial_seed": cell.trial_seed}
            for strategy in strategies:
                runs = _runs(cells[cell].get(strategy.name, {}))
                if strategy.analysis_pool and len(runs) >= 2:
                    pool, label = strategy.analysis_pool
                    ev = evaluator(cache, cell, runs[0])
                    predictions = analysis.test_predictions(runs, ev, cell.test_env)
                    for index, (run, probs) in enumerate(zip(runs, predictions[0], strict=True)):
                        runs_seen.append(where | _run_entry(run, out) | {
                            "pool": pool, "label": label, "index": index,
                            "acc": float(np.mean(probs.argmax(axis=-1) == predictions[1]))})
                    for pair in analysis.pairwise_wa_gains(runs, ev, cell.test_env, predictions=predictions):
                        pairs.append(where | _pair_entry(pair, runs, out) | {"pool": pool, "label": label})
                if strategy.lmc_across_inits:
                    for a, b, lmc in _lmc_across_inits(runs, cell, cache):
                        barriers.append(where | {"a": a.init_label, "b": b.init_label,
                                                 "hparams_seed_a": _seed(a), "hparams_seed_b": _seed(b),
                                                 "barrier": lmc["test_barrier"], "curve": lmc["test_curve"]})
        entry |= {"runs": runs_seen, "pairs": pairs, "lmc_barriers": barriers}
        entry["diversity_within_cells"] = _diversity_figure(dataset, entry, out)
        if barriers:
            _lmc_figure(dataset, barriers, out)
        result[dataset] = entry
    (out / ANALYSIS).write_text(json.dumps(analysis.jsonable(result), indent=1))
    write_marker(marker, {"inputs": inputs})
    return result


def record_claims(out: Path, claims: dict[str, list[dict[str, Any]]]) -> None:
    """Add each dataset's judged claims (`reading.judge`) to `analysis.json` and draw them with their
    intervals (`<dataset>_claims.png`)."""
    path = out / ANALYSIS
    content = json.loads(path.read_text()) if path.is_file() else {}
    for dataset, judged in claims.items():
        content.setdefault(dataset, {})["claims"] = judged
        if judged:
            plots.plot_claims(judged, out / PLOTS / f"{dataset}_claims.png",
                              title=f"{dataset}: the paper's claims, 95% intervals")
    path.write_text(json.dumps(analysis.jsonable(content), indent=1))


def _seed(run: RunRef) -> int:
    return int(run.config.get("hparams_seed", 0))


def _run_entry(run: RunRef, out: Path) -> dict[str, Any]:
    """A run as analysis.json keeps it: its folder and init (relative to `out` when inside), hparams seed,
    training-domain validation accuracy."""
    featurizer = str(run.config.get("init_featurizer"))
    inside = Path(featurizer).is_relative_to(out)
    return {"run": str(run.output_dir.relative_to(out)), "hparams_seed": _seed(run), "init_label": run.init_label,
            "featurizer": str(Path(featurizer).relative_to(out)) if inside else featurizer,
            "val_acc": run.val_acc}


def _pair_entry(pair: dict[str, Any], runs: list[RunRef], out: Path) -> dict[str, Any]:
    """A pair of runs as analysis.json keeps it: both inits and hparams seeds, paths relative to `out`,
    whether the two featurizers they started from differ, the ensemble gain, and the barrier of the
    3-point path (0, ½, 1): max(0, mean acc − WA acc)."""
    a, b = runs[pair["i"]], runs[pair["j"]]
    return pair | {
        "run_a": str(a.output_dir.relative_to(out)), "run_b": str(b.output_dir.relative_to(out)),
        "init_a": a.init_label, "init_b": b.init_label,
        "hparams_seed_a": _seed(a), "hparams_seed_b": _seed(b),
        "cross_init": a.config.get("init_featurizer") != b.config.get("init_featurizer"),
        "ensemble_gain": pair["ensemble_acc"] - pair["mean_acc"],
        "barrier": max(0.0, pair["mean_acc"] - pair["wa_acc"]),
    }


def _runs(pools: dict[str, list[RunRef]]) -> list[RunRef]:
    return [run for pool in pools.values() for run in pool]


def _with_interval(values: list[float]) -> list[float]:
    """[mean, low, high, n] of accuracies in [0, 1]: 95% t interval over cells, clipped to [0, 1] (low =
    high = mean for a single cell)."""
    interval = stats.t_interval(values)
    low = max(0.0, interval.low) if np.isfinite(interval.low) else interval.estimate
    high = min(1.0, interval.high) if np.isfinite(interval.high) else interval.estimate
    return [interval.estimate, low, high, interval.n]


def _curves(dataset: str, dataset_cells: list[Cell], cells: dict[Cell, Any], out: Path) -> dict[str, Any]:
    """Each variant's accuracy-vs-number-of-averaged-models curve: per M, [M, mean, low, high, n cells]
    (and its plot, with the intervals as error bars)."""
    curves: dict[str, dict[int, list[float]]] = {}
    for cell in dataset_cells:
        for name in cells[cell]:
            for outcome in combined_outcomes(out, cell, name):
                for k, acc in outcome.get("info", {}).get("curve", []):
                    curves.setdefault(outcome["variant"], {}).setdefault(int(k), []).append(acc)
    summary = {v: [[k, *_with_interval(a)] for k, a in sorted(c.items())] for v, c in curves.items()}
    if summary:
        plots.plot_acc_vs_num_models({v: [tuple(p[:4]) for p in points] for v, points in summary.items()},
                                     out / PLOTS / f"{dataset}_acc_vs_num_models.png",
                                     title=f"{dataset}: OOD accuracy vs number of averaged models "
                                           f"(mean over {len(dataset_cells)} cells, 95% CI)")
    return summary


def _lmc_across_inits(runs: list[RunRef], cell: Cell, cache: EvaluatorCache) -> list[tuple[RunRef, RunRef, dict]]:
    """LMC between the first run of each init and the first run of every other init."""
    by_init: dict[str, RunRef] = {}
    for run in runs:
        by_init.setdefault(run.init_label, run)
    first = list(by_init.values())
    if len(first) < 2:
        return []
    ev = evaluator(cache, cell, runs[0])
    return [(a, b, analysis.lmc_between(a, b, ev, cell.test_env, validation=False))
            for i, a in enumerate(first) for b in first[i + 1:]]


def _lmc_figure(dataset: str, barriers: list[dict[str, Any]], out: Path) -> None:
    """Mean test-accuracy curve along the path between the first runs of two inits, per pair of inits,
    over every cell, with 95% intervals."""
    by_pair: dict[str, dict[float, list[float]]] = {}
    for b in barriers:
        for lam, acc in b["curve"]:
            by_pair.setdefault(f"{b['a']} ↔ {b['b']}", {}).setdefault(float(lam), []).append(acc)
    curves = {name: [(lam, *_with_interval(accs)[:3]) for lam, accs in sorted(points.items())]
              for name, points in by_pair.items()}
    n_cells = len({(b["test_env"], b["trial_seed"]) for b in barriers})
    plots.plot_lmc_curves(curves, out / PLOTS / f"{dataset}_lmc.png",
                          title=f"{dataset}: LMC across inits (mean over {n_cells} cells, 95% CI)")


def _diversity_figure(dataset: str, entry: dict[str, Any], out: Path) -> dict[str, Any]:
    """Ratio-error vs weight-averaging gain of every analysed pair, both centred on their cell's means
    (Hypothesis 1 within cells), one colour per pool; the legend gives each pool's within-cell r with its
    bootstrap interval (`evidence.hypothesis1`). Returns {pool: {"r", "low", "high", "n_pairs"}}."""
    series, fits = {}, {}
    for pool in dict.fromkeys(p["pool"] for p in entry["pairs"]):
        rows = [p for p in entry["pairs"] if p["pool"] == pool and np.isfinite(p["ratio_error"])]
        fit = evidence.hypothesis1(entry, pool, control_gap=False)
        if fit is None:
            continue
        groups = [f"{p['test_env']}/{p['trial_seed']}" for p in rows]
        series[pool] = (stats.centre_within([p["ratio_error"] for p in rows], groups),
                        stats.centre_within([p["gain"] for p in rows], groups))
        r = fit["r"]
        fits[pool] = {"r": r.estimate, "low": r.low, "high": r.high, "n_pairs": fit["n_pairs"]}
    if series:
        plots.plot_within_cells(series, {pool: f"r = {f['r']:.2f} [{f['low']:.2f}, {f['high']:.2f}], "
                                               f"{f['n_pairs']} pairs" for pool, f in fits.items()},
                                out / PLOTS / f"{dataset}_diversity_vs_wa_gain.png",
                                xlabel="ratio-error of the pair − its cell's mean",
                                ylabel="WA gain − its cell's mean (pp)",
                                title=f"{dataset}: diversity vs weight-averaging gain, within cells")
    return fits


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
