"""The recycling pipeline's spec: a TOML file in `sweeps/`, validated with clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from domainbed_recycle import performance as switches
from domainbed_recycle.algorithms import get_algorithm_class
from domainbed_recycle.collect.selection import METHODS
from domainbed_recycle.datasets import load_all_datasets
from domainbed_recycle.errors import UserError
from domainbed_recycle.hparams_registry import PROFILES, validate_overrides
from domainbed_recycle.strategies import STRATEGIES
from domainbed_recycle.sweep.launchers import LAUNCHERS, SlurmOptions
from domainbed_recycle.sweep.spec import read_spec_file
from domainbed_recycle.training import TrainConfig


@dataclass
class FoundationSpec:
    """Stage 1. Either pre-train on `dataset` here, or read a local `checkpoint` (e.g. ImageNet ResNet-50)."""

    dataset: str | None = "FashionPretrain"
    checkpoint: str | None = None
    steps: int = 1500
    checkpoint_freq: int = 500
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuxiliarySpec:
    """Stage 2. Fine-tunings of the foundation on auxiliary tasks (all domains, no test domain).

    As in the reference, each auxiliary task is LP-FT: a linear probe of the foundation (with the
    [probe] table's recipe), then `n_runs` fine-tunings from it with hparams seeds 0..n_runs-1.
    """

    datasets: list[str] = field(default_factory=list)
    n_runs: int = 4  # fine-tunings per auxiliary task (the reference: 4)
    checkpoint: str = "last"  # which featurizer target runs start from: "last" (the reference) or "best"
    steps: int = 300
    checkpoint_freq: int = 100
    hparams_profile: str | None = None  # e.g. "small_finetune" (default: the dataset's)
    hparams: dict[str, Any] = field(default_factory=dict)
    exclude_target: bool = True  # a target dataset is never its own auxiliary task (the paper's rule)


@dataclass
class ProbeSpec:
    """Stage 3. Linear probe on the target's training domains (featurizer frozen)."""

    steps: int = 200
    checkpoint_freq: int = 100
    hparams_profile: str | None = None  # e.g. "small_finetune" (default: the dataset's)
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class TargetSpec:
    """Stage 4. Target runs: datasets, held-out domains, trials, runs per pool, objective."""

    datasets: list[str] = field(default_factory=list)
    test_envs: list[int] | None = None  # default: every domain, one at a time
    n_trials: int = 3
    n_runs: int = 4
    n_runs_small: int = 2
    steps: int | dict[str, int] | None = None  # a number, or a table {dataset: steps}; None: the dataset's
    checkpoint_freq: int | dict[str, int] | None = None  # likewise
    holdout_fraction: float = 0.2
    algorithm: str = "ERM"
    hparams_profile: str | None = None  # e.g. "small_finetune" (default: the dataset's)
    hparams: dict[str, Any] = field(default_factory=dict)
    fusing_range: float = 4.0  # kappa_i ~ exp(r U(0,1)); the reference README's value
    lp_steps: int = 200  # head-only warm-up of runs from a foreign featurizer (the reference's lp_steps)


@dataclass
class RecycleSpec:
    output_dir: str
    strategies: list[str]
    foundation: FoundationSpec
    auxiliary: AuxiliarySpec
    probe: ProbeSpec
    target: TargetSpec
    data_dir: str | None = None
    launcher: str = "pool"
    n_workers: int | None = None
    selection: list[str] = field(default_factory=lambda: ["iid"])
    pooled: bool = True  # add the † rows: strategies' variants pooled over trial seeds
    analysis: bool = True
    slurm: dict[str, Any] = field(default_factory=dict)
    performance: dict[str, Any] = field(default_factory=dict)  # speed switches of every training job
    source: str = "spec"


_SECTIONS = {"foundation": FoundationSpec, "auxiliary": AuxiliarySpec, "probe": ProbeSpec, "target": TargetSpec}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    hints = get_type_hints(cls)
    for key, value in values.items():
        if not _matches(value, hints[key]):
            raise UserError(f"{where}: '{key}' must be {_describe(hints[key])}, got {value!r}")
    return cls(**values)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a TOML value fits a field's type (lists are lists, numbers are numbers, tables tables)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any or (isinstance(hint, type) and is_dataclass(hint)):
        return True
    if origin in (Union, UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and _matches(v, args[1]) for k, v in value.items())
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if hint is type(None):
        return "absent"
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if origin is dict:
        return f"a table of {_plural(args[1])}" if args[1] is not Any else "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _plural(hint: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings"}.get(hint, _describe(hint))


