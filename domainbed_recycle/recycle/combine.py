"""Stage 5 of the recycling pipeline: strategies turn finished target runs into reported models.

Each outcome becomes DomainBed-style records in `<out>/table/` (one folder per outcome), so the
collector tabulates combined models like any run. A marker per (cell, strategy) in `<out>/combined/`
records what was combined; a cell already combined is not combined again.

Combining is one job per cell with strategies not combined yet (`combine_jobs`), run by the spec's
launcher like the training stages (in parallel on the pool or on Slurm; `run_combine_job` is the
task each job runs). A job carries everything it reads (spec, cell, each strategy's runs per pool),
so a worker needs no plan. Pooled variants (`combine_pooled`) span cells and stay in the parent.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from domainbed_recycle import provenance
from domainbed_recycle.averaging import uniform_average
from domainbed_recycle.checkpoints import read_metadata
from domainbed_recycle.collect import CollectResult, collect, load_records, render
from domainbed_recycle.datasets import get_dataset_class
from domainbed_recycle.errors import UserError
from domainbed_recycle.evaluation import Evaluator, EvaluatorCache
from domainbed_recycle.files import check_inside, read_regular
from domainbed_recycle.misc import args_hash
from domainbed_recycle.recycle.spec import RecycleSpec, spec_from_dict
from domainbed_recycle.recycle.stages import CellPools, target_settings
from domainbed_recycle.rundir import RunDir, write_atomic
from domainbed_recycle.strategies import STRATEGIES
from domainbed_recycle.strategies.base import Cell, ModelOutcome, RunRef, RunsOutcome, Strategy
from domainbed_recycle.sweep import Job
from domainbed_recycle.sweep.jobs import TASK_KEY

# Sub-folders: the combined models' records, the markers, and the combine jobs' folders (logs, locks).
TABLE, COMBINED, JOBS = "table", "combined", "combine_jobs"
TASK = "domainbed_recycle.recycle.combine:run_combine_job"
POOLED_TRIAL = -1  # trial seed of a pooled (†) record: every trial's runs, as the reference's `--trial_seed -1`
_TABLE_FOLDER = re.compile(r"[0-9a-f]{32}")  # `args_hash`: what `_write_run` names a table folder


def variants(strategies: list[Strategy], pooled: bool) -> list[str]:
    """Table rows in order: each strategy's variants, each pooled (†) variant after the one it follows."""
    names = []
    for strategy in strategies:
        for variant in strategy.variants:
            names.append(variant)
            if pooled:
                names += [p for p, after in strategy.pooled.items() if after == variant]
    return names


def evaluator(cache: EvaluatorCache, cell: Cell, run: RunRef) -> Evaluator:
    """The evaluator of a cell's dataset and trial seed, for models shaped like `run`'s."""
    return cache.get(cell.dataset, cell.trial_seed, read_metadata(run.checkpoint)["arch"])


def combine_jobs(cells: dict[Cell, CellPools], spec: RecycleSpec, out: Path) -> list[Job]:
    """One job per cell, for the strategies whose marker does not record exactly the planned runs:
    never combined, killed before their marker was written, or planned differently since (e.g. a new
    `[target] hparams`: the job then removes the old table folders before writing the new ones, so
    the table never shows the old runs' answer to the new spec). Launch them with `skip_done=False`:
    the markers, not the job folders, say what is combined."""
    spec_values = dataclasses.asdict(spec)
    jobs = []
    for cell, per in cells.items():
        todo = {name: pools for name, pools in per.items() if _combined_runs(out, cell, name) != run_ids(pools)}
        if not todo:
            continue
        args = {TASK_KEY: TASK, "label": f"{cell.dataset} test_env={cell.test_env} trial_seed={cell.trial_seed} "
                                       f"({len(todo)} strateg{'y' if len(todo) == 1 else 'ies'})",
                "spec": spec_values, "out": str(out), "cell": dataclasses.asdict(cell),
                "strategies": {name: {pool: [{"config": run.config, "run": str(run.output_dir)} for run in runs]
                                      for pool, runs in pools.items()} for name, pools in todo.items()}}
        jobs.append(Job(args, out / JOBS))
    return jobs


