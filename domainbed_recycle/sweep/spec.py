"""Sweep specs: `SweepSpec` (what `drecycle sweep` runs), its validation, and the one reader of
TOML/JSON spec files (`read_spec_file`), which the recycle spec uses too.

Imports no torch: reading and validating a spec loads only the registries.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib

from domainbed_recycle import performance as switches
from domainbed_recycle.algorithms import ALGORITHMS, get_algorithm_class
from domainbed_recycle.datasets import get_dataset_class, load_all_datasets
from domainbed_recycle.errors import UserError
from domainbed_recycle.sweep.jobs import Job, make_jobs, test_env_combinations
from domainbed_recycle.sweep.launchers import LAUNCHERS


@dataclasses.dataclass
class SweepSpec:
    """What a sweep spec file (TOML, in `sweeps/`) or the equivalent CLI flags describe.

    `test_envs`: None (every domain, and pairs unless `single_test_envs`), a list of domain indices
    (the domains that may be held out, combined the same way) or a list of lists (explicit sets).
    `slurm`: keys of `sweep.launchers.SlurmOptions` (partition, time_min, mem_gb, cpus_per_task,
    gpus_per_node, array_parallelism, runs_per_task).
    `performance`: speed switches given to every job (`performance`: precision, channels_last, ...).
    """

    datasets: list[str]
    algorithms: list[str] = dataclasses.field(default_factory=lambda: ["ERM"])
    test_envs: list[int] | list[list[int]] | None = None
    single_test_envs: bool = False
    n_hparams: int = 1
    n_hparams_from: int = 0
    n_trials: int = 1
    steps: int | None = None
    checkpoint_freq: int | None = None
    holdout_fraction: float | None = None
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_dir: str | None = None
    output_dir: str | None = None
    launcher: str = "pool"
    n_workers: int | None = None
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
        extra = {"holdout_fraction": self.holdout_fraction} if self.holdout_fraction is not None else {}
        extra |= self.performance
        return make_jobs(
            self.datasets, self.algorithms, self.test_envs_list(), self.n_hparams, self.n_trials,
            self.steps, self.data_dir, self.output_dir, self.n_hparams_from, extra,
            single_test_envs=self.single_test_envs, checkpoint_freq=self.checkpoint_freq,
            hparams=self.hparams,
        )


SPEC_KEYS = tuple(f.name for f in dataclasses.fields(SweepSpec))
SLURM_KEYS = ("partition", "time_min", "mem_gb", "cpus_per_task", "gpus_per_node", "array_parallelism",
              "runs_per_task")


def read_spec_file(path: str | Path, what: str = "sweep spec") -> dict[str, Any]:
    """The raw key/value table of a TOML (or, for a `.json` name, JSON) spec file.

    `what` names the file in errors. Raises UserError if it is missing, unreadable, unparsable or
    not a table at its top level.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
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


def spec_from_dict(values: Mapping[str, Any], source: str = "sweep spec") -> SweepSpec:
    """Validate `values` (spec file keys, possibly overridden by flags) into a SweepSpec.

    Raises UserError naming unknown keys, unknown datasets or algorithms, and values of a wrong type.
    """
    unknown = sorted(set(values) - set(SPEC_KEYS))
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(SPEC_KEYS)}")
    slurm = values.get("slurm") or {}
    if not isinstance(slurm, Mapping):
        raise UserError(f"{source}: 'slurm' must be a table of {', '.join(SLURM_KEYS)}")
    bad_slurm = sorted(set(slurm) - set(SLURM_KEYS))
    if bad_slurm:
        raise UserError(f"{source}: unknown slurm key(s) {', '.join(bad_slurm)}; "
                        f"known: {', '.join(SLURM_KEYS)}")
    switches.check(values.get("performance") or {}, f"{source} [performance]")
    if not values.get("datasets"):
        raise UserError(f"{source}: no datasets (set 'datasets' or pass --datasets)")
    spec = SweepSpec(**{key: value for key, value in values.items() if value is not None})
    _check_types(spec, source)
    _check_names(spec, source)
    return spec


def _check_types(spec: SweepSpec, source: str) -> None:
    def is_str_list(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    problems = []
    for key in ("datasets", "algorithms"):
        if not is_str_list(getattr(spec, key)) or not getattr(spec, key):
            problems.append(f"{key} must be a non-empty list of names")
    for key in ("n_hparams", "n_trials"):
        if not isinstance(getattr(spec, key), int) or getattr(spec, key) < 1:
            problems.append(f"{key} must be an integer >= 1")
    for key in ("n_hparams_from",):
        if not isinstance(getattr(spec, key), int) or getattr(spec, key) < 0:
            problems.append(f"{key} must be an integer >= 0")
    for key in ("steps", "checkpoint_freq", "n_workers"):
        value = getattr(spec, key)
        if value is not None and (not isinstance(value, int) or value < (0 if key == "steps" else 1)):
            problems.append(f"{key} must be a positive integer")
    if not isinstance(spec.hparams, dict):
        problems.append("hparams must be a table (JSON object) of overrides")
    if not isinstance(spec.single_test_envs, bool):
        problems.append("single_test_envs must be true or false")
    envs = spec.test_envs
    if envs is not None and not (
        isinstance(envs, list) and envs and (
            all(isinstance(e, int) for e in envs)
            or all(isinstance(c, list) and c and all(isinstance(e, int) for e in c) for c in envs))
    ):
        problems.append("test_envs must be a list of domain indices or a list of lists of them")
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))


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
    if spec.launcher not in LAUNCHERS:
        problems.append(f"unknown launcher '{spec.launcher}' (known: {', '.join(LAUNCHERS.names())})")
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Read and validate a spec file; `overrides` (non-None values) win over the file's keys."""
    values = read_spec_file(path)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in ("slurm", "performance"):  # tables: a flag overrides one key of the file's table
            values[key] = dict(values.get(key) or {}) | dict(value)
        else:
            values[key] = value
    return spec_from_dict(values, source=str(path))
