"""Planning the recycling pipeline: a pure function of the spec (and of the imported fine-tunings).

`plan(spec, strategies, out)` names every job of every stage and every run each strategy reads,
without running or writing anything, so the dry run and the real run cannot disagree.
1. foundation: pre-train on the built-in corpus (or read a local checkpoint);
2. auxiliary LP-FT of the foundation: a probe per auxiliary task, then `n_runs` fine-tunings from it
   (plus imported fine-tunings in `<out>/imported/`);
3. a linear probe per (target dataset, test domain), featurizer frozen, shared by every trial;
4. derived inits (e.g. fused featurizers), then the target runs every strategy plans (a run planned
   by several strategies is one job);
5. combine: each strategy turns its runs into reported models.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from domainbed_recycle.datasets import get_dataset_class
from domainbed_recycle.datasets.leakage import check_no_leakage
from domainbed_recycle.errors import UserError
from domainbed_recycle.files import read_text
from domainbed_recycle.misc import per_dataset, seed_hash
from domainbed_recycle.recycle.spec import RecycleSpec
from domainbed_recycle.rundir import RunDir, claim, is_made_by_harness, not_ours_message
from domainbed_recycle.strategies.base import (
    PHI0,
    AuxSource,
    Cell,
    DerivedInit,
    Inits,
    RunRef,
    Strategy,
    TargetRunSettings,
    TargetSettings,
)
from domainbed_recycle.sweep import Job, job_id_of, jobs_from_configs
from domainbed_recycle.validation import check_limit

# Sub-folders of a pipeline's output folder, one per stage.
FOUNDATION, AUXILIARY, IMPORTED, PROBES, INITS, TARGET = (
    "foundation", "auxiliary", "imported", "probes", "inits", "target")

CellPools = dict[str, dict[str, list[RunRef]]]  # strategy name -> pool name -> runs


SPEC = "spec.json"  # the validated spec, in the output folder


def _is_our_output(out: Path) -> bool:
    """Whether `out` was made by an older version of the harness, before folders were marked: its
    `spec.json` is a spec this harness wrote (`dataclasses.asdict` of a RecycleSpec)."""
    try:
        written = json.loads(read_text(out / SPEC, SPEC, limit=1 << 24))
    except (OSError, ValueError, UserError):
        return False
    return isinstance(written, dict) and {"output_dir", "strategies", "foundation", "target", "source"} <= set(written)


def check_output_dir(out: Path) -> None:
    """UserError (one line, nothing written) unless `out` is missing, empty or made by the harness."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output_dir {out} is not a folder")
    if out.is_dir() and os.listdir(out) and not (is_made_by_harness(out) or _is_our_output(out)):
        raise UserError(not_ours_message(out, "the recycling pipeline's output"))


def claim_output_dir(out: Path) -> None:
    """Make `out` the harness's output folder (`rundir.claim`), after `check_output_dir`."""
    claim(out, "the recycling pipeline's output", legacy=lambda: _is_our_output(out))


@dataclass
class Plan:
    """Every stage's jobs, and the runs each strategy reads per cell."""

    foundation_job: Job | None
    foundation: str  # weights reference of phi_0: the pre-training run's best checkpoint, or the spec's
    auxiliary_probe_jobs: dict[str, Job]
    auxiliary_jobs: dict[str, list[Job]]
    imported: list[tuple[str, str]]
    probe_jobs: dict[tuple[str, int], Job]
    derived: list[DerivedInit]
    cells: dict[Cell, CellPools]
    inits: dict[Cell, Inits]
    target_jobs: list[Job]
    planned_per_strategy: dict[str, int] = field(default_factory=dict)


def target_settings(spec: RecycleSpec) -> TargetSettings:
    """The spec's [target] table as the settings strategies plan with."""
    shared = {f.name: getattr(spec.target, f.name) for f in fields(TargetRunSettings)}
    return TargetSettings(**shared | {"hparams": dict(spec.target.hparams)}, data_dir=spec.data_dir)


