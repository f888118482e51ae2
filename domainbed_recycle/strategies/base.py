"""The strategy contract and the objects strategies exchange with the recycling pipeline.

A strategy declares what the pipeline needs to know about it (class attributes: `variants`,
`needs_auxiliary`, `analysis_pool`, `lmc_across_inits`, `pooled`) and implements
- `pools(cell, inits, settings) -> {pool name: [run config]}`: which target runs, from which init;
- `derived_inits(cell, inits, settings) -> [DerivedInit]`: init files its runs start from that the
  pipeline must build first (e.g. a fused featurizer), without writing anything itself;
- `combine(cell, pools, evaluator) -> outcomes`: how finished runs become the reported models.
Run configs are `TrainConfig` keyword dicts; two strategies planning the same config share one run,
because a job's folder is the hash of its config (e.g. LP-FT and Soup read the same runs).
Nothing here mutates its inputs, so planning is a pure function of the spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol

from domainbed_recycle import hparams_registry
from domainbed_recycle.algorithms import ALGORITHMS
from domainbed_recycle.averaging import check_finite
from domainbed_recycle.checkpoints import load_checkpoint, read_metadata
from domainbed_recycle.datasets import get_dataset_class
from domainbed_recycle.evaluation import Evaluator
from domainbed_recycle.misc import per_dataset, seed_hash
from domainbed_recycle.registry import Registry
from domainbed_recycle.rundir import RunDir
from domainbed_recycle.validation import Bounds, Count, Fraction, Steps

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")

# A number, or a table {dataset: number}; None: the dataset's (steps and checkpoint_freq of a spec's stage)
PerDataset = Steps | dict[str, Steps | None] | None

PHI0 = "phi0"  # init label of runs starting from the foundation featurizer


@dataclass(frozen=True)
class Cell:
    """One target evaluation unit: a dataset, its held-out domain and a trial seed."""

    dataset: str
    test_env: int
    trial_seed: int


@dataclass(frozen=True)
class AuxSource:
    """The fine-tunings of the foundation on one auxiliary task (or one imported fine-tuning).

    label: e.g. 'aux:Glyphs' or 'import:name'; checkpoints: its runs' featurizer checkpoints, in run
    order (the reference fine-tunes each auxiliary task with several hyper-parameter draws).
    """

    label: str
    checkpoints: tuple[str, ...]

    def pick(self, hparams_seed: int) -> str:
        """Run (h mod n): what Fusing's run h takes from this task, as the reference does (every fused init
        holds every task, so h mod n walks through all n runs whatever the number of tasks)."""
        return self.checkpoints[hparams_seed % len(self.checkpoints)]


@dataclass(frozen=True)
class Inits:
    """Checkpoints a cell's runs can start from.

    foundation: checkpoint of the pre-trained model (its featurizer is phi_0).
    probe: checkpoint whose classifier is the linear probe fitted on the target's training domains.
    auxiliary: the auxiliary fine-tunings (featurizers of the foundation's architecture); a target
        dataset is never among its own auxiliary tasks.
    work_dir: where derived inits (e.g. fused featurizers) are written by the pipeline.
    """

    foundation: str
    probe: str
    auxiliary: tuple[AuxSource, ...] = ()
    work_dir: Path = Path("inits")

    def featurizer_for(self, hparams_seed: int) -> tuple[str, str]:
        """(label, checkpoint) of the init of target run `hparams_seed` in the auxiliary pool.

        Source h mod (K+1) of [phi_0, aux_1..aux_K], as the reference (`misc.get_featurizer_aux`), then
        that source's run ⌊h / (K+1)⌋ mod n: the k-th visit of a source takes its run k mod n, so every
        run of every task is used once (K+1)·n target runs are planned, whatever n and K. The reference
        takes run h mod n, which uses them all only when n and K+1 are coprime (its n = 4, K+1 = 5);
        with n = 2 and K+1 = 4 it would take one run per task forever. When they are coprime the two
        rules differ only by a permutation of each task's runs (h = s + k(K+1) gives the reference
        run (s + k(K+1)) mod n, a bijection of k mod n), so they use the same runs equally often.
        """
        n_sources = len(self.auxiliary) + 1
        index = hparams_seed % n_sources
        if index == 0:
            return PHI0, self.foundation
        source = self.auxiliary[index - 1]
        return source.label, source.checkpoints[(hparams_seed // n_sources) % len(source.checkpoints)]


class DerivedInit(Protocol):
    """An init file computed from other checkpoints (`build` writes it at `path` if missing)."""

    path: Path

    def build(self) -> None: ...


@dataclass
class TargetRunSettings:
    """The [target] settings every target run is planned with, declared once: the spec's [target] table
    (`recycle.spec.TargetSpec`) extends them with the cells, `TargetSettings` with the data folder."""

    algorithm: str = "ERM"  # training objective of target runs (any registered Algorithm)
    n_runs: Count = 4  # M: runs per pool (LP-FT pool, auxiliary pool)
    n_runs_small: Count = 2  # runs of MovingAverage (one run reported by selection, like ERM's; Fusing has M)
    steps: PerDataset = None  # a number, or a table {dataset: steps}; None: the dataset's N_STEPS
    checkpoint_freq: PerDataset = None  # likewise; None: the dataset's CHECKPOINT_FREQ
    holdout_fraction: Fraction = 0.2
    hparams_profile: str | None = None  # e.g. "small_finetune" (default: the network's, pre-trained)
    hparams: dict[str, Any] = field(default_factory=dict)
    # r in kappa_i ~ exp(r U(0,1)); 0 = uniform fusing (reference README: 4). At most 700: exp(r) must stay a float64
    fusing_range: Annotated[float, Bounds(0, 700)] = 4.0
    # head-only warm-up of runs whose featurizer is not phi_0 (reference: 200)
    lp_steps: Annotated[int, Bounds(0, limit="steps")] = 200


@dataclass
class TargetSettings(TargetRunSettings):
    """Target-run settings shared by every strategy of a pipeline: the spec's [target] run settings and
    its data folder."""

    data_dir: str | None = None

    def steps_for(self, dataset: str) -> int | None:
        return per_dataset(self.steps, dataset)

    def checkpoint_freq_for(self, dataset: str) -> int | None:
        return per_dataset(self.checkpoint_freq, dataset)


@dataclass(frozen=True)
class RunRef:
    """A target run a strategy reads: its config and its run folder."""

    config: dict[str, Any]
    run: RunDir

    @property
    def output_dir(self) -> Path:
        return self.run.path

    @property
    def checkpoint(self) -> Path:
        """The run's best checkpoint by training-domain validation (what averaging uses)."""
        return self.run.best_checkpoint

    @property
    def init_label(self) -> str:
        return str(self.config.get("init_label"))

    @property
    def run_id(self) -> str:
        return self.output_dir.name

    @cached_property
    def val_acc(self) -> float:
        return float(read_metadata(self.checkpoint)["val_acc"])

    def weights(self) -> dict[str, Any]:
        """The best checkpoint's state dict; a non-finite one (a diverged run) is refused, naming it, so it
        never joins an average, an ensemble or a merge."""
        return check_finite(load_checkpoint(self.checkpoint)[0], str(self.checkpoint))

    def records(self) -> list[dict[str, Any]]:
        return self.run.read_records()


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


