"""`drecycle recycle SPEC`: the five stages of model recycling, each a resumable sweep.

1. foundation: pre-train on the built-in corpus (or read a local checkpoint);
2. auxiliary fine-tunings of the foundation (plus imported ones in `<output_dir>/imported/`);
3. a linear probe per target cell (dataset, test domain, trial seed), featurizer frozen;
4. target runs planned by every strategy (shared runs are trained once);
5. combine: each strategy turns its runs into reported models, written as DomainBed-style records
   into `<output_dir>/table/`, which `drecycle collect` (or the pipeline itself) tabulates.
Every stage skips what is done, so a killed pipeline resumes where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainbed_recycle.errors import UserError
from domainbed_recycle.misc import args_hash, seed_hash
from domainbed_recycle.recycle_spec import RecycleSpec
from domainbed_recycle.strategies.base import PHI0, Cell, Inits, RunRef, TargetSettings

BEST = "model_best.safetensors"


@dataclass
class StagePlan:
    """The jobs of one stage (for launching, and for `--dry_run`)."""

    name: str
    jobs: list[Any]
    note: str = ""


@dataclass
class Plan:
    foundation: str
    auxiliary: dict[str, str]  # dataset -> checkpoint path
    imported: list[tuple[str, str]]
    probes: dict[Cell, str]
    stages: list[StagePlan] = field(default_factory=list)


def _log(message: str) -> None:
    print(f"[recycle] {message}", file=sys.stderr, flush=True)


class Pipeline:
    """Plans and runs one recycling spec. `run()` does every stage; `dry_run()` lists the jobs."""

    def __init__(self, spec: RecycleSpec) -> None:
        self.spec = spec
        self.out = Path(spec.output_dir).resolve()
        from domainbed_recycle.strategies import STRATEGIES

        self.strategies = [STRATEGIES.get(name)() for name in spec.strategies]
        self.settings = TargetSettings(
            algorithm=spec.target.algorithm, n_runs=spec.target.n_runs, n_runs_small=spec.target.n_runs_small,
            steps=spec.target.steps, checkpoint_freq=spec.target.checkpoint_freq,
            holdout_fraction=spec.target.holdout_fraction, data_dir=spec.data_dir,
            hparams=dict(spec.target.hparams), hparams_profile=spec.target.hparams_profile,
            fusing_range=spec.target.fusing_range,
        )

    # ------------------------------------------------------------------ planning
    def cells(self) -> list[Cell]:
        from domainbed_recycle.datasets import load_all_datasets

        registry = load_all_datasets()
        cells = []
        for dataset in self.spec.target.datasets:
            n_envs = len(registry.get(dataset).ENVIRONMENTS)
            for test_env in self.spec.target.test_envs or range(n_envs):
                for trial in range(self.spec.target.n_trials):
                    cells.append(Cell(dataset, test_env, trial))
        return cells

    def foundation_job(self) -> Any | None:
        from domainbed_recycle.sweep import jobs_from_configs

        f = self.spec.foundation
        if f.checkpoint:
            return None
        config = {"dataset": f.dataset, "test_envs": [], "steps": f.steps, "checkpoint_freq": f.checkpoint_freq,
                  "hparams": dict(f.hparams), "seed": seed_hash("foundation", f.dataset),
                  "data_dir": self.spec.data_dir, "init_label": "random"}
        return jobs_from_configs([config], self.out / "foundation")[0]

    def foundation_checkpoint(self) -> str:
        if self.spec.foundation.checkpoint:
            return str(Path(self.spec.foundation.checkpoint).resolve())
        return str(self.foundation_job().output_dir / BEST)

    def auxiliary_jobs(self, foundation: str) -> dict[str, Any]:
        from domainbed_recycle.sweep import jobs_from_configs

        a = self.spec.auxiliary
        jobs = {}
        for dataset in a.datasets:
            config = {"dataset": dataset, "test_envs": [], "steps": a.steps, "checkpoint_freq": a.checkpoint_freq,
                      "hparams": dict(a.hparams), "hparams_profile": a.hparams_profile,
                      "seed": seed_hash("auxiliary", dataset),
                      "data_dir": self.spec.data_dir, "init_featurizer": foundation, "init_label": PHI0}
            jobs[dataset] = jobs_from_configs([config], self.out / "auxiliary")[0]
        return jobs

    def imported(self) -> list[tuple[str, str]]:
        """Fine-tunings added with `drecycle import` (already checked against the foundation)."""
        folder = self.out / "imported"
        return [(f"import:{p.stem}", str(p)) for p in sorted(folder.glob("*.safetensors"))]

    def probe_jobs(self, foundation: str) -> dict[Cell, Any]:
        from domainbed_recycle.sweep import jobs_from_configs

        p = self.spec.probe
        jobs = {}
        for cell in self.cells():
            config = {"dataset": cell.dataset, "test_envs": [cell.test_env], "trial_seed": cell.trial_seed,
                      "steps": p.steps, "checkpoint_freq": p.checkpoint_freq, "hparams": dict(p.hparams),
                      "hparams_profile": p.hparams_profile,
                      "seed": seed_hash("probe", cell.dataset, cell.test_env, cell.trial_seed),
                      "holdout_fraction": self.spec.target.holdout_fraction, "data_dir": self.spec.data_dir,
                      "init_featurizer": foundation, "linear_probe": True, "init_label": f"{PHI0}/probe"}
            jobs[cell] = jobs_from_configs([config], self.out / "probes")[0]
        return jobs

    def inits(self, cell: Cell, foundation: str, auxiliary: dict[str, str], probe: str) -> Inits:
        aux = [(f"aux:{d}", path) for d, path in auxiliary.items()
               if not (self.spec.auxiliary.exclude_target and d == cell.dataset)]
        return Inits(foundation=foundation, probe=probe, auxiliary=aux + self.imported())

    def target_configs(self, cell: Cell, inits: Inits, prepare: bool) -> dict[str, list[dict[str, Any]]]:
        """Per strategy, its planned run configs in plan order (`prepare` writes files such as fused inits)."""
        planned = {}
        for strategy in self.strategies:
            if prepare:
                strategy.prepare(cell, inits, self.settings, self.out / "inits")
            elif strategy.name == "Fusing":  # dry run: the path the fused init will have
                inits.fused = str(strategy.fused_path(self.out / "inits", cell))
            planned[strategy.name] = strategy.plan(cell, inits, self.settings)
        return planned

    # ------------------------------------------------------------------ running
    def _launch(self, stage: str, jobs: list[Any]) -> None:
        from domainbed_recycle.launchers import SlurmOptions, launch

        if not jobs:
            return
        slurm = SlurmOptions.from_dict(dict(self.spec.slurm)) if self.spec.slurm else None
        _log(f"stage {stage}: {len(jobs)} job(s)")
        report = launch(jobs, launcher=self.spec.launcher, n_workers=self.spec.n_workers, slurm=slurm)
        _log(report.summary().splitlines()[0])
        if not report.ok:
            raise UserError(f"stage {stage}: {len(report.failed)} job(s) failed:\n{report.summary()}")

    def run(self) -> str:
        """Run (or resume) every stage and return the strategy table as text."""
        start = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "spec.json").write_text(json.dumps(self.spec.__dict__, default=lambda o: o.__dict__, indent=2))
        foundation_job = self.foundation_job()
        if foundation_job is not None:
            self._launch("1/5 foundation", [foundation_job])
        foundation = self.foundation_checkpoint()
        if not Path(foundation).is_file():
            raise UserError(f"foundation checkpoint not found: {foundation}")

        aux_jobs = self.auxiliary_jobs(foundation)
        self._launch("2/5 auxiliary fine-tunings", list(aux_jobs.values()))
        auxiliary = {d: str(job.output_dir / BEST) for d, job in aux_jobs.items()}

        probe_jobs = self.probe_jobs(foundation)
        self._launch("3/5 linear probes", list(probe_jobs.values()))

        from domainbed_recycle.sweep import job_id_of, jobs_from_configs

        cell_runs: dict[Cell, dict[str, list[RunRef]]] = {}
        all_configs = []
        for cell, probe_job in probe_jobs.items():
            inits = self.inits(cell, foundation, auxiliary, str(probe_job.output_dir / BEST))
            planned = self.target_configs(cell, inits, prepare=True)
            cell_runs[cell] = {}
            for name, configs in planned.items():
                cell_runs[cell][name] = [RunRef(c, self.out / "target" / job_id_of(c)) for c in configs]
                all_configs.extend(configs)
        self._launch("4/5 target runs", jobs_from_configs(all_configs, self.out / "target"))

        self.combine(cell_runs)
        if self.spec.pooled_ratatouille and any(s.name == "Ratatouille" for s in self.strategies):
            self.combine_pooled(cell_runs)
        if self.spec.analysis:
            self.analyze(cell_runs)
        table = self.table()
        _log(f"done in {time.time() - start:.0f} s; records in {self.out / 'table'}")
        return table

    def analyze(self, cell_runs: dict[Cell, dict[str, list[RunRef]]]) -> dict[str, Any]:
        """Figures of the paper's analysis, per target dataset, into `<output_dir>/plots/` (+ numbers in
        `<output_dir>/analysis.json`):
        - OOD accuracy vs number of averaged models (uniform and greedy soups), mean over cells;
        - diversity (ratio-error) vs weight-averaging gain of pairs of runs (Hypothesis 1), trial 0;
        - linear mode connectivity between runs from different inits (Hypothesis 2), trial 0."""
        import numpy as np

        from domainbed_recycle import analysis, plots

        result: dict[str, Any] = {}
        plots_dir = self.out / "plots"
        for dataset in self.spec.target.datasets:
            cells = [c for c in cell_runs if c.dataset == dataset]
            curves: dict[str, dict[int, list[float]]] = {}
            for cell in cells:
                for name in cell_runs[cell]:
                    marker = self._combined_marker(cell, name)
                    for outcome in json.loads(marker.read_text()) if marker.exists() else []:
                        for k, acc in outcome.get("info", {}).get("curve", []):
                            curves.setdefault(outcome["variant"], {}).setdefault(int(k), []).append(acc)
            mean_curves = {v: [(k, float(np.mean(a))) for k, a in sorted(c.items())] for v, c in curves.items()}
            entry: dict[str, Any] = {"acc_vs_num_models": mean_curves}
            if mean_curves:
                plots.plot_acc_vs_num_models(mean_curves, plots_dir / f"{dataset}_acc_vs_num_models.png",
                                             title=f"{dataset}: OOD accuracy vs number of averaged models")
            pools = [("LP-FT pool", "Soup"), ("auxiliary pool", "Ratatouille")]
            pairs, lmc_curves, barriers = [], {}, []
            for cell in [c for c in cells if c.trial_seed == 0]:
                evaluators: dict = {}
                for pool, strategy in pools:
                    runs = cell_runs[cell].get(strategy)
                    if not runs or len(runs) < 2:
                        continue
                    evaluator = self._evaluator(evaluators, cell, runs[0])
                    for pair in analysis.pairwise_wa_gains(runs, evaluator, cell.test_env):
                        pairs.append(pair | {"pool": pool, "test_env": cell.test_env})
                aux_runs = cell_runs[cell].get("Ratatouille", [])
                by_init = {}
                for run in aux_runs:
                    by_init.setdefault(run.init_label, run)
                if len(by_init) >= 2:
                    evaluator = self._evaluator(evaluators, cell, aux_runs[0])
                    labels = list(by_init)
                    for i, a in enumerate(labels):
                        for b in labels[i + 1:]:
                            lmc = analysis.lmc_between(by_init[a], by_init[b], evaluator, cell.test_env,
                                                       validation=False)
                            barriers.append({"test_env": cell.test_env, "a": a, "b": b,
                                             "barrier": lmc["test_barrier"]})
                            if cell.test_env == cells[0].test_env:
                                lmc_curves[f"{a} ↔ {b}"] = lmc["test_curve"]
            finite = [p for p in pairs if np.isfinite(p["ratio_error"])]
            entry |= {"pairs": pairs, "lmc_barriers": barriers}
            if len(finite) >= 2:
                _, slope, r, pvalue = plots.plot_diversity_vs_accuracy(
                    [p["ratio_error"] for p in finite], [p["gain"] for p in finite],
                    ["aux" if p["pool"] == "auxiliary pool" else "lp" for p in finite],
                    plots_dir / f"{dataset}_diversity_vs_wa_gain.png", xlabel="ratio-error of the pair",
                    ylabel="WA acc − mean individual acc (pp)", signed=True,
                    title=f"{dataset}: diversity vs weight-averaging gain (pairs of runs)")
                entry["diversity_fit"] = {"slope_pp_per_unit": slope, "r": r, "p": pvalue, "n_pairs": len(finite)}
            if lmc_curves:
                plots.plot_lmc_curves(lmc_curves, plots_dir / f"{dataset}_lmc.png",
                                      title=f"{dataset}: LMC across inits (test domain {cells[0].test_env})")
            result[dataset] = entry
        (self.out / "analysis.json").write_text(json.dumps(analysis.jsonable(result), indent=1))
        _log(f"analysis: plots in {plots_dir}")
        return result

    def combine(self, cell_runs: dict[Cell, dict[str, list[RunRef]]]) -> None:
        """Stage 5: each strategy's outcomes per cell, written once (a marker file per cell and strategy)."""
        from tqdm import tqdm

        todo = [(cell, name) for cell, per in cell_runs.items() for name in per
                if not self._combined_marker(cell, name).exists()]
        _log(f"stage 5/5 combine: {len(todo)} (cell, strategy) pair(s) to combine")
        evaluators: dict[tuple[str, int], Any] = {}
        strategies = {s.name: s for s in self.strategies}
        for cell, name in tqdm(todo, desc="combine", file=sys.stderr):
            runs = cell_runs[cell][name]
            evaluator = self._evaluator(evaluators, cell, runs[0])
            outcomes = strategies[name].combine(cell, runs, evaluator)
            self._write_outcomes(cell, outcomes)
            marker = self._combined_marker(cell, name)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps([_outcome_summary(o) for o in outcomes], indent=1))

    def combine_pooled(self, cell_runs: dict[Cell, dict[str, list[RunRef]]]) -> None:
        """Ratatouille† : uniform average of the auxiliary-pool runs of *all* trial seeds of a test domain,
        evaluated on each trial's splits (the paper's pooled variant; its test domain is never trained on)."""
        from domainbed_recycle.averaging import uniform_average
        from domainbed_recycle.checkpoints import load_checkpoint
        from domainbed_recycle.strategies.base import ModelOutcome

        groups: dict[tuple[str, int], list[Cell]] = {}
        for cell in cell_runs:
            groups.setdefault((cell.dataset, cell.test_env), []).append(cell)
        evaluators: dict[tuple[str, int], Any] = {}
        for (dataset, test_env), cells in groups.items():
            marker = self.out / "combined" / f"{dataset}_env{test_env}_pooled.json"
            if marker.exists():
                continue
            runs = [run for cell in cells for run in cell_runs[cell]["Ratatouille"]]
            state = uniform_average(load_checkpoint(run.checkpoint)[0] for run in runs)
            for cell in cells:
                evaluator = self._evaluator(evaluators, cell, runs[0])
                outcome = ModelOutcome("Ratatouille-uniform†", evaluator.record(state),
                                       {"members": [r.run_id for r in runs]})
                self._write_outcomes(cell, [outcome])
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"members": len(runs)}))

    def _evaluator(self, cache: dict, cell: Cell, run: RunRef) -> Any:
        from domainbed_recycle.checkpoints import read_metadata
        from domainbed_recycle.datasets import get_dataset
        from domainbed_recycle.strategies.evaluator import Evaluator

        key = (cell.dataset, cell.trial_seed)
        if key not in cache:
            if not cache.get(("dataset", cell.dataset)):
                cache.clear()  # one dataset's evaluators in memory at a time
                cache[("dataset", cell.dataset)] = get_dataset(cell.dataset, self.spec.data_dir, [],
                                                             {"data_augmentation": False})
            arch = read_metadata(run.checkpoint)["arch"]
            cache[key] = Evaluator(cache[("dataset", cell.dataset)], cell.trial_seed,
                                   self.spec.target.holdout_fraction, arch)
        return cache[key]

    def _combined_marker(self, cell: Cell, name: str) -> Path:
        return self.out / "combined" / f"{cell.dataset}_env{cell.test_env}_trial{cell.trial_seed}_{name}.json"

    def _write_outcomes(self, cell: Cell, outcomes: list[Any]) -> None:
        from domainbed_recycle import provenance
        from domainbed_recycle.strategies.base import RunsOutcome

        for outcome in outcomes:
            if isinstance(outcome, RunsOutcome):
                for run in outcome.runs:
                    records = run.records()
                    for record in records:
                        record["args"] = dict(record["args"], algorithm=outcome.variant)
                        record["strategy"] = outcome.variant
                        record["run_dir"] = str(run.output_dir)
                    _write_run(self.out / "table", {"variant": outcome.variant, "run": run.run_id}, records)
                continue
            environments = self._environments(cell.dataset)
            args = {"dataset": cell.dataset, "algorithm": outcome.variant, "test_envs": [cell.test_env],
                    "hparams_seed": 0, "trial_seed": cell.trial_seed, "environments": environments,
                    "holdout_fraction": self.spec.target.holdout_fraction}
            record = {"step": self.spec.target.steps or 0, "args": args, "hparams": {}, **outcome.accs,
                      "strategy": outcome.variant, "combined": outcome.info,
                      "versions": provenance.versions(), "git_commit": provenance.git_commit()}
            _write_run(self.out / "table", {"variant": outcome.variant, "cell": cell.__dict__}, [record])

    def _environments(self, dataset: str) -> list[str]:
        from domainbed_recycle.datasets import load_all_datasets

        return list(load_all_datasets().get(dataset).ENVIRONMENTS)

    def variants(self) -> list[str]:
        names = [v for s in self.strategies for v in s.variants]
        if self.spec.pooled_ratatouille and "Ratatouille-uniform" in names:
            names.insert(names.index("Ratatouille-uniform") + 1, "Ratatouille-uniform†")
        return names

    def table(self, fmt: str = "text") -> str:
        from domainbed_recycle.collect import collect, load_records, render

        records, report = load_records(self.out / "table")
        result = collect(records, methods=self.spec.selection, algorithms=self.variants(),
                         datasets=list(self.spec.target.datasets), report=report)
        return render(result, fmt)

    # ------------------------------------------------------------------ dry run
    def dry_run(self) -> str:
        """Every stage's jobs (without running anything or needing any data), one line per job."""
        from domainbed_recycle.sweep import jobs_from_configs

        lines = []
        foundation_job = self.foundation_job()
        foundation = self.foundation_checkpoint()
        lines.append(f"stage 1 foundation: {'train ' + foundation_job.describe() if foundation_job else foundation}")
        if self.spec.foundation.checkpoint and not Path(foundation).is_file():
            lines.append(f"  WARNING: {foundation} does not exist here (needed before stage 2 runs)")
        aux_jobs = self.auxiliary_jobs(foundation)
        lines.append(f"stage 2 auxiliary fine-tunings: {len(aux_jobs)} job(s)")
        lines += [f"  {job.describe()}" for job in aux_jobs.values()]
        probe_jobs = self.probe_jobs(foundation)
        lines.append(f"stage 3 linear probes: {len(probe_jobs)} job(s)")
        auxiliary = {d: str(job.output_dir / BEST) for d, job in aux_jobs.items()}
        configs, per_strategy = [], {}
        for cell, probe_job in probe_jobs.items():
            inits = self.inits(cell, foundation, auxiliary, str(probe_job.output_dir / BEST))
            for name, planned in self.target_configs(cell, inits, prepare=False).items():
                configs.extend(planned)
                per_strategy[name] = per_strategy.get(name, 0) + len(planned)
        jobs = jobs_from_configs(configs, self.out / "target")
        shared = ", ".join(f"{k}: {v}" for k, v in per_strategy.items())
        lines.append(f"stage 4 target runs: {len(jobs)} unique job(s) ({shared} planned; shared runs train once)")
        lines += [f"  {job.describe()}" for job in jobs]
        lines.append(f"stage 5 combine: {len(probe_jobs)} cell(s) x variants {', '.join(self.variants())}")
        return "\n".join(lines)


