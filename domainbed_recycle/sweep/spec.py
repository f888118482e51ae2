"""Sweep specs: `SweepSpec` (what `drecycle sweep` runs), its validation, and the one reader of
TOML/JSON spec files (`read_spec_file`), which the recycle spec uses too.

Imports no torch: reading and validating a spec loads only the registries.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import tomllib

from domainbed_recycle import performance as switches
from domainbed_recycle.algorithms import ALGORITHMS, get_algorithm_class
from domainbed_recycle.datasets import get_dataset_class, load_all_datasets
from domainbed_recycle.errors import UserError
from domainbed_recycle.files import read_text
from domainbed_recycle.sweep.jobs import Job, make_jobs, test_env_combinations
from domainbed_recycle.sweep.launchers import LAUNCHERS, SlurmOptions
from domainbed_recycle.training import TASKS
from domainbed_recycle.validation import (
    Bounds,
    Count,
    Domains,
    Fraction,
    Names,
    NonEmpty,
    Steps,
    Text,
    Unique,
    Workers,
    build,
    is_text,
)

# DomainBed's sweep defaults: its datasets (its DATASETS without the Debug ones; those this project has:
# not SVIRO, the WILDS and Spawrious ones), every algorithm, 20 hparams seeds, 3 trial seeds.
DOMAINBED_SWEEP_DATASETS = ("ColoredMNIST", "RotatedMNIST", "VLCS", "PACS", "OfficeHome", "TerraIncognita",
                            "DomainNet")
# Launchers that run nothing: DomainBed's `dummy` prints each job's command line.
PRINT_ONLY_LAUNCHERS = ("dummy",)


@dataclasses.dataclass
class SweepSpec:
    """What a sweep spec file (TOML, in `sweeps/`) or the equivalent CLI flags describe; each field's
    type and range is checked by `validation.build` (the validator of recycle specs and runs too).

    Defaults and meanings are DomainBed's sweep's: all its datasets, every algorithm, hparams seeds
    `range(n_hparams_from, n_hparams)` = 0..19, 3 trial seeds, every single and pair of test domains.

    `test_envs`: None (every domain, and pairs unless `single_test_envs`), a list of domain indices
    (the domains that may be held out, combined the same way) or a list of lists (explicit sets).
    `slurm`: keys of `sweep.launchers.SlurmOptions` (partition, time_min, mem_gb, account, qos, gres,
    setup lines, runs_per_task, ...), the same keys as a recycle spec's `[slurm]` table.
    `performance`: speed switches given to every job (`performance`: precision, channels_last, ...).
    """

    datasets: Names = dataclasses.field(default_factory=lambda: list(DOMAINBED_SWEEP_DATASETS))
    algorithms: Names = dataclasses.field(default_factory=lambda: list(ALGORITHMS.names()))
    test_envs: Domains | Annotated[list[Domains], NonEmpty(), Unique()] | None = None
    single_test_envs: bool = False
    n_hparams: Count = 20  # the end of the hparams seeds' range (DomainBed's meaning), not a count
    n_hparams_from: Annotated[int, Bounds(0, 2**31 - 1)] = 0
    n_trials: Count = 3
    task: str = "domain_generalization"
    steps: Steps | None = None
    checkpoint_freq: Steps | None = None
    holdout_fraction: Fraction | None = None
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_dir: Text | None = None
    output_dir: Text | None = None
    launcher: str = "pool"
    n_workers: Workers | None = None
    slurm: dict[str, Any] = dataclasses.field(default_factory=dict)
    performance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def test_envs_list(self) -> list[list[int]] | None:
        """Explicit test-domain sets for `make_jobs` (None: every domain of each dataset)."""
        if self.test_envs is None:
            return None
        if all(isinstance(e, int) for e in self.test_envs):
            return test_env_combinations(0, self.single_test_envs, candidates=self.test_envs)  # type: ignore[arg-type]
        return [list(combo) for combo in self.test_envs]  # type: ignore[arg-type]

    def jobs(self) -> list[Job]:
        """The spec's jobs (its `output_dir` must be set)."""
        if not self.output_dir:
            raise UserError("no output folder: pass --output_dir or set output_dir in the spec file")
        extra: dict[str, Any] = {"holdout_fraction": self.holdout_fraction} if self.holdout_fraction is not None else {}
        if self.task != "domain_generalization":  # the default stays out of the job ids (as before it existed)
            extra["task"] = self.task
        extra |= self.performance
        return make_jobs(
            self.datasets, self.algorithms, self.test_envs_list(), self.n_hparams, self.n_trials,
            self.steps, self.data_dir, self.output_dir, self.n_hparams_from, extra,
            single_test_envs=self.single_test_envs, checkpoint_freq=self.checkpoint_freq,
            hparams=self.hparams,
        )


SPEC_KEYS = tuple(f.name for f in dataclasses.fields(SweepSpec))
SLURM_KEYS = tuple(f.name for f in dataclasses.fields(SlurmOptions))


