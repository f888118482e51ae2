"""The strategy contract and the objects strategies exchange with the pipeline.

A strategy = `plan(cell, inits, settings) -> list of run configs` (which target runs, from which
initialisation) + `combine(cell, runs, evaluator) -> outcomes` (how finished runs become the reported
model). Run configs are `TrainConfig` keyword dicts; two strategies planning the same config share
one run, because a job's folder is the hash of its config (e.g. LP-FT and Soup read the same runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from domainbed_recycle.misc import seed_hash
from domainbed_recycle.registry import Registry

if TYPE_CHECKING:
    from domainbed_recycle.strategies.evaluator import Evaluator

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")

PHI0 = "phi0"  # init label of runs starting from the foundation featurizer


@dataclass(frozen=True)
class Cell:
    """One target evaluation unit: a dataset, its held-out domain and a trial seed."""

    dataset: str
    test_env: int
    trial_seed: int


@dataclass
class Inits:
    """Checkpoints a cell's runs can start from.

    foundation: checkpoint of the pre-trained model (its featurizer is phi_0).
    probe: checkpoint whose classifier is the linear probe fitted on the cell's training domains.
    auxiliary: (label, checkpoint) of each auxiliary fine-tuning (featurizers of the same architecture).
    fused: checkpoint of the fused featurizer (written by Fusing.prepare), if any.
    """

    foundation: str
    probe: str
    auxiliary: list[tuple[str, str]] = field(default_factory=list)
    fused: str | None = None


@dataclass
class TargetSettings:
    """Target-run settings shared by every strategy of a pipeline (from the spec's [target] table)."""

    algorithm: str = "ERM"  # training objective of target runs (any registered Algorithm)
    n_runs: int = 4  # M: runs per pool (LP-FT pool, auxiliary pool)
    n_runs_small: int = 2  # runs of the strategies that need runs of their own (MovingAverage, Fusing)
    steps: int | None = None
    checkpoint_freq: int | None = None
    holdout_fraction: float = 0.2
    data_dir: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    hparams_profile: str | None = None
    fusing_range: float = 0.0  # r in kappa_i ~ exp(r U(0,1)); 0 = uniform fusing


@dataclass(frozen=True)
class RunRef:
    """A finished target run: its config and folder."""

    config: dict[str, Any]
    output_dir: Path

    @property
    def checkpoint(self) -> Path:
        """The run's best checkpoint by training-domain validation (what averaging uses)."""
        return self.output_dir / "model_best.safetensors"

    @property
    def init_label(self) -> str:
        return str(self.config.get("init_label"))

    @property
    def run_id(self) -> str:
        return self.output_dir.name

    @cached_property
    def val_acc(self) -> float:
        from domainbed_recycle.checkpoints import read_metadata

        return float(read_metadata(self.checkpoint)["val_acc"])

    def records(self) -> list[dict[str, Any]]:
        lines = (self.output_dir / "results.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


@dataclass
class RunsOutcome:
    """The reported model is one of `runs`, chosen later by model selection (like a DomainBed algorithm)."""

    variant: str
    runs: list[RunRef]


@dataclass
class ModelOutcome:
    """The reported model is a combination of runs, already evaluated.

    accs: DomainBed's `env{i}_in_acc` / `env{i}_out_acc` of the combined model.
    info: what was combined (run ids, selected subset, curves...).
    """

    variant: str
    accs: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


class Strategy:
    """Base class: subclasses set `name`, `variants`, and implement `plan` and `combine`.

    `algorithm`: the objective this strategy's own target runs use (e.g. "MovingAverage"); None: the
    spec's [target] algorithm. The spec's [target] hparams are checked against these algorithms.
    """

    name: ClassVar[str]
    variants: ClassVar[tuple[str, ...]]
    algorithm: ClassVar[str | None] = None

    def prepare(self, cell: Cell, inits: Inits, settings: TargetSettings, work_dir: Path) -> None:
        """Write files the plan needs (e.g. a fused featurizer). Default: nothing."""

    def plan(self, cell: Cell, inits: Inits, settings: TargetSettings) -> list[dict[str, Any]]:
        raise NotImplementedError

    def combine(
        self, cell: Cell, runs: list[RunRef], evaluator: Evaluator
    ) -> list[RunsOutcome | ModelOutcome]:
        raise NotImplementedError


def target_run(
    cell: Cell,
    settings: TargetSettings,
    hparams_seed: int,
    init_label: str,
    featurizer: str,
    classifier: str | None,
    algorithm: str | None = None,
) -> dict[str, Any]:
    """Config of one target run (TrainConfig kwargs without output_dir).

    The hparams seed picks the hyper-parameters (0 = defaults); the training seed is derived from
    every argument, the init included, as DomainBed derives it from a run's arguments.
    """
    from domainbed_recycle import hparams_registry
    from domainbed_recycle.algorithms import ALGORITHMS
    from domainbed_recycle.datasets import load_all_datasets

    algorithm = algorithm or settings.algorithm
    profile = settings.hparams_profile or load_all_datasets().get(cell.dataset).HPARAMS_PROFILE
    return {
        "dataset": cell.dataset,
        "algorithm": algorithm,
        "test_envs": [cell.test_env],
        "data_dir": settings.data_dir,
        # The spec refused overrides that none of its algorithms declares (`recycle_spec.validate`);
        # a run takes those its own algorithm declares.
        "hparams": hparams_registry.validate_overrides([algorithm, *ALGORITHMS], profile, settings.hparams)[algorithm],
        "hparams_seed": hparams_seed,
        "hparams_profile": settings.hparams_profile,
        "trial_seed": cell.trial_seed,
        "seed": seed_hash(cell.dataset, algorithm, [cell.test_env], hparams_seed, cell.trial_seed, init_label),
        "steps": settings.steps,
        "checkpoint_freq": settings.checkpoint_freq,
        "holdout_fraction": settings.holdout_fraction,
        "init_featurizer": featurizer,
        "init_classifier": classifier,
        "init_label": init_label,
    }
