"""Sweep jobs: lists of training jobs with stable ids, and their on-disk state (through `RunDir`).

A job is one `TrainConfig`, held as a dict of its arguments. Its id is `args_hash` of those
arguments (without `output_dir`, `progress`, `threads` and the loader switches, which do not change
the result), and its run folder is `<sweep_dir>/<id>`, as in DomainBed, so relaunching a sweep finds
the jobs it already ran. Arguments whose value is None, and speed switches at their default
(`performance`), are dropped before hashing, so a job's id does not depend on whether a caller spelled
a default out, and jobs made before the switches existed keep their ids.

`make_jobs` expands datasets x algorithms x test domains x hparams seeds x trial seeds the way
DomainBed's `make_args_list` does (hparams seeds `range(n_hparams_from, n_hparams)`, each job's seed
`seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed)`, with DomainBed's own hash for its
datasets so that a job trains with the seed DomainBed's sweep gives it); `jobs_from_configs` wraps any
list of argument dicts (the recycling pipeline's jobs, with init checkpoints and strategy labels). Launching lives in
`sweep.launchers`, spec files in `sweep.spec`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from domainbed_recycle import rundir
from domainbed_recycle.datasets import get_dataset_class
from domainbed_recycle.errors import UserError
from domainbed_recycle.hparams_registry import validate_overrides
from domainbed_recycle.locks import Lock, describe, is_alive
from domainbed_recycle.misc import args_hash, domainbed_seed_hash, seed_hash
from domainbed_recycle.performance import is_default
from domainbed_recycle.rundir import RunDir
from domainbed_recycle.training import TrainConfig, resolved_hparams
from domainbed_recycle.validation import check_limit

# Arguments that say where or how a job runs, not what it computes: left out of its id.
UNHASHED_ARGS = rundir.PLACEMENT_ARGS
# Job arguments that `drecycle train` has no flag for (its command line leaves them out).
NO_TRAIN_FLAG = ("init_label", "progress")
# The argument that makes a job a task: "module:function" run instead of training (see `run_job`). Not
# "task", which is DomainBed's train.py argument (domain_generalization or domain_adaptation).
TASK_KEY = "package_task"

DONE = rundir.STATE_DONE
DIVERGED = rundir.STATE_DIVERGED
INCOMPLETE = rundir.INCOMPLETE
NOT_LAUNCHED = rundir.NOT_LAUNCHED
STATES = rundir.STATES


def job_id_of(args: Mapping[str, Any]) -> str:
    """The stable id of a job's arguments: md5 of their JSON without `UNHASHED_ARGS`, None values and
    speed switches at their default (`performance.is_default`)."""
    return args_hash(_hashed_args(args))


def _hashed_args(args: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in _kept_args(args).items() if key not in UNHASHED_ARGS}


def _kept_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments a job passes on: without None values, switches at their default, and the placement
    arguments the launchers set themselves (`output_dir`, `progress`, `threads`); loader switches stay."""
    return {key: value for key, value in args.items()
            if value is not None and not is_default(key, value) and key not in ("output_dir", "progress", "threads")}