def cells(spec: RecycleSpec) -> list[Cell]:
    """Target cells in (dataset, test domain, trial seed) order. UserError, before any is made, if
    there are more than the jobs limit (each cell is at least one combine job)."""
    n_cells = sum(len(spec.target.test_envs or get_dataset_class(dataset).ENVIRONMENTS)
                  for dataset in spec.target.datasets) * spec.target.n_trials
    check_limit("jobs", n_cells, f"{spec.source}: the target cells (datasets x test domains x n_trials)")
    result = []
    for dataset in spec.target.datasets:
        n_envs = len(get_dataset_class(dataset).ENVIRONMENTS)
        for test_env in spec.target.test_envs or range(n_envs):
            for trial in range(spec.target.n_trials):
                result.append(Cell(dataset, test_env, trial))
    return result


def check_leakage(spec: RecycleSpec) -> None:
    """UserError if the pre-training or an auxiliary dataset shares a source image with a test domain of a
    target (built-ins declare their sources; others cannot be checked). Reads the sources' ids (~1 s)."""
    f, a = spec.foundation, spec.auxiliary
    seen = [("pre-training", f.dataset)] if f.dataset and not f.checkpoint else []
    seen += [("auxiliary", dataset) for dataset in spec.auxiliary_datasets()]
    test_domains: dict[str, list[int]] = {}
    for cell in cells(spec):
        envs = test_domains.setdefault(cell.dataset, [])
        if cell.test_env not in envs:
            envs.append(cell.test_env)
    unused = [(dataset, dataset) for dataset in spec.auxiliary_datasets()] if a.exclude_target else []
    check_no_leakage(seen, test_domains, spec.data_dir, unused)


def foundation_job(spec: RecycleSpec, out: Path) -> Job | None:
    """The pre-training job, or None when the spec reads a local checkpoint."""
    f = spec.foundation
    if f.checkpoint:
        return None
    config = {"dataset": f.dataset, "test_envs": [], "steps": f.steps, "checkpoint_freq": f.checkpoint_freq,
              "hparams": dict(f.hparams), "seed": seed_hash("foundation", f.dataset),
              "data_dir": spec.data_dir, "init_label": "random"}
    return jobs_from_configs([config | spec.performance], out / FOUNDATION)[0]


def foundation_checkpoint(spec: RecycleSpec, out: Path) -> str:
    """The weights reference of phi_0: the spec's `checkpoint` (a file made absolute when the spec was
    read, or a name such as "torchvision:ResNet50_Weights.IMAGENET1K_V1"), else the pre-training run's
    best checkpoint."""
    if spec.foundation.checkpoint:
        return spec.foundation.checkpoint
    job = foundation_job(spec, out)
    assert job is not None
    return str(job.run.best_checkpoint)


def auxiliary_probe_jobs(spec: RecycleSpec, out: Path, foundation: str) -> dict[str, Job]:
    """A linear probe of the foundation per auxiliary task (the LP of the auxiliary LP-FT)."""
    p = spec.probe
    return {dataset: jobs_from_configs([{
        "dataset": dataset, "test_envs": [], "steps": per_dataset(p.steps, dataset),
        "checkpoint_freq": per_dataset(p.checkpoint_freq, dataset),
        "hparams": dict(p.hparams), "hparams_profile": p.hparams_profile, "seed": seed_hash("probe", dataset),
        "data_dir": spec.data_dir, "init_featurizer": str(foundation), "linear_probe": True,
        "init_label": f"{PHI0}/probe"} | spec.performance], out / AUXILIARY)[0]
        for dataset in spec.auxiliary_datasets()}


