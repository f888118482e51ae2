"""`drecycle recycle SPEC`: the stages of model recycling in order, each a resumable sweep.

Planning is `stages.plan` (pure), combining `combine`, figures `figures`; this module only sequences
them: launch a stage's jobs, check they succeeded, go on. Every stage skips what is done, so a killed
pipeline resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from domainbed_recycle import analysis, weights
from domainbed_recycle.errors import UserError
from domainbed_recycle.evaluation import EvaluatorCache
from domainbed_recycle.recycle import combine, figures, inputs, reading, stages
from domainbed_recycle.recycle.spec import RecycleSpec
from domainbed_recycle.rundir import write_atomic
from domainbed_recycle.strategies import STRATEGIES
from domainbed_recycle.sweep import Job
from domainbed_recycle.sweep.launchers import SlurmOptions, launch


def _log(message: str) -> None:
    print(f"[recycle] {message}", file=sys.stderr, flush=True)


class Pipeline:
    """Runs one recycling spec: `run()` does every stage; `dry_run()` lists the jobs; `table()` tabulates."""

    def __init__(self, spec: RecycleSpec) -> None:
        self.spec = spec
        self.out = Path(spec.output_dir).resolve()
        self.strategies = [STRATEGIES.get(name)() for name in spec.strategies]
        self._checked: stages.Plan | None = None

    def plan(self) -> stages.Plan:
        return stages.plan(self.spec, self.strategies, self.out)

    def foundation_checkpoint(self) -> str:
        return str(stages.foundation_checkpoint(self.spec, self.out))

    def variants(self) -> list[str]:
        return combine.variants(self.strategies, self.spec.pooled)

    def dry_run(self, gpu: str | None = None) -> tuple[str, inputs.InputCheck]:
        """Every stage's jobs, one line per job, then what they cost (steps, images, GPU-hours on `gpu` or
        on every measured GPU kind); and the check of every input (dataset folders, the foundation's
        weights). Nothing is run or written."""
        from domainbed_recycle.sweep import cost

        plan = self.plan()
        estimate = cost.estimate(stages.training_jobs(plan))
        listing = stages.describe(plan, self.variants()) + "\n" + cost.describe(estimate, gpu)
        return listing, inputs.check_inputs(self.spec, plan)

    def table(self, fmt: str = "text") -> str:
        """The strategy table of what is combined so far."""
        return combine.table(self.out, self.variants(), list(self.spec.target.datasets), self.spec.selection, fmt)

    def reading(self) -> str:
        """The paper's claims judged on the table and `analysis.json`, each with its interval and verdict
        ("" before the analysis); also recorded in `analysis.json` and drawn (`<dataset>_claims.png`)."""
        path = self.out / figures.ANALYSIS
        if not path.is_file():
            return ""
        result = combine.table_result(self.out, self.variants(), list(self.spec.target.datasets),
                                      self.spec.selection[:1])
        claims = reading.judge(result, {dataset: entry for dataset, entry in json.loads(path.read_text()).items()
                                        if dataset in self.spec.target.datasets})
        figures.record_claims(self.out, claims)
        return reading.format_reading(claims, self.spec.selection[0])

    def run_inits(self) -> str:
        """Stages 1-3 only, then the inits diagnostic (`figures.init_report`), also saved as
        `<out>/inits.json`: how far each auxiliary featurizer moved and the target probe along its path."""
        plan = self._prepare()
        cache = EvaluatorCache(self.spec.data_dir, self.spec.target.holdout_fraction)
        report = figures.init_report(plan, cache)
        write_atomic(self.out / "inits.json", json.dumps(analysis.jsonable(report), indent=1))
        return figures.format_init_report(report)

    def check(self) -> stages.Plan:
        """Everything a run checks before it writes anything (the output folder is new, empty or the
        harness's; no test-domain leakage; every input there); returns the plan. Done once."""
        if self._checked is None:
            stages.check_output_dir(self.out)
            stages.check_leakage(self.spec)
            plan = self.plan()
            checked = inputs.check_inputs(self.spec, plan)
            for line in checked.differences:
                _log(f"note: {line}")
            if checked.missing:
                raise UserError(f"{self.spec.source}: {len(checked.missing)} input(s) missing, nothing was run "
                                "(`--dry_run` lists them):\n"
                                + "\n".join(f"  {line}" for line in checked.missing + checked.hints))
            for note in self.spec.notes:
                _log(f"note: {note}")
            self._checked = plan
        return self._checked

    def _prepare(self) -> stages.Plan:
        """Stages 1-3 (foundation, auxiliary LP-FT, target probes); returns the plan."""
        plan = self.check()  # before anything is written
        stages.claim_output_dir(self.out)
        write_atomic(self.out / stages.SPEC, json.dumps(dataclasses.asdict(self.spec), indent=2))
        if plan.foundation_job is not None:
            self._launch("1/5 foundation", [plan.foundation_job])
        problem = weights.problem(plan.foundation)
        if problem:
            raise UserError(f"[foundation] {problem}")
        self._launch("2/5 auxiliary linear probes", list(plan.auxiliary_probe_jobs.values()))
        self._launch("2/5 auxiliary fine-tunings", [job for runs in plan.auxiliary_jobs.values() for job in runs])
        self._launch("3/5 linear probes", list(plan.probe_jobs.values()))
        return plan

    def run(self) -> str:
        """Run (or resume) every stage and return the strategy table as text."""
        start = time.time()
        plan = self._prepare()
        for init in plan.derived:
            init.build()
        self._launch("4/5 target runs", plan.target_jobs)
        self._launch("5/5 combine", combine.combine_jobs(plan.cells, self.spec, self.out), force=True)
        cache = EvaluatorCache(self.spec.data_dir, self.spec.target.holdout_fraction)
        if self.spec.pooled:
            began = time.time()
            combine.combine_pooled(plan.cells, self.strategies, self.spec, self.out, cache)
            _log(f"pooled variants: {time.time() - began:.0f} s")
        if self.spec.analysis:
            began = time.time()
            figures.analyze(plan.cells, self.strategies, list(self.spec.target.datasets), self.out, cache)
            _log(f"analysis: {time.time() - began:.0f} s, plots in {self.out / figures.PLOTS}")
        table = self.table()
        _log(f"done in {time.time() - start:.0f} s; records in {self.out / combine.TABLE}")
        return table

    def _launch(self, stage: str, jobs: list[Job], force: bool = False) -> None:
        """Run a stage's jobs on the spec's launcher; UserError if one failed, diverged or runs elsewhere.
        `force`: run every job given, even one whose folder says done (for jobs whose state lives elsewhere)."""
        if not jobs:
            return
        slurm = SlurmOptions.from_dict(dict(self.spec.slurm)) if self.spec.slurm else None
        _log(f"stage {stage}: {len(jobs)} job(s)")
        report = launch(jobs, launcher=self.spec.launcher, n_workers=self.spec.n_workers, slurm=slurm,
                        skip_done=not force)
        _log(report.summary().splitlines()[0])
        if report.stale:  # later stages would read runs of another hyper-parameter registry
            raise UserError(f"stage {stage}: {len(report.stale)} finished run(s) used other hyper-parameters than "
                            f"they would now (the registry changed since): use a new output_dir, or delete "
                            f"those run folders:\n{report.summary()}")
        if not report.ok:
            raise UserError(f"stage {stage}: {len(report.failed)} job(s) failed:\n{report.summary()}")
        if report.diverged:  # later stages would start from, average or tabulate a diverged run
            raise UserError(f"stage {stage}: {len(report.diverged)} job(s) diverged (change their "
                            f"hyper-parameters in the spec):\n{report.summary()}")
        if report.elsewhere:  # another process is training them: their results are not there yet
            raise UserError(f"stage {stage}: {len(report.elsewhere)} job(s) are running elsewhere; rerun "
                            f"once they are done:\n{report.summary()}")