class Job:
    """One training run of a sweep (or one task: arguments naming a `task` function, see `run_job`).

    Attributes:
        job_id: hash of the arguments (see `job_id_of`); also the run folder's name.
        run: the run folder, `<sweep_dir>/<job_id>` (`output_dir` is its path).
        args: keyword arguments of `TrainConfig`, `output_dir` included (None values and switches at
            their default dropped; loader switches kept but not hashed).
    """

    __slots__ = ("args", "job_id", "run")

    def __init__(self, args: Mapping[str, Any], sweep_dir: str | Path) -> None:
        self.job_id = job_id_of(args)
        self.run = RunDir(Path(sweep_dir) / self.job_id)
        self.args: dict[str, Any] = _kept_args(args) | {"output_dir": str(self.output_dir)}

    @property
    def output_dir(self) -> Path:
        return self.run.path

    def describe(self) -> str:
        """One line: dataset, algorithm, test envs, seeds (and init label when there is one); for a task
        job (see `run_job`), the task's function and its `label`."""
        a = self.args
        if a.get(TASK_KEY):
            return f"{str(a[TASK_KEY]).rpartition(':')[2]} {a.get('label', '')}".rstrip()
        text = (f"{a.get('dataset')} {a.get('algorithm', 'ERM')} test_envs={a.get('test_envs', [0])} "
                f"hparams_seed={a.get('hparams_seed', 0)} trial_seed={a.get('trial_seed', 0)}")
        if a.get("init_label"):
            text += f" init={a['init_label']}"
        return text

    def command(self) -> str:
        """The `drecycle train` command line that trains this job (DomainBed's dummy launcher prints
        them); a task job's is its function. Arguments without a train flag (`init_label`) are left out."""
        if self.args.get(TASK_KEY):
            return f"(task {self.args[TASK_KEY]} {self.args.get('label', '')})".rstrip()
        parts = ["drecycle", "train"]
        for key, value in sorted(self.args.items()):
            if key in NO_TRAIN_FLAG or value is None or value is False:
                continue
            if value is True:
                parts.append(f"--{key}")
            elif isinstance(value, list):
                parts += [f"--{key}", *(str(v) for v in value)]
            elif isinstance(value, dict):
                if value:
                    parts += [f"--{key}", shlex.quote(json.dumps(value, sort_keys=True))]
            else:
                parts += [f"--{key}", shlex.quote(str(value))]
        return " ".join(parts)

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


def _n_combinations(n_envs: int, single_test_envs: bool) -> int:
    """How many test-domain sets `test_env_combinations(n_envs, single_test_envs)` makes."""
    return n_envs if single_test_envs else n_envs + n_envs * (n_envs - 1) // 2