def auxiliary_jobs(spec: RecycleSpec, out: Path, foundation: str) -> dict[str, list[Job]]:
    """`n_runs` fine-tunings per auxiliary task (every domain trained on), each from the foundation's
    featurizer and that task's probe, with hparams seeds 0..n_runs-1 (the reference's auxiliary sweep)."""
    a = spec.auxiliary
    probes = auxiliary_probe_jobs(spec, out, foundation)
    jobs = {}
    for dataset in spec.auxiliary_datasets():
        configs = [{"dataset": dataset, "test_envs": [], "steps": per_dataset(a.steps, dataset),
                    "checkpoint_freq": per_dataset(a.checkpoint_freq, dataset),
                    "hparams": dict(a.hparams), "hparams_profile": a.hparams_profile, "hparams_seed": h,
                    "seed": seed_hash("auxiliary", dataset, h), "data_dir": spec.data_dir,
                    "init_featurizer": str(foundation), "init_classifier": str(probes[dataset].run.best_checkpoint),
                    "init_label": f"{PHI0}/probe"} | spec.performance for h in range(a.n_runs)]
        jobs[dataset] = jobs_from_configs(configs, out / AUXILIARY)
    return jobs


def auxiliary_sources(spec: RecycleSpec, jobs: dict[str, list[Job]], target: str,
                      imported: list[tuple[str, str]]) -> tuple[AuxSource, ...]:
    """The auxiliary pool of target dataset `target`: its featurizer checkpoints per auxiliary task
    (never `target` itself), then the imported fine-tunings."""
    last = spec.auxiliary.checkpoint == "last"
    sources = [AuxSource(f"aux:{dataset}", tuple(str(j.run.last_checkpoint if last else j.run.best_checkpoint)
                                                 for j in runs))
               for dataset, runs in jobs.items() if not (spec.auxiliary.exclude_target and dataset == target)]
    return tuple(sources + [AuxSource(label, (path,)) for label, path in imported])


def imported_finetunings(out: Path) -> list[tuple[str, str]]:
    """(label, checkpoint) of the fine-tunings added with `drecycle import` (checked on import)."""
    return [(f"import:{p.stem}", str(p)) for p in sorted((out / IMPORTED).glob("*.safetensors"))]


def probe_jobs(spec: RecycleSpec, out: Path, foundation: str) -> dict[tuple[str, int], Job]:
    """A linear probe of the foundation per (target dataset, test domain), shared by every trial seed as
    in the reference (fitted on trial 0's `in` splits of the training domains; featurizer frozen)."""
    p = spec.probe
    jobs = {}
    for cell in cells(spec):
        key = (cell.dataset, cell.test_env)
        if key in jobs:
            continue
        config = {"dataset": cell.dataset, "test_envs": [cell.test_env], "trial_seed": 0,
                  "steps": per_dataset(p.steps, cell.dataset),
                  "checkpoint_freq": per_dataset(p.checkpoint_freq, cell.dataset), "hparams": dict(p.hparams),
                  "hparams_profile": p.hparams_profile,
                  "seed": seed_hash("probe", cell.dataset, cell.test_env),
                  "holdout_fraction": spec.target.holdout_fraction, "data_dir": spec.data_dir,
                  "init_featurizer": str(foundation), "linear_probe": True, "init_label": f"{PHI0}/probe"}
        jobs[key] = jobs_from_configs([config | spec.performance], out / PROBES)[0]
    return jobs