def run_combine_job(args: dict[str, Any]) -> None:
    """The task of a combine job (`combine_jobs`), in a launcher's worker: combine one cell with each
    strategy it lists, in order (each writes its marker, so a killed job redoes only the rest)."""
    spec = spec_from_dict(args["spec"], "combine job spec")
    cell = Cell(**args["cell"])
    cache = EvaluatorCache(spec.data_dir, spec.target.holdout_fraction)
    for name, pools in args["strategies"].items():
        refs = {pool: [RunRef(ref["config"], RunDir(ref["run"])) for ref in runs] for pool, runs in pools.items()}
        combine_cell(cell, STRATEGIES.get(name)(), refs, spec, Path(args["out"]), cache)


def combine_cell(cell: Cell, strategy: Strategy, pools: dict[str, list[RunRef]], spec: RecycleSpec, out: Path,
                 cache: EvaluatorCache) -> None:
    """`strategy`'s outcomes for `cell`, written into `<out>/table/`, then the marker recording the runs
    combined and the table folders written (an earlier marker's folders are removed first)."""
    _forget(out, _marker(out, cell, strategy.name))
    first = next(run for runs in pools.values() for run in runs)
    outcomes = strategy.combine(cell, pools, evaluator(cache, cell, first))
    folders = _write_outcomes(spec, out, cell, outcomes)
    write_marker(_marker(out, cell, strategy.name), {"runs": run_ids(pools), "table_folders": folders,
                                                      "outcomes": [_summary(o) for o in outcomes]})


def combine_pooled(cells: dict[Cell, CellPools], strategies: list[Strategy],
                   spec: RecycleSpec, out: Path, cache: EvaluatorCache) -> None:
    """Pooled (†) variants: the uniform average of a strategy's runs of *every* trial seed of a test domain,
    evaluated once, on the whole test domain, as the reference's inference with `--trial_seed -1` (its
    test domain is never trained on). One record per test domain, trial seed -1: the table shows one
    number per domain (its ± is 0 by construction), not a spread over trials."""
    groups: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.dataset, cell.test_env), []).append(cell)
    for strategy in strategies:
        for variant in strategy.pooled:
            for (dataset, test_env), group in groups.items():
                marker = out / COMBINED / f"{dataset}_env{test_env}_{_safe(variant)}.json"
                runs = [run for cell in group for pool in cells[cell][strategy.name].values() for run in pool]
                if read_marker(marker).get("runs") == [r.run_id for r in runs]:
                    continue
                _forget(out, marker)
                state = uniform_average(run.weights() for run in runs)
                ev = evaluator(cache, group[0], runs[0])
                # each domain's in and out keys both hold its whole-domain accuracy (no trial's split): the
                # test domain's is what every selection method reports, the others only fill the record
                # (one model: there is nothing to select)
                accs = {f"env{env}_{split}_acc": acc for env in range(ev.n_envs)
                        for acc in [ev.domain_acc(state, env)] for split in ("in", "out")}
                outcome = ModelOutcome(variant, accs, {"members": [r.run_id for r in runs],
                                                       "evaluated_on": "whole test domain, once"})
                folders = _write_outcomes(spec, out, Cell(dataset, test_env, POOLED_TRIAL), [outcome])
                write_marker(marker, {"runs": [r.run_id for r in runs], "table_folders": folders})


def combined_outcomes(out: Path, cell: Cell, strategy: str) -> list[dict[str, Any]]:
    """What `combine_cell` recorded for a cell and strategy ([] if not combined yet)."""
    return read_marker(_marker(out, cell, strategy)).get("outcomes", [])


def run_ids(pools: dict[str, list[RunRef]]) -> dict[str, list[str]]:
    """{pool name: its runs' ids}: what a marker records as the runs a result was made from."""
    return {name: [run.run_id for run in runs] for name, runs in pools.items()}


def _combined_runs(out: Path, cell: Cell, strategy: str) -> Any:
    return read_marker(_marker(out, cell, strategy)).get("runs")


