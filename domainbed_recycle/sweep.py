"""Sweeps: lists of training jobs with stable ids, their on-disk state, and sweep spec files.

A job is one `TrainConfig`, held as a dict of its arguments. Its id is `args_hash` of those
arguments (without `output_dir`, `progress` and `threads`, which do not change the result), and its
run folder is `<sweep_dir>/<id>`, as in DomainBed, so relaunching a sweep finds the jobs it already
ran. Arguments whose value is None are dropped before hashing (None is every optional field's
default), so a job's id does not depend on whether a caller spelled a default out.

`make_jobs` expands datasets x algorithms x test domains x hparams seeds x trial seeds the way
DomainBed's `make_args_list` does; `jobs_from_configs` wraps any list of argument dicts (the
recycling pipeline's jobs, with init checkpoints and strategy labels). Launching lives in
`domainbed_recycle.launchers`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from domainbed_recycle.errors import UserError
from domainbed_recycle.misc import args_hash, seed_hash

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None  # type: ignore[assignment]

# Arguments that say where or how a job runs, not what it computes: left out of its id.
UNHASHED_ARGS = ("output_dir", "progress", "threads")

DONE = "done"
INCOMPLETE = "incomplete"
NOT_LAUNCHED = "not_launched"
STATES = (DONE, INCOMPLETE, NOT_LAUNCHED)


def job_id_of(args: Mapping[str, Any]) -> str:
    """The stable id of a job's arguments: md5 of their JSON without `UNHASHED_ARGS` and None values."""
    return args_hash(_hashed_args(args))


def _hashed_args(args: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in args.items() if key not in UNHASHED_ARGS and value is not None}


class Job:
    """One training run of a sweep.

    Attributes:
        job_id: hash of the arguments (see `job_id_of`); also the run folder's name.
        output_dir: `<sweep_dir>/<job_id>`.
        args: keyword arguments of `TrainConfig`, `output_dir` included (None values dropped).
    """

    __slots__ = ("args", "job_id", "output_dir")

    def __init__(self, args: Mapping[str, Any], sweep_dir: str | Path) -> None:
        clean = _hashed_args(args)
        self.job_id = args_hash(clean)
        self.output_dir = Path(sweep_dir) / self.job_id
        self.args: dict[str, Any] = clean | {"output_dir": str(self.output_dir)}

    @property
    def state(self) -> str:
        return job_state(self)

    def describe(self) -> str:
        """One line: dataset, algorithm, test envs, seeds (and init label when there is one)."""
        a = self.args
        text = (f"{a.get('dataset')} {a.get('algorithm', 'ERM')} test_envs={a.get('test_envs', [0])} "
                f"hparams_seed={a.get('hparams_seed', 0)} trial_seed={a.get('trial_seed', 0)}")
        if a.get("init_label"):
            text += f" init={a['init_label']}"
        return text

    def __repr__(self) -> str:
        return f"Job({self.job_id}: {self.describe()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and (self.job_id, self.output_dir) == (other.job_id, other.output_dir)

    def __hash__(self) -> int:
        return hash((self.job_id, self.output_dir))


def test_env_combinations(n_envs: int, single_test_envs: bool = False,
                          candidates: Sequence[int] | None = None) -> list[list[int]]:
    """Test-domain sets as DomainBed's sweep makes them: [i] for every domain and, unless
    `single_test_envs`, [i, j] for every pair (i < j), in the order [0], [0, 1], [0, 2], ..., [1], ...

    `candidates` restricts the domains that may be held out (default: all `n_envs`).
    """
    envs = sorted(set(range(n_envs) if candidates is None else candidates))
    combos: list[list[int]] = []
    for position, i in enumerate(envs):
        combos.append([i])
        if not single_test_envs:
            combos.extend([i, j] for j in envs[position + 1:])
    return combos


def dataset_environments(name: str) -> list[str]:
    """Domain names of dataset `name`, read from its class (no data is loaded)."""
    from domainbed_recycle.datasets import get_dataset_class

    return list(get_dataset_class(name).ENVIRONMENTS)