def read_spec_file(path: str | Path, what: str = "sweep spec") -> dict[str, Any]:
    """The raw key/value table of a TOML (or, for a `.json` name, JSON) spec file.

    `what` names the file in errors. Raises UserError if it is missing, unreadable, unparsable or
    not a table at its top level (a FIFO, a device or a file that is not UTF-8 included).
    """
    path = Path(path)
    try:
        text = read_text(path, what, limit=1 << 24)  # a FIFO, a device or a non-UTF-8 file: one line
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if path.suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{path} is not valid JSON: {error}") from None
    else:
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise UserError(f"{path} is not valid TOML: {error}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a {what} must be a table of keys (a JSON object), got {type(values).__name__}")
    return values


def parse_setting_value(text: str) -> Any:
    """A `--set` value: a TOML value when it parses as one (3, 1e-3, true, ["PACS", "VLCS"],
    {lr = 1e-4}), else the text itself (pool, /data/resnet50.pth, torchvision:ResNet50_Weights.IMAGENET1K_V1)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_settings(values: dict[str, Any], settings: list[str], source: str = "spec") -> dict[str, Any]:
    """`values` with each "key.path=value" of `settings` (`--set`) applied, tables created as needed;
    UserError (one line) for a setting without "=" or one that goes through a value that is no table."""
    values = dict(values)
    for setting in settings:
        path, equal, text = setting.partition("=")
        keys = [key.strip() for key in path.split(".")]
        if not equal or not all(keys):
            raise UserError(f"--set {setting!r}: expected KEY=VALUE, e.g. target.steps=3 or "
                            f"'target.datasets=[\"PACS\"]'")
        table = values
        for depth, key in enumerate(keys[:-1]):
            inner = table.get(key)
            if inner is None:
                inner = {}
            elif not isinstance(inner, dict):
                raise UserError(f"--set {setting!r}: {'.'.join(keys[:depth + 1])} in {source} is a value, not a table")
            table[key] = inner = dict(inner)
            table = inner
        table[keys[-1]] = parse_setting_value(text)
    return values


def spec_from_dict(values: Mapping[str, Any], source: str = "sweep spec") -> SweepSpec:
    """Validate `values` (spec file keys, possibly overridden by flags) into a SweepSpec.

    Raises UserError naming unknown keys, unknown datasets or algorithms, and values of a wrong type.
    """
    values = {key: value for key, value in values.items() if value is not None}  # None: not given
    slurm = values.get("slurm") or {}
    if not isinstance(slurm, Mapping):
        raise UserError(f"{source}: 'slurm' must be a table of {', '.join(SLURM_KEYS)}")
    try:
        SlurmOptions.from_dict(dict(slurm))
    except UserError as error:
        raise UserError(f"{source}: [slurm] {error}") from None
    switches.check(values.get("performance") or {}, f"{source} [performance]")
    spec = build(SweepSpec, values, source)
    if spec.n_hparams_from >= spec.n_hparams:
        raise UserError(f"{source}: no hparams seeds: they are range(n_hparams_from, n_hparams) = "
                        f"range({spec.n_hparams_from}, {spec.n_hparams}), as in DomainBed (n_hparams is the end of "
                        "the range, not a count)")
    if spec.task not in TASKS:
        raise UserError(f"{source}: task must be one of {', '.join(TASKS)}, got {spec.task!r}")
    _check_names(spec, source)
    return spec


def _is_dataset(name: str) -> bool:
    """A registered dataset, a `folder:PATH` one, or either with options (`PACS?resolution=64`)."""
    try:
        get_dataset_class(name)
    except UserError:
        return False
    return True


def _check_names(spec: SweepSpec, source: str) -> None:
    try:  # imports the modules named in $DRECYCLE_PLUGINS, which register user algorithms
        get_algorithm_class(spec.algorithms[0])
    except UserError as error:
        if "DRECYCLE_PLUGINS" in str(error):
            raise
    datasets = load_all_datasets()
    bad_datasets = [d for d in spec.datasets if not _is_dataset(d)]
    bad_algorithms = [a for a in spec.algorithms if a not in ALGORITHMS]
    problems = []
    if bad_datasets:
        problems.append(f"unknown dataset(s) {', '.join(bad_datasets)} "
                        f"(known: {', '.join(datasets.names())})")
    if bad_algorithms:
        problems.append(f"unknown algorithm(s) {', '.join(bad_algorithms)} "
                        f"(known: {', '.join(ALGORITHMS.names())})")
    if spec.launcher not in LAUNCHERS and spec.launcher not in PRINT_ONLY_LAUNCHERS:
        known = [*LAUNCHERS.names(), *PRINT_ONLY_LAUNCHERS]
        problems.append(f"unknown launcher '{spec.launcher}' (known: {', '.join(known)})")
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None,
              settings: list[str] | None = None) -> SweepSpec:
    """Read and validate a spec file; `settings` ("key.path=value", `--set`) change its keys, then
    `overrides` (flags: non-None values) win. Its `output_dir` and `data_dir` are read against the spec
    file's folder; those given by `--set` or flags against the current folder."""
    values = read_spec_file(path)
    base = Path(path).resolve().parent
    for key in ("output_dir", "data_dir"):
        if isinstance(values.get(key), str) and values[key] and is_text(values[key]):  # else: refused below
            values[key] = str((base / Path(values[key]).expanduser()).resolve())
    values = apply_settings(values, settings or [], str(path))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in ("slurm", "performance"):  # tables: a flag overrides one key of the file's table
            values[key] = dict(values.get(key) or {}) | dict(value)
        else:
            values[key] = value
    return spec_from_dict(values, source=str(path))