def read_marker(marker: Path) -> dict[str, Any]:
    """A marker's content ({} if absent, unreadable, or written by an older version that listed no runs).

    Its `table_folders` are what `_forget` deletes: UserError (one line, nothing deleted) unless each is
    the name of a folder `_write_run` makes (an md5 hex digest, so it cannot lead out of `<out>/table/`)."""
    try:
        content = json.loads(read_regular(marker, limit=1 << 26))
    except (OSError, ValueError, UserError):
        return {}
    if not isinstance(content, dict):
        return {}
    folders = content.get("table_folders", [])
    bad = [f for f in folders if not (isinstance(f, str) and _TABLE_FOLDER.fullmatch(f))] if isinstance(
        folders, list) else [folders]
    if bad:
        raise UserError(f"{marker}: 'table_folders' names {bad[0]!r}, not a folder this harness writes in {TABLE}/: "
                        f"the marker was edited or is not the harness's; nothing was deleted (delete {marker} "
                        f"to combine that cell again)")
    return content


def write_marker(marker: Path, content: dict[str, Any]) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(marker, json.dumps(content, indent=1))


def _forget(out: Path, marker: Path) -> None:
    """Remove the table folders an earlier combination wrote (its runs are no longer the planned ones):
    each must lie inside `<out>/table/` once resolved (not a link leading elsewhere) and be the harness's
    (`RunDir.reset` checks); else UserError, nothing deleted."""
    folders = [RunDir(out / TABLE / name) for name in read_marker(marker).get("table_folders", [])]
    for run in folders:
        check_inside(run.path, out / TABLE, f"table folder named by {marker}")
        run.check_is_run()
    for run in folders:
        run.remove()
    marker.unlink(missing_ok=True)


def table(out: Path, names: list[str], datasets: list[str], selection: list[str], fmt: str = "text") -> str:
    """The strategy table of everything combined so far, rows `names`, one model-selection method per block."""
    return render(table_result(out, names, datasets, selection), fmt)


def table_result(out: Path, names: list[str], datasets: list[str], selection: list[str]) -> CollectResult:
    """The collector's result behind `table` (numbers, for the reading)."""
    records, report = load_records(out / TABLE)
    return collect(records, methods=selection, algorithms=names, datasets=datasets, report=report)


def _safe(variant: str) -> str:
    return variant.replace("†", "pooled")


def _marker(out: Path, cell: Cell, name: str) -> Path:
    return out / COMBINED / f"{cell.dataset}_env{cell.test_env}_trial{cell.trial_seed}_{name}.json"


def _write_outcomes(spec: RecycleSpec, out: Path, cell: Cell,
                    outcomes: list[RunsOutcome | ModelOutcome]) -> list[str]:
    """Write each outcome's records into `<out>/table/`; returns the folder names written."""
    folders = []
    for outcome in outcomes:
        if isinstance(outcome, RunsOutcome):
            for run in outcome.runs:
                records = run.records()
                for record in records:
                    record["args"] = dict(record["args"], algorithm=outcome.variant)
                    record["strategy"] = outcome.variant
                    record["run_dir"] = str(run.output_dir)
                folders.append(_write_run(out / TABLE, {"variant": outcome.variant, "run": run.run_id}, records))
            continue
        args = {"dataset": cell.dataset, "algorithm": outcome.variant, "test_envs": [cell.test_env],
                "hparams_seed": 0, "trial_seed": cell.trial_seed,
                "environments": list(get_dataset_class(cell.dataset).ENVIRONMENTS),
                "holdout_fraction": spec.target.holdout_fraction}
        step = target_settings(spec).steps_for(cell.dataset) or 0
        record = {"step": step, "args": args, "hparams": {}, **outcome.accs,
                  "strategy": outcome.variant, "combined": outcome.info,
                  "versions": provenance.versions(), "git_commit": provenance.git_commit()}
        folders.append(_write_run(out / TABLE, {"variant": outcome.variant, "cell": cell.__dict__}, [record]))
    return folders


def _write_run(table_dir: Path, key: dict[str, Any], records: list[dict[str, Any]]) -> str:
    run = RunDir(table_dir / args_hash(key))
    run.reset()  # a combined model is rewritten whole when recombined
    with run.create().open_records() as log:
        log.extend(records)
    run.mark_done()
    return run.name


def _summary(outcome: RunsOutcome | ModelOutcome) -> dict[str, Any]:
    if isinstance(outcome, ModelOutcome):
        return {"variant": outcome.variant, "accs": outcome.accs, "info": outcome.info}
    return {"variant": outcome.variant, "runs": [r.run_id for r in outcome.runs]}