def make_jobs(
    datasets: Sequence[str],
    algorithms: Sequence[str],
    test_envs_list: Sequence[Sequence[int]] | None = None,
    n_hparams: int = 1,
    n_trials: int = 1,
    steps: int | None = None,
    data_dir: str | None = None,
    output_dir: str | Path = "sweep_output",
    hparams_from: int = 0,
    extra: Mapping[str, Any] | None = None,
    *,
    single_test_envs: bool = False,
    checkpoint_freq: int | None = None,
    hparams: Mapping[str, Any] | None = None,
) -> list[Job]:
    """The jobs of a DomainBed-style sweep (DomainBed's `make_args_list`, same loop order).

    Args:
        test_envs_list: explicit test-domain sets (e.g. [[0], [1, 2]]); None: every single domain
            and, unless `single_test_envs`, every pair of domains of each dataset.
        n_hparams, hparams_from: hparams seeds `hparams_from .. hparams_from + n_hparams - 1`
            (seed 0 is the registry's default hyper-parameters, as in DomainBed).
        n_trials: trial seeds 0 .. n_trials - 1 (each seeds the in/out split of every domain).
        extra: more `TrainConfig` arguments given to every job (e.g. holdout_fraction, init).
        hparams: hyper-parameter overrides given to every job.
    Each job's `seed` is `seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed)`.
    Raises UserError for a test domain that a dataset does not have.
    """
    if n_hparams < 1 or n_trials < 1 or hparams_from < 0:
        raise UserError(f"need n_hparams >= 1, n_trials >= 1, hparams_from >= 0 "
                        f"(got {n_hparams}, {n_trials}, {hparams_from})")
    envs_of = {dataset: dataset_environments(dataset) for dataset in datasets}
    if test_envs_list is not None:
        for dataset, envs in envs_of.items():
            bad = sorted({e for combo in test_envs_list for e in combo if not 0 <= e < len(envs)})
            if bad:
                raise UserError(f"test env {bad[0]} out of range: {dataset} has {len(envs)} domains "
                                f"(0..{len(envs) - 1}: {', '.join(envs)})")
    common = dict(extra or {})
    jobs = []
    for trial_seed in range(n_trials):
        for dataset in datasets:
            for algorithm in algorithms:
                combos = ([list(c) for c in test_envs_list] if test_envs_list is not None
                          else test_env_combinations(len(envs_of[dataset]), single_test_envs))
                for test_envs in combos:
                    for hparams_seed in range(hparams_from, hparams_from + n_hparams):
                        args = common | {
                            "dataset": dataset,
                            "algorithm": algorithm,
                            "test_envs": test_envs,
                            "hparams": dict(hparams or {}),
                            "hparams_seed": hparams_seed,
                            "trial_seed": trial_seed,
                            "seed": seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed),
                            "steps": steps,
                            "checkpoint_freq": checkpoint_freq,
                            "data_dir": data_dir,
                        }
                        jobs.append(Job(args, output_dir))
    return jobs


def train_config_fields() -> set[str]:
    """Names of `TrainConfig`'s fields (the keys a job's arguments may use)."""
    from domainbed_recycle.training import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def jobs_from_configs(configs: Iterable[Mapping[str, Any]], output_dir: str | Path) -> list[Job]:
    """Jobs for arbitrary `TrainConfig` argument dicts (any extra keys such as init_featurizer,
    init_classifier, linear_probe, strategy, init_label), each in `<output_dir>/<its hash>`.

    An `output_dir` key inside a config is ignored (the folder is always named by the hash).
    Duplicate configs give one job. Raises UserError for keys that `TrainConfig` does not have.
    """
    known = train_config_fields()
    jobs: dict[str, Job] = {}
    for index, config in enumerate(configs):
        unknown = sorted(set(config) - known)
        if unknown:
            raise UserError(f"job config {index}: unknown key(s) {', '.join(unknown)}; "
                            f"TrainConfig accepts: {', '.join(sorted(known))}")
        if "dataset" not in config:
            raise UserError(f"job config {index}: missing 'dataset'")
        job = Job(config, output_dir)
        jobs.setdefault(job.job_id, job)
    return list(jobs.values())


