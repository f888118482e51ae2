"""What a spec reads before it trains: every dataset's files and the foundation's weights, checked up front.

`check_inputs(spec, plan)` lists, one line each, what is missing (a run would fail on it: a dataset
folder or domain, a built-in's sources, the foundation's weights file) and where DomainBed's datasets
differ from DomainBed's own copy (image counts, classes: a run still trains). The dry run prints both;
the pipeline refuses to start while anything is missing, before it writes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from domainbed_recycle import weights
from domainbed_recycle.datasets.check import check_dataset
from domainbed_recycle.recycle.spec import RecycleSpec
from domainbed_recycle.recycle.stages import Plan


@dataclass
class InputCheck:
    """missing: what a run would fail on; differences: where data differs from DomainBed's copy."""

    missing: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)  # how to get what is missing, each once

    def lines(self) -> list[str]:
        return ([f"MISSING {line}" for line in self.missing] + [f"DIFFERS {line}" for line in self.differences]
                + [f"HOW TO GET THEM: {hint}" for hint in self.hints])


def spec_datasets(spec: RecycleSpec) -> list[str]:
    """Every dataset a spec trains on, once each: the targets, the auxiliary tasks in use, the corpus."""
    names = list(spec.target.datasets) + spec.auxiliary_datasets()
    if not spec.foundation.checkpoint and spec.foundation.dataset:
        names.append(spec.foundation.dataset)
    return list(dict.fromkeys(names))


def check_inputs(spec: RecycleSpec, plan: Plan) -> InputCheck:
    """Check every dataset folder (domains, classes, image counts) and the foundation's weights."""
    result = InputCheck()
    for name in spec_datasets(spec):
        found = check_dataset(name, spec.data_dir)
        result.missing += found.missing
        result.differences += found.differences
        if found.hint and found.hint not in result.hints:
            result.hints.append(found.hint)
    if plan.foundation_job is None:
        problem = weights.problem(plan.foundation)
        if problem:
            result.missing.append(f"[foundation] checkpoint: {problem}")
    return result