Pools = dict[str, list[dict[str, Any]]]  # pool name -> run configs, in plan order
RUNS = "runs"  # the pool name of strategies with a single pool


class Strategy:
    """Base class: subclasses set the class attributes below and implement `pools` and `combine`.

    Attributes:
        name: registry name, used in specs.
        variants: the table rows this strategy reports, in order.
        needs_auxiliary: its runs start from auxiliary fine-tunings (a spec must list some).
        analysis_pool: (name, short label) under which the pipeline's analysis measures the diversity
            vs weight-averaging gain of pairs of its runs; None: not analysed.
        lmc_across_inits: the analysis measures linear mode connectivity between its runs of
            different inits.
        pooled: pooled variant -> the variant it is listed after; a pooled variant is the uniform
            average of this strategy's runs over every trial seed of a test domain (the paper's †).
        algorithm: the objective this strategy's own target runs use (e.g. "MovingAverage"); None: the
            spec's [target] algorithm. The spec's [target] hparams are checked against these algorithms.
    """

    name: ClassVar[str]
    variants: ClassVar[tuple[str, ...]]
    needs_auxiliary: ClassVar[bool] = False
    analysis_pool: ClassVar[tuple[str, str] | None] = None
    lmc_across_inits: ClassVar[bool] = False
    pooled: ClassVar[dict[str, str]] = {}
    algorithm: ClassVar[str | None] = None

    def derived_inits(self, cell: Cell, inits: Inits, settings: TargetSettings) -> list[DerivedInit]:
        """Init files this strategy's runs need built before they start. Default: none."""
        return []

    def pools(self, cell: Cell, inits: Inits, settings: TargetSettings) -> Pools:
        raise NotImplementedError

    def combine(
        self, cell: Cell, pools: dict[str, list[RunRef]], evaluator: Evaluator
    ) -> list[RunsOutcome | ModelOutcome]:
        raise NotImplementedError


def run_seed(cell: Cell, algorithm: str, hparams_seed: int, init_label: str) -> int:
    """The training seed of a target run, derived from what identifies it."""
    return seed_hash(cell.dataset, algorithm, [cell.test_env], hparams_seed, cell.trial_seed, init_label)


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
    every argument, the init included, as DomainBed derives it from a run's arguments. A run whose
    featurizer is not phi_0 first trains its head alone for `settings.lp_steps` steps (the reference's
    LP warm-up, which avoids distorting a foreign featurizer with a head fitted to phi_0).
    """
    algorithm = algorithm or settings.algorithm
    overrides = dict(settings.hparams)
    arch = overrides.get("arch")
    profile = settings.hparams_profile or hparams_registry.default_profile(  # every target run is pre-trained
        get_dataset_class(cell.dataset).HPARAMS_PROFILE, arch if isinstance(arch, str) else None, pretrained=True)
    if init_label != PHI0 and not init_label.startswith(f"{PHI0}/") and settings.lp_steps:
        overrides["lp_steps"] = settings.lp_steps
    return {
        "dataset": cell.dataset,
        "algorithm": algorithm,
        "test_envs": [cell.test_env],
        "data_dir": settings.data_dir,
        # The spec refused overrides that none of its algorithms declares (`recycle_spec.validate`);
        # a run takes those its own algorithm declares.
        "hparams": hparams_registry.validate_overrides([algorithm, *ALGORITHMS], profile, overrides)[algorithm],
        "hparams_seed": hparams_seed,
        "hparams_profile": settings.hparams_profile,
        "trial_seed": cell.trial_seed,
        "seed": run_seed(cell, algorithm, hparams_seed, init_label),
        "steps": settings.steps_for(cell.dataset),
        "checkpoint_freq": settings.checkpoint_freq_for(cell.dataset),
        "holdout_fraction": settings.holdout_fraction,
        "init_featurizer": featurizer,
        "init_classifier": classifier,
        "init_label": init_label,
    }