def plan(spec: RecycleSpec, strategies: list[Strategy], out: Path) -> Plan:
    """Every stage's jobs and every strategy's runs; reads nothing but `<out>/imported/`'s listing."""
    settings = target_settings(spec)
    foundation = foundation_checkpoint(spec, out)
    aux_probes = auxiliary_probe_jobs(spec, out, foundation)
    aux_jobs = auxiliary_jobs(spec, out, foundation)
    imported = imported_finetunings(out)
    all_cells = cells(spec)
    probes = probe_jobs(spec, out, foundation)
    derived: dict[Path, DerivedInit] = {}
    projected: set[str] = set()  # datasets whose total of jobs was projected from their first cell
    per_cell: dict[Cell, CellPools] = {}
    cell_inits: dict[Cell, Inits] = {}
    configs: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    earlier = 1 + len(aux_probes) + sum(map(len, aux_jobs.values())) + len(probes)
    unique: set[str] = set()  # the target jobs' ids: runs shared by strategies train once
    for cell in all_cells:
        probe = probes[(cell.dataset, cell.test_env)]
        inits = Inits(foundation=foundation, probe=str(probe.run.best_checkpoint),
                      auxiliary=auxiliary_sources(spec, aux_jobs, cell.dataset, imported), work_dir=out / INITS)
        cell_inits[cell] = inits
        per_cell[cell] = {}
        before = len(unique)
        for strategy in strategies:
            for init in strategy.derived_inits(cell, inits, settings):
                derived.setdefault(init.path, init)
            pools = {name: [config | spec.performance for config in pool]  # the spec's speed switches
                     for name, pool in strategy.pools(cell, inits, settings).items()}
            per_cell[cell][strategy.name] = {name: [_run_ref(config, out) for config in pool]
                                             for name, pool in pools.items()}
            for refs in per_cell[cell][strategy.name].values():
                unique.update(ref.run.name for ref in refs)
            for pool in pools.values():
                configs.extend(pool)
                counts[strategy.name] = counts.get(strategy.name, 0) + len(pool)
            check_limit("jobs", earlier + len(unique), f"{spec.source}: the jobs planned (so far)")
        if cell.dataset not in projected:  # its other cells plan as many jobs (no run is shared by two cells)
            projected.add(cell.dataset)
            others = sum(c.dataset == cell.dataset for c in all_cells) - 1
            check_limit("jobs", earlier + len(unique) + others * (len(unique) - before),
                        f"{spec.source}: the jobs this plan makes ({len(unique) - before} target job(s) per cell "
                        f"of {cell.dataset}, {others + 1} cells)")
    return Plan(foundation_job(spec, out), foundation, aux_probes, aux_jobs, imported, probes,
                list(derived.values()), per_cell, cell_inits, jobs_from_configs(configs, out / TARGET), counts)


def _run_ref(config: dict[str, Any], out: Path) -> RunRef:
    return RunRef(config, RunDir(out / TARGET / job_id_of(config)))


def describe(plan: Plan, variants: list[str]) -> str:
    """Every stage's jobs, one line per job (the dry run's listing)."""
    job = plan.foundation_job
    lines = [f"stage 1 foundation: {'train ' + job.describe() if job else plan.foundation}"]
    aux_runs = [job for runs in plan.auxiliary_jobs.values() for job in runs]
    lines.append(f"stage 2 auxiliary LP-FT: {len(plan.auxiliary_probe_jobs)} probe(s), then "
                 f"{len(aux_runs)} fine-tuning(s)")
    lines += [f"  probe {job.describe()}" for job in plan.auxiliary_probe_jobs.values()]
    lines += [f"  {job.describe()}" for job in aux_runs]
    lines += [f"  imported {label}: {path}" for label, path in plan.imported]
    lines.append(f"stage 3 target linear probes: {len(plan.probe_jobs)} job(s), one per (dataset, test domain)")
    shared = ", ".join(f"{k}: {v}" for k, v in plan.planned_per_strategy.items())
    lines.append(f"stage 4 target runs: {len(plan.target_jobs)} unique job(s) ({shared} planned; "
                 f"shared runs train once)")
    lines += [f"  derived init {init.path}" for init in plan.derived]
    lines += [f"  {job.describe()}" for job in plan.target_jobs]
    lines.append(f"stage 5 combine: {len(plan.cells)} cell(s) x variants {', '.join(variants)}")
    return "\n".join(lines)


def training_jobs(plan: Plan) -> list[Job]:
    """Every training job of a plan, stage by stage (what the dry run's cost estimate sums)."""
    jobs = [plan.foundation_job] if plan.foundation_job is not None else []
    jobs += list(plan.auxiliary_probe_jobs.values())
    jobs += [job for runs in plan.auxiliary_jobs.values() for job in runs]
    return jobs + list(plan.probe_jobs.values()) + plan.target_jobs