def spec_from_dict(values: dict[str, Any], source: str = "spec") -> RecycleSpec:
    """Build and validate a RecycleSpec (names of datasets, algorithms, strategies, selections)."""
    values = dict(values)
    sections = {name: _build(cls, dict(values.pop(name, {})), f"{source} [{name}]")
                for name, cls in _SECTIONS.items()}
    if "output_dir" not in values or "strategies" not in values:
        raise UserError(f"{source}: 'output_dir' and 'strategies' are required")
    spec = _build(RecycleSpec, values | sections | {"source": source}, source)
    validate(spec)
    return spec


def load_recycle_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> RecycleSpec:
    """Read a TOML (or JSON) spec with the sweeps' reader; `overrides` replace top-level keys (CLI flags)."""
    values = read_spec_file(path, what="recycle spec")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return spec_from_dict(values, str(path))


def validate(spec: RecycleSpec) -> None:
    """Check every name the spec uses against the registries; raise one UserError listing the problem."""
    datasets = load_all_datasets()
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
        datasets.get(name)
    get_algorithm_class(spec.target.algorithm)
    LAUNCHERS.get(spec.launcher)
    if spec.slurm:
        SlurmOptions.from_dict(dict(spec.slurm))
    for method in spec.selection:
        if method not in METHODS:
            raise UserError(f"{where}: unknown selection '{method}'; known: {', '.join(METHODS)}")
    for name in spec.target.datasets:
        n_envs = len(datasets.get(name).ENVIRONMENTS)
        bad = [e for e in (spec.target.test_envs or []) if not 0 <= e < n_envs]
        if bad:
            raise UserError(f"{where} [target]: test env {bad[0]} out of range for {name} ({n_envs} domains)")
    for section in (spec.auxiliary, spec.probe, spec.target):
        if section.hparams_profile is not None and section.hparams_profile not in PROFILES:
            raise UserError(f"{where}: unknown hparams_profile '{section.hparams_profile}'; "
                            f"known: {', '.join(PROFILES)}")

    # One override rule (hparams_registry.validate_overrides): target runs use the [target] algorithm
    # and those the strategies impose; the other stages use TrainConfig's default algorithm.
    target_algorithms = [spec.target.algorithm] + [
        STRATEGIES.get(name).algorithm for name in spec.strategies if STRATEGIES.get(name).algorithm]
    pretrained = [spec.foundation.dataset] if spec.foundation.checkpoint is None else []
    for title, section, algorithms, names in (
        ("foundation", spec.foundation, [TrainConfig.algorithm], pretrained),
        ("auxiliary", spec.auxiliary, [TrainConfig.algorithm], spec.auxiliary.datasets),
        ("probe", spec.probe, [TrainConfig.algorithm], spec.target.datasets),
        ("target", spec.target, target_algorithms, spec.target.datasets),
    ):
        for name in names if section.hparams else ():
            profile = getattr(section, "hparams_profile", None) or datasets.get(name).HPARAMS_PROFILE
            try:
                validate_overrides(algorithms, profile, section.hparams)
            except UserError as error:
                raise UserError(f"{where} [{title}] hparams: {error}") from None
    if needs_aux and not spec.auxiliary.datasets:
        raise UserError(f"{where}: strategies {needs_aux} need [auxiliary] datasets")
    for key in ("n_trials", "n_runs", "n_runs_small"):
        if getattr(spec.target, key) < 1:
            raise UserError(f"{where} [target]: '{key}' must be >= 1")
    for key in ("steps", "checkpoint_freq"):
        value = getattr(spec.target, key)
        table = value if isinstance(value, dict) else {"": value}
        unknown = sorted(set(table) - set(spec.target.datasets) - {""})
        if unknown or not all(v is None or (isinstance(v, int) and v >= (0 if key == "steps" else 1))
                              for v in table.values()):
            raise UserError(f"{where} [target]: '{key}' must be a positive integer or a table of them per "
                            f"target dataset{f' (unknown: {unknown})' if unknown else ''}")
    if spec.auxiliary.n_runs < 1:
        raise UserError(f"{where} [auxiliary]: 'n_runs' must be >= 1")
    if spec.auxiliary.checkpoint not in ("last", "best"):
        raise UserError(f"{where} [auxiliary]: 'checkpoint' must be \"last\" or \"best\", "
                        f"got {spec.auxiliary.checkpoint!r}")
    if spec.target.lp_steps < 0 or spec.target.fusing_range < 0:
        raise UserError(f"{where} [target]: 'lp_steps' and 'fusing_range' must be >= 0")