# ----------------------------------------------------------------------------------------- state


def job_state(job: Job) -> str:
    """'done' (the run folder holds `done`), 'incomplete' (folder without `done`: killed, failed or
    running) or 'not_launched' (no folder)."""
    if (job.output_dir / "done").exists():
        return DONE
    if job.output_dir.exists():
        return INCOMPLETE
    return NOT_LAUNCHED


def status(jobs: Iterable[Job]) -> dict[tuple[str, str], Counter[str]]:
    """Counts of each state per (dataset, algorithm), in first-seen order."""
    counts: dict[tuple[str, str], Counter[str]] = {}
    for job in jobs:
        key = (str(job.args.get("dataset")), str(job.args.get("algorithm", "ERM")))
        counts.setdefault(key, Counter())[job_state(job)] += 1
    return counts


def format_status(counts: Mapping[tuple[str, str], Counter[str]]) -> str:
    """A text table of `status(...)`: one row per dataset and algorithm, and a total row."""
    from tabulate import tabulate

    rows = [[dataset, algorithm, *(c[s] for s in STATES), sum(c.values())]
            for (dataset, algorithm), c in counts.items()]
    total = sum(counts.values(), Counter())
    rows.append(["total", "", *(total[s] for s in STATES), sum(total.values())])
    return tabulate(rows, headers=["dataset", "algorithm", "done", "incomplete", "not launched", "jobs"])


def delete_incomplete(jobs: Iterable[Job]) -> list[Job]:
    """Remove the run folder of every incomplete job (so it starts afresh); returns those jobs."""
    deleted = []
    for job in jobs:
        if job_state(job) == INCOMPLETE:
            shutil.rmtree(job.output_dir)
            deleted.append(job)
    return deleted


# ------------------------------------------------------------------------------------- spec files


@dataclasses.dataclass
class SweepSpec:
    """What a sweep spec file (TOML, in `sweeps/`) or the equivalent CLI flags describe.

    `test_envs`: None (every domain, and pairs unless `single_test_envs`), a list of domain indices
    (the domains that may be held out, combined the same way) or a list of lists (explicit sets).
    `slurm`: keys of `launchers.SlurmOptions` (partition, time_min, mem_gb, cpus_per_task,
    gpus_per_node, array_parallelism).
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
        return make_jobs(
            self.datasets, self.algorithms, self.test_envs_list(), self.n_hparams, self.n_trials,
            self.steps, self.data_dir, self.output_dir, self.n_hparams_from, extra,
            single_test_envs=self.single_test_envs, checkpoint_freq=self.checkpoint_freq,
            hparams=self.hparams,
        )


SPEC_KEYS = tuple(f.name for f in dataclasses.fields(SweepSpec))
SLURM_KEYS = ("partition", "time_min", "mem_gb", "cpus_per_task", "gpus_per_node", "array_parallelism")


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The raw key/value table of a TOML (or JSON) spec file; UserError if missing or unparsable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot read sweep spec {path}: {error.strerror or error}") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{path} is not valid JSON: {error}") from None
    if tomllib is None:
        raise UserError(f"{path}: reading TOML needs Python 3.11+ (tomllib); use a .json spec instead")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path} is not valid TOML: {error}") from None


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


def _check_names(spec: SweepSpec, source: str) -> None:
    from domainbed_recycle.algorithms import ALGORITHMS, get_algorithm_class
    from domainbed_recycle.datasets import FOLDER_PREFIX, load_all_datasets
    from domainbed_recycle.launchers import LAUNCHERS

    try:  # imports the modules named in $DRECYCLE_PLUGINS, which register user algorithms
        get_algorithm_class(spec.algorithms[0])
    except UserError as error:
        if "DRECYCLE_PLUGINS" in str(error):
            raise
    datasets = load_all_datasets()
    bad_datasets = [d for d in spec.datasets if d not in datasets and not d.startswith(FOLDER_PREFIX)]
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
        if key == "slurm":
            values["slurm"] = dict(values.get("slurm") or {}) | dict(value)
        else:
            values[key] = value
    return spec_from_dict(values, source=str(path))