def dataset_environments(name: str) -> list[str]:
    """Domain names of dataset `name`, read from its class (no data is loaded)."""
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
    n_hparams_from: int = 0,
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
        n_hparams_from, n_hparams: hparams seeds `range(n_hparams_from, n_hparams)`, DomainBed's meaning
            (`n_hparams` is the end of the range, not a count; seed 0 is the registry's defaults).
        n_trials: trial seeds 0 .. n_trials - 1 (each seeds the in/out split of every domain).
        extra: more `TrainConfig` arguments given to every job (e.g. holdout_fraction, init).
        hparams: hyper-parameter overrides, each given to the jobs whose algorithm declares it
            (`hparams_registry.validate_overrides`: one no algorithm declares is a UserError).
    Each job's `seed` is `seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed)`, DomainBed's
    hash for datasets of its protocol (`DOMAINBED_PROTOCOL`), this project's for the built-ins.
    Raises UserError for a test domain that a dataset does not have, or an empty range of seeds.
    """
    if n_trials < 1 or n_hparams_from < 0 or n_hparams <= n_hparams_from:
        raise UserError(f"no jobs: hparams seeds are range(n_hparams_from, n_hparams) = range({n_hparams_from}, "
                        f"{n_hparams}) and trial seeds range({n_trials}); need 0 <= n_hparams_from < n_hparams "
                        f"and n_trials >= 1")
    envs_of = {dataset: dataset_environments(dataset) for dataset in datasets}
    n_seeds = n_hparams - n_hparams_from
    n_jobs = len(algorithms) * n_seeds * n_trials * sum(
        len(test_envs_list) if test_envs_list is not None else _n_combinations(len(envs), single_test_envs)
        for envs in envs_of.values())
    check_limit("jobs", n_jobs, f"the sweep's jobs ({len(datasets)} dataset(s) x {len(algorithms)} algorithm(s) x "
                                f"test domains x {n_seeds} hparams seed(s) x {n_trials} trial(s))")
    if test_envs_list is not None:
        for dataset, envs in envs_of.items():
            bad = sorted({e for combo in test_envs_list for e in combo if not 0 <= e < len(envs)})
            if bad:
                raise UserError(f"test env {bad[0]} out of range: {dataset} has {len(envs)} domains "
                                f"(0..{len(envs) - 1}: {', '.join(envs)})")
    common = dict(extra or {})
    profile_of = {dataset: common.get("hparams_profile") or get_dataset_class(dataset).HPARAMS_PROFILE
                  for dataset in datasets}
    overrides = {dataset: validate_overrides(algorithms, profile_of[dataset], hparams or {}) for dataset in datasets}
    hash_of = {dataset: domainbed_seed_hash if get_dataset_class(dataset).DOMAINBED_PROTOCOL else seed_hash
               for dataset in datasets}
    jobs = []
    checked: set[str] = set()
    for trial_seed in range(n_trials):
        for dataset in datasets:
            for algorithm in algorithms:
                combos = ([list(c) for c in test_envs_list] if test_envs_list is not None
                          else test_env_combinations(len(envs_of[dataset]), single_test_envs))
                for test_envs in combos:
                    for hparams_seed in range(n_hparams_from, n_hparams):
                        args = common | {
                            "dataset": dataset,
                            "algorithm": algorithm,
                            "test_envs": test_envs,
                            "hparams": dict(overrides[dataset][algorithm]),
                            "hparams_seed": hparams_seed,
                            "trial_seed": trial_seed,
                            "seed": hash_of[dataset](dataset, algorithm, test_envs, hparams_seed, trial_seed),
                            "steps": steps,
                            "checkpoint_freq": checkpoint_freq,
                            "data_dir": data_dir,
                        }
                        jobs.append(Job(args, output_dir))
                        check_values(jobs[-1], checked)
    return jobs


def train_config_fields() -> set[str]:
    """Names of `TrainConfig`'s fields (the keys a job's arguments may use)."""
    return {f.name for f in dataclasses.fields(TrainConfig)}


def jobs_from_configs(configs: Iterable[Mapping[str, Any]], output_dir: str | Path) -> list[Job]:
    """Jobs for arbitrary `TrainConfig` argument dicts (any extra keys such as init_featurizer,
    init_classifier, linear_probe, strategy, init_label), each in `<output_dir>/<its hash>`.

    An `output_dir` key inside a config is ignored (the folder is always named by the hash).
    Duplicate configs give one job. Raises UserError for keys that `TrainConfig` does not have.
    """
    known = train_config_fields()
    jobs: dict[str, Job] = {}
    checked: set[str] = set()
    for index, config in enumerate(configs):
        unknown = sorted(set(config) - known)
        if unknown:
            raise UserError(f"job config {index}: unknown key(s) {', '.join(unknown)}; "
                            f"TrainConfig accepts: {', '.join(sorted(known))}")
        if "dataset" not in config:
            raise UserError(f"job config {index}: missing 'dataset'")
        job = Job(config, output_dir)
        if job.job_id not in jobs:
            check_values(job, checked)
        jobs.setdefault(job.job_id, job)
    return list(jobs.values())


def check_values(job: Job, checked: set[str]) -> None:
    """UserError (one line) if a training job's arguments would fail `TrainConfig.check` when it runs,
    so a dry run refuses what a run would. Jobs differing only in their seeds, init files or labels
    (values the harness derives) are checked once: `checked` holds what was seen."""
    if job.args.get(TASK_KEY):
        return
    key = json.dumps({k: v for k, v in job.args.items() if k not in _DERIVED_ARGS}, sort_keys=True, default=str)
    if key in checked:
        return
    checked.add(key)
    try:
        config = TrainConfig(**{k: v for k, v in job.args.items() if k not in ("progress", "threads")})
    except TypeError as error:
        raise UserError(f"job {job.describe()}: {error}") from None
    config.check(f"job {job.describe()}: ")


# Arguments the harness derives (bounded by construction): left out of `check_values`'s key.
_DERIVED_ARGS = ("seed", "hparams_seed", "trial_seed", "init", "init_featurizer", "init_classifier", "init_label",
                 "output_dir")


# ----------------------------------------------------------------------------------------- state


def job_state(job: Job) -> str:
    """'done' (the run folder holds `done`), 'diverged' (it holds `diverged`), 'incomplete' (folder
    without either: killed, failed or running) or 'not_launched' (no folder); see `RunDir.state`."""
    return job.run.state


def changed_hparams(job: Job) -> list[str]:
    """Names of the hyper-parameters a finished training job ran with that differ from what its
    arguments resolve to now (sorted; [] when they agree). A job's id hashes its arguments, not the
    values they resolve to, so a registry whose defaults or ranges changed since would otherwise show
    the old runs as done. [] for a task job, or when the run's arguments or today's do not resolve."""
    if job.args.get(TASK_KEY):
        return []
    try:
        stored = job.run.read_static().get("hparams")
        config = TrainConfig(**{key: value for key, value in job.args.items() if key not in ("progress", "threads")})
        now = json.loads(json.dumps(resolved_hparams(config), default=str))
    except (UserError, TypeError, ValueError):
        return []
    if not isinstance(stored, dict):
        return []
    return sorted(key for key in stored.keys() | now.keys() if stored.get(key) != now.get(key))


def status(jobs: Iterable[Job]) -> dict[tuple[str, str], Counter[str]]:
    """Counts of each state per (dataset, algorithm), in first-seen order."""
    counts: dict[tuple[str, str], Counter[str]] = {}
    for job in jobs:
        key = (str(job.args.get("dataset")), str(job.args.get("algorithm", "ERM")))
        counts.setdefault(key, Counter())[job_state(job)] += 1
    return counts


def folder_status(root: str | Path) -> dict[tuple[str, str], Counter[str]]:
    """Counts of each state per (dataset, algorithm) of the run folders directly inside `root` (those
    holding a harness file), read from their `args.json` ("?" when it is unreadable)."""
    counts: dict[tuple[str, str], Counter[str]] = {}
    for path in sorted(Path(root).iterdir()):
        run = RunDir(path)
        if not path.is_dir() or not any((path / name).exists() for name in rundir.FILES):
            continue
        try:
            args = run.args
        except (UserError, KeyError, TypeError):
            args = {}
        key = (str(args.get("dataset", "?")), str(args.get("algorithm", "?")))
        counts.setdefault(key, Counter())[run.state] += 1
    return counts


def format_status(counts: Mapping[tuple[str, str], Counter[str]]) -> str:
    """A text table of `status(...)`: one row per dataset and algorithm, and a total row."""
    rows = [[dataset, algorithm, *(c[s] for s in STATES), sum(c.values())]
            for (dataset, algorithm), c in counts.items()]
    total = sum(counts.values(), Counter())
    rows.append(["total", "", *(total[s] for s in STATES), sum(total.values())])
    return tabulate(rows, headers=["dataset", "algorithm", *(s.replace("_", " ") for s in STATES), "jobs"])


def delete_incomplete(jobs: Iterable[Job]) -> list[Job]:
    """Remove the run folder of every incomplete job (so it starts afresh); returns those jobs.

    Only the harness's files are deleted: a folder holding anything else is refused (UserError)
    before any folder is touched.
    """
    return delete_jobs([job for job in jobs if job_state(job) == INCOMPLETE])


def delete_jobs(jobs: Iterable[Job]) -> list[Job]:
    """Remove the run folder of every job that has one, whatever its state (`sweep delete_all`);
    returns those jobs. As `delete_incomplete`: only the harness's files, nothing if a folder holds
    anything else or is in use by a live process."""
    incomplete = [job for job in jobs if job.run.path.exists()]
    for job in incomplete:
        job.run.check_is_run()
        holder = Lock(job.run.lock_file, "").read()
        if holder is not None and is_alive(holder):
            raise UserError(f"run folder {job.run.path} is in use by {describe(holder)}: "
                            f"nothing deleted (wait for it, or stop it first)")
    for job in incomplete:
        with Lock(job.run.lock_file, f"run folder {job.run.path}"):
            job.run.reset()
        with contextlib.suppress(OSError):  # emptied: remove it (a lock taken meanwhile keeps it)
            job.run.remove_if_empty()
    return incomplete