def _write_run(table_dir: Path, key: dict[str, Any], records: list[dict[str, Any]]) -> None:
    folder = table_dir / args_hash(key)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "done").unlink(missing_ok=True)
    with open(folder / "results.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")
    (folder / "done").write_text("done\n")


def _outcome_summary(outcome: Any) -> dict[str, Any]:
    from domainbed_recycle.strategies.base import ModelOutcome

    if isinstance(outcome, ModelOutcome):
        return {"variant": outcome.variant, "accs": outcome.accs, "info": outcome.info}
    return {"variant": outcome.variant, "runs": [r.run_id for r in outcome.runs]}


def import_finetuning(path: str | Path, reference: str | Path, into_dir: str | Path, name: str | None = None) -> Path:
    """Add a fine-tuning made elsewhere to a pipeline's auxiliary pool (`<output_dir>/imported/`).

    `path` may be our safetensors, anyone's safetensors or state dict, or DomainBed's `model.pkl`
    (all read without unpickling code). Its featurizer must match the foundation's (`reference`)
    key for key and shape for shape; only the featurizer is kept (its head belongs to another task).
    """
    import re

    from domainbed_recycle.checkpoints import check_compatible, load_checkpoint, save_checkpoint, split_state

    reference_state, reference_meta = load_checkpoint(reference)
    state, meta = load_checkpoint(path)
    expected, _ = split_state(reference_state)
    featurizer, _ = split_state(state)
    if not featurizer:
        raise UserError(f"{path}: no featurizer weights found (expected keys starting with 'featurizer.', "
                        "a torchvision ResNet state dict, or DomainBed's model.pkl)")
    check_compatible(expected, featurizer, "featurizer of the imported fine-tuning", path)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or Path(path).stem)
    target = Path(into_dir) / "imported" / f"{name}.safetensors"
    if target.exists():
        raise UserError(f"{target} already exists: choose another --name")
    metadata = {"arch": reference_meta.get("arch"), "imported_from": str(Path(path).resolve()),
                "origin": meta.get("origin", "safetensors" if str(path).endswith(".safetensors") else "state dict")}
    return save_checkpoint(target, {f"featurizer.{k}": v for k, v in featurizer.items()}, metadata)
