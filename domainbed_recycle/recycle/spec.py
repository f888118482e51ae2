"""The recycling pipeline's spec: a TOML file in `sweeps/`, validated with clear errors.

Paths in a spec file (`output_dir`, `data_dir`, `[foundation] checkpoint`) are read against the spec
file's folder, so a spec runs the same from any folder; paths given on the command line are read
against the current folder. `--set section.key=value` changes any key before validation. A spec may
start from another one, `extends = "../sweeps/recycle_paper.toml"`, and change only what differs (its
tables are merged key by key into the other's; each file's paths are read against its own folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from domainbed_recycle import performance as switches
from domainbed_recycle import weights
from domainbed_recycle.algorithms import ALGORITHMS, get_algorithm_class
from domainbed_recycle.collect.selection import METHODS
from domainbed_recycle.datasets import get_dataset_class, load_all_datasets
from domainbed_recycle.errors import UserError
from domainbed_recycle.hparams_registry import PROFILES, declarations, validate_overrides
from domainbed_recycle.strategies import STRATEGIES
from domainbed_recycle.strategies.base import PerDataset, TargetRunSettings
from domainbed_recycle.sweep.launchers import LAUNCHERS, SlurmOptions
from domainbed_recycle.sweep.spec import apply_settings, read_spec_file
from domainbed_recycle.training import TrainConfig
from domainbed_recycle.validation import (
    Count,
    Domains,
    Names,
    Steps,
    Text,
    Unique,
    Workers,
    build,
    is_text,
)

# Field types with their ranges are checked by `validation.build`, the validator of sweep specs and runs too.


@dataclass
class FoundationSpec:
    """Stage 1. Either pre-train on `dataset` here, or read `checkpoint`: a weights reference (a file, or a
    name read from its library's cache, e.g. "torchvision:ResNet50_Weights.IMAGENET1K_V1"; see `weights`)."""

    dataset: str | None = "FashionPretrain"
    checkpoint: str | None = None
    steps: Steps = 1500
    checkpoint_freq: Steps = 500
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuxiliarySpec:
    """Stage 2. Fine-tunings of the foundation on auxiliary tasks (all domains, no test domain).

    As in the reference, each auxiliary task is LP-FT: a linear probe of the foundation (with the
    [probe] table's recipe), then `n_runs` fine-tunings from it with hparams seeds 0..n_runs-1.
    """

    datasets: Annotated[list[str], Unique()] = field(default_factory=list)
    n_runs: Count = 4  # fine-tunings per auxiliary task (the reference: 4)
    checkpoint: str = "last"  # which featurizer target runs start from: "last" (the reference) or "best"
    steps: PerDataset = 300  # a number, or a table {dataset: steps}; None: the dataset's
    checkpoint_freq: PerDataset = 100  # likewise
    hparams_profile: str | None = None  # e.g. "small_finetune" (default: the network's, pre-trained)
    hparams: dict[str, Any] = field(default_factory=dict)
    exclude_target: bool = True  # a target dataset is never its own auxiliary task (the paper's rule)


@dataclass
class ProbeSpec:
    """Stage 3 (and the LP of stage 2's LP-FT). Linear probe on a dataset's training domains, featurizer
    frozen. The reference's recipe: the dataset's default hyper-parameters and training length."""

    steps: PerDataset = 200  # a number, or a table {dataset: steps}; None: the dataset's
    checkpoint_freq: PerDataset = 100  # likewise
    hparams_profile: str | None = None  # e.g. "small_finetune" (default: the network's, pre-trained)
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class TargetSpec(TargetRunSettings):
    """Stage 4. Target runs: datasets, held-out domains, trials, and the run settings (runs per pool,
    objective, length, ...) that `strategies.base.TargetRunSettings` declares."""

    datasets: Names = field(default_factory=list)
    # default: every domain, one at a time
    test_envs: Domains | None = None
    n_trials: Count = 3


@dataclass
class RecycleSpec:
    output_dir: Text
    strategies: Names
    foundation: FoundationSpec
    auxiliary: AuxiliarySpec
    probe: ProbeSpec
    target: TargetSpec
    data_dir: Text | None = None
    launcher: str = "pool"
    n_workers: Workers | None = None
    selection: Names = field(default_factory=lambda: ["iid"])
    pooled: bool = True  # add the † rows: strategies' variants pooled over trial seeds
    analysis: bool = True
    slurm: dict[str, Any] = field(default_factory=dict)
    performance: dict[str, Any] = field(default_factory=dict)  # speed switches of every training job
    source: str = "spec"
    notes: list[str] = field(default_factory=list)  # what validation noticed but did not refuse

    def auxiliary_datasets(self) -> list[str]:
        """The auxiliary tasks some target uses: a task that is the only target (with `exclude_target`)
        would be fine-tuned for nothing, so it is skipped (validation notes it)."""
        a = self.auxiliary
        return [d for d in a.datasets if not (a.exclude_target and set(self.target.datasets) == {d})]


_SECTIONS = {"foundation": FoundationSpec, "auxiliary": AuxiliarySpec, "probe": ProbeSpec, "target": TargetSpec}


def spec_from_dict(values: dict[str, Any], source: str = "spec") -> RecycleSpec:
    """Build and validate a RecycleSpec (names of datasets, algorithms, strategies, selections)."""
    if not isinstance(values, dict):
        raise UserError(f"{source}: a recycle spec must be a table of keys, got {type(values).__name__}")
    values = dict(values)
    sections = {name: build(cls, values.pop(name, {}), f"{source} [{name}]") for name, cls in _SECTIONS.items()}
    for key in ("output_dir", "strategies"):
        if key not in values:
            raise UserError(f"{source}: '{key}' is required")
    spec = build(RecycleSpec, values | sections | {"source": source}, source)
    validate(spec)
    return spec


# Keys holding paths, read against the spec file's folder: (section or None, key).
PATH_KEYS = ((None, "output_dir"), (None, "data_dir"), ("foundation", "checkpoint"))


def load_recycle_spec(path: str | Path, overrides: dict[str, Any] | None = None,
                      settings: list[str] | None = None) -> RecycleSpec:
    """Read a TOML (or JSON) spec with the sweeps' reader: its paths are made absolute against the spec
    file's folder; then `settings` ("section.key=value", `--set`) and `overrides` (top-level keys, CLI
    flags) apply, their paths read against the current folder."""
    values = _read_with_bases(Path(path), [])
    given = apply_settings({}, settings or [], str(path))
    _absolute_paths(given, Path.cwd())
    values = _merge(values, given)
    cli = {k: v for k, v in (overrides or {}).items() if v is not None}
    _absolute_paths(cli, Path.cwd())
    values.update(cli)
    return spec_from_dict(values, str(path))


def _read_with_bases(path: Path, seen: list[Path]) -> dict[str, Any]:
    """The keys of spec file `path` (paths made absolute against its folder), on top of those of the spec
    it `extends`, recursively; UserError for a missing base or a loop."""
    values = read_spec_file(path, what="recycle spec")
    _absolute_paths(values, path.resolve().parent)
    base = values.pop("extends", None)
    if base is None:
        return values
    if not isinstance(base, str) or not base or not is_text(base):
        raise UserError(f"{path}: 'extends' must be the path of another spec file, got {base!r}")
    base_path = (path.resolve().parent / Path(base).expanduser()).resolve()
    if base_path in seen or base_path == path.resolve():
        raise UserError(f"{path}: 'extends' makes a loop through {base_path}")
    if not base_path.is_file():
        raise UserError(f"{path}: 'extends' names {base_path}, which is not a file")
    return _merge(_read_with_bases(base_path, [*seen, path.resolve()]), values)


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied key by key, tables merged recursively."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _absolute_paths(values: dict[str, Any], base: Path) -> None:
    """Make the path keys of `values` absolute against `base`, in place (names such as
    "torchvision:...", non-strings and impossible paths are left for validation)."""
    for section, key in PATH_KEYS:
        table = values.get(section) if section else values
        if isinstance(table, dict) and isinstance(table.get(key), str) and table[key] and is_text(table[key]):
            table[key] = weights.normalize(table[key], base)  # else: refused by validation


def validate(spec: RecycleSpec) -> None:
    """Check every name the spec uses against the registries; raise one UserError listing the problem."""
    where = spec.source
    switches.check(spec.performance, f"{where} [performance]")
    if not spec.target.datasets:
        raise UserError(f"{where} [target]: 'datasets' is empty")
    needs_aux = [name for name in spec.strategies if STRATEGIES.get(name).needs_auxiliary]
    names = list(spec.target.datasets) + list(spec.auxiliary.datasets)
    if spec.foundation.checkpoint is None:
        if not spec.foundation.dataset:
            raise UserError(f"{where} [foundation]: give 'dataset' (pre-train here) or 'checkpoint'")
        names.append(spec.foundation.dataset)
    for name in names:
        get_dataset_class(name)
    get_algorithm_class(spec.target.algorithm)
    LAUNCHERS.get(spec.launcher)
    if spec.slurm:
        SlurmOptions.from_dict(dict(spec.slurm))
    for method in spec.selection:
        if method not in METHODS:
            raise UserError(f"{where}: unknown selection '{method}'; known: {', '.join(METHODS)}")
    for name in spec.target.datasets:
        if getattr(get_dataset_class(name), "SHUFFLED_BY_SEED", False):  # DomainBed's MNIST datasets
            raise UserError(f"{where} [target]: {name} deals its digits into domains by each run's seed (DomainBed's "
                            f"protocol), so runs of one cell see different domains and cannot be combined; the "
                            f"built-in {name.replace('MNIST', 'Digits')} has one fixed deal")
        n_envs = len(get_dataset_class(name).ENVIRONMENTS)
        bad = [e for e in (spec.target.test_envs or []) if not 0 <= e < n_envs]
        if bad:
            raise UserError(f"{where} [target]: test env {bad[0]} out of range for {name} ({n_envs} domains)")
    for section in (spec.auxiliary, spec.probe, spec.target):
        if section.hparams_profile is not None and section.hparams_profile not in PROFILES:
            raise UserError(f"{where}: unknown hparams_profile '{section.hparams_profile}'; "
                            f"known: {', '.join(PROFILES)}")

    # One override rule (hparams_registry.validate_overrides): the foundation, auxiliary and probe stages
    # train TrainConfig's default algorithm; target runs the [target] algorithm and those the strategies
    # impose. A [target] override only some other registered algorithm declares is unused, not an error
    # (e.g. ma_start_step once MovingAverage is no longer among the strategies).
    target_algorithms = [spec.target.algorithm] + [
        STRATEGIES.get(name).algorithm for name in spec.strategies if STRATEGIES.get(name).algorithm]
    pretrained = [spec.foundation.dataset] if spec.foundation.checkpoint is None else []
    notes: list[str] = []
    for title, section, algorithms, names, from_weights in (
        ("foundation", spec.foundation, [TrainConfig.algorithm], pretrained, False),
        ("auxiliary", spec.auxiliary, [TrainConfig.algorithm], spec.auxiliary_datasets(), True),
        ("probe", spec.probe, [TrainConfig.algorithm], spec.target.datasets + spec.auxiliary_datasets(), True),
        ("target", spec.target, target_algorithms, spec.target.datasets, True),
    ):
        for name in names if section.hparams else ():
            profile = _profile(section, name, from_weights)
            candidates = target_algorithms + list(ALGORITHMS) if title == "target" else algorithms
            try:
                validate_overrides(candidates, profile, section.hparams)
            except UserError as error:
                raise UserError(f"{where} [{title}] hparams: {error}") from None
            if title == "target":
                used = {n for algorithm in target_algorithms for n in declarations(algorithm, profile)}
                unused = [key for key in section.hparams if key not in used]
                note = (f"[target] hparams {', '.join(unused)}: no target run uses them (no strategy of this spec "
                        f"trains an algorithm that declares them)")
                if unused and note not in notes:
                    notes.append(note)
    for dataset in spec.auxiliary.datasets:
        if dataset not in spec.auxiliary_datasets():
            notes.append(f"[auxiliary] {dataset} skipped: it is the only target dataset, and a target is never "
                         f"its own auxiliary task (exclude_target)")
    if needs_aux and not spec.auxiliary_datasets():
        raise UserError(f"{where}: strategies {needs_aux} need [auxiliary] datasets other than the target")
    for title, section, names in (("auxiliary", spec.auxiliary, spec.auxiliary.datasets),
                                  ("probe", spec.probe, spec.target.datasets + spec.auxiliary.datasets),
                                  ("target", spec.target, spec.target.datasets)):
        for key in ("steps", "checkpoint_freq"):
            _check_per_dataset(f"{where} [{title}]", key, getattr(section, key), names)
    if spec.auxiliary.checkpoint not in ("last", "best"):
        raise UserError(f"{where} [auxiliary]: 'checkpoint' must be \"last\" or \"best\", "
                        f"got {spec.auxiliary.checkpoint!r}")
    if spec.foundation.checkpoint is not None and not spec.foundation.checkpoint.strip():
        raise UserError(f"{where} [foundation]: 'checkpoint' is empty")
    spec.notes = notes


def _profile(section: Any, name: str, from_weights: bool) -> str:
    """The hyper-parameter profile a stage's runs of dataset `name` get, decided as the run decides it
    (`TrainConfig.profile`); `from_weights`: the stage starts from the foundation's featurizer."""
    config = TrainConfig(dataset=name, output_dir="", hparams=dict(section.hparams),
                         hparams_profile=getattr(section, "hparams_profile", None),
                         init_featurizer="foundation" if from_weights else None)
    return config.profile(get_dataset_class(name))


def _check_per_dataset(where: str, key: str, value: Any, datasets: list[str]) -> None:
    """UserError unless a table `value` (its numbers are checked with the field's type) is keyed by
    `datasets` (with or without their options) or by other registered datasets (unused, e.g. once
    `--set` narrowed the datasets: a misspelt name is still refused)."""
    if not isinstance(value, dict):
        return
    known = set(datasets) | {d.partition("?")[0] for d in datasets} | set(load_all_datasets().names())
    unknown = sorted(set(value) - known)
    if unknown:
        raise UserError(f"{where}: '{key}' is a table of numbers per dataset, and names unknown dataset(s) "
                        f"{', '.join(unknown)}")
