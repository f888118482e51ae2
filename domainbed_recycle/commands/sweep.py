"""`drecycle sweep launch|delete_incomplete|delete_all|status`: DomainBed's sweep command, plus spec files.

Every flag of DomainBed's `sweep.py` is accepted with its meaning and default (all its datasets, every
algorithm, hparams seeds `range(--n_hparams_from, --n_hparams)` = 0..19, 3 trial seeds). The sweep is
described either by those flags or by `--spec sweeps/NAME.toml`; flags given next to `--spec` override
the file's keys. `status` with only `--output_dir` counts the run folders found there.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from domainbed_recycle.commands.train import add_performance_arguments, performance_values
from domainbed_recycle.errors import UserError

HELP = "Launch a sweep (DomainBed's sweep.py flags, same meaning), delete its runs, or show its status."

ACTIONS = ("launch", "delete_incomplete", "delete_all", "status")
# DomainBed's --command_launcher names -> (this project's launcher, workers).
COMMAND_LAUNCHERS = {"local": ("pool", 1), "multi_gpu": ("multi_gpu", None), "dummy": ("dummy", None)}
# Flags that describe the jobs (any of them given: `status` lists those jobs, not the folder's).
JOB_FLAGS = ("spec", "datasets", "algorithms", "test_envs", "single_test_envs", "n_hparams", "n_hparams_from",
             "n_trials", "steps", "checkpoint_freq", "holdout_fraction", "hparams", "data_dir", "task")


EPILOG = """Where this differs from DomainBed's sweep.py (README, "Coming from DomainBed"): launch also
continues incomplete jobs from their last save (DomainBed launches only jobs without a folder); the
dummy launcher creates no folder; --n_hparams_from >= --n_hparams is an error, not an empty sweep;
status and delete_all are this project's; --launcher and --n_workers choose this project's launchers."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    # Every default is None so that a flag left out does not override the spec file's key; the defaults
    # named in the help are DomainBed's, applied when neither flag nor spec sets the key.
    parser.add_argument("action", choices=ACTIONS,
                        help="launch; delete_incomplete (folders of killed or failed runs); delete_all (every "
                             "run folder of this sweep, as DomainBed-derived sweeps' delete_all); status")
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="default: DomainBed's datasets (ColoredMNIST RotatedMNIST VLCS PACS OfficeHome "
                             "TerraIncognita DomainNet)")
    parser.add_argument("--algorithms", nargs="+", default=None, help="default: every registered algorithm")
    parser.add_argument("--task", default=None, choices=["domain_generalization", "domain_adaptation"],
                        help="passed to every run (default domain_generalization)")
    parser.add_argument("--n_hparams_from", type=int, default=None,
                        help="first hparams seed: seeds are range(n_hparams_from, n_hparams) (default 0)")
    parser.add_argument("--n_hparams", type=int, default=None,
                        help="end of the hparams seeds' range, exclusive (default 20); with --n_hparams_from 0, "
                             "the number of hparams seeds")
    parser.add_argument("--output_dir", default=None, help="sweep folder (one sub-folder per run)")
    parser.add_argument("--data_dir", default=None, help="passed to every run (DomainBed requires it; optional "
                                                          "here: the built-ins and MNIST's offline digits need none)")
    parser.add_argument("--seed", type=int, default=None,
                        help="accepted for DomainBed's command lines; as in DomainBed it changes nothing (each "
                             "run's seed is seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed))")
    parser.add_argument("--n_trials", type=int, default=None, help="trial seeds 0..n_trials-1 (default 3)")
    parser.add_argument("--command_launcher", default=None,
                        help="DomainBed's launchers: local (one job at a time, each in a worker process), "
                             "multi_gpu (one job per GPU), dummy (print each job's command, run nothing); "
                             "this project's names (see --launcher) work too")
    parser.add_argument("--steps", type=int, default=None, help="default: each dataset's N_STEPS")
    parser.add_argument("--hparams", default=None, help="JSON object of hyper-parameter overrides")
    parser.add_argument("--holdout_fraction", type=float, default=None, help="default 0.2")
    parser.add_argument("--single_test_envs", action="store_true", default=None,
                        help="only one test domain per run (default: singles and pairs)")
    parser.add_argument("--skip_confirmation", action="store_true")
    own = parser.add_argument_group("this project's own flags")
    own.add_argument("--spec", default=None, help="sweep spec file (TOML or JSON, see sweeps/)")
    own.add_argument("--test_envs", type=int, nargs="+", default=None,
                     help="domains that may be held out (default: all)")
    own.add_argument("--checkpoint_freq", type=int, default=None)
    own.add_argument("--dry_run", action="store_true",
                     help="print the jobs and their state, and what they cost (steps, images, GPU-hours); "
                          "run nothing")
    own.add_argument("--gpu", default=None,
                     help="GPU kind the dry run estimates GPU-hours for (default: every measured kind)")
    own.add_argument("--launcher", default=None,
                     help="inprocess | pool (default) | submitit_local | slurm | multi_gpu | dummy; "
                          "--command_launcher local = --launcher pool --n_workers 1")
    own.add_argument("--n_workers", type=int, default=None, help="parallel jobs (default: one per core)")
    own.add_argument("--rerun_done", "--force", action="store_true",
                     help="wipe and train again jobs already done or diverged")
    own.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    slurm = parser.add_argument_group("Slurm (--launcher slurm)")
    slurm.add_argument("--slurm_partition", default=None)
    slurm.add_argument("--slurm_time_min", type=int, default=None, help="time limit per job (default 60)")
    slurm.add_argument("--slurm_mem_gb", type=float, default=None, help="memory per job (default: not asked)")
    slurm.add_argument("--slurm_cpus_per_task", type=int, default=None, help="also torch threads (default 1)")
    slurm.add_argument("--slurm_gpus_per_node", type=int, default=None)
    slurm.add_argument("--slurm_array_parallelism", type=int, default=None, help="tasks running at once")
    slurm.add_argument("--slurm_account", default=None, help="sbatch --account")
    slurm.add_argument("--slurm_qos", default=None, help="sbatch --qos")
    slurm.add_argument("--slurm_constraint", default=None, help="sbatch --constraint (e.g. a GPU model)")
    slurm.add_argument("--slurm_gres", default=None, help="sbatch --gres (e.g. gpu:a100:1)")
    slurm.add_argument("--slurm_sbatch", action="append", default=None, metavar="OPTION=VALUE",
                       help="any other sbatch option, e.g. mail-type=END (repeatable)")
    slurm.add_argument("--slurm_setup", action="append", default=None, metavar="LINE",
                       help="a shell line run before each job, e.g. 'module load cuda' (repeatable)")
    slurm.add_argument("--slurm_runs_per_task", type=int, default=None,
                       help="jobs packed into each array task, side by side on its GPUs (default 1)")
    add_performance_arguments(parser)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help="change a key of the --spec file, e.g. --set steps=3 --set slurm.partition=gpu "
                             "(a TOML value, else text); repeatable")


def _launcher(args: argparse.Namespace) -> tuple[str | None, int | None]:
    """(launcher, n_workers) from --launcher / --command_launcher (DomainBed's names mapped)."""
    launcher, n_workers = args.launcher, args.n_workers
    if args.command_launcher is not None:
        mapped, workers = COMMAND_LAUNCHERS.get(args.command_launcher, (args.command_launcher, None))
        if launcher is not None and launcher != mapped:
            raise UserError(f"--command_launcher {args.command_launcher} (launcher {mapped}) and --launcher "
                            f"{launcher} disagree: give one of them")
        launcher, n_workers = mapped, n_workers if n_workers is not None else workers
    return launcher, n_workers


def _spec_values(args: argparse.Namespace) -> dict[str, Any]:
    """The spec keys the flags set (None: not given)."""
    from domainbed_recycle.hparams_registry import parse_overrides

    hparams = parse_overrides(args.hparams) if args.hparams is not None else None
    slurm = {key: getattr(args, f"slurm_{key}") for key in
             ("partition", "time_min", "mem_gb", "cpus_per_task", "gpus_per_node", "array_parallelism",
              "runs_per_task", "account", "qos", "constraint", "gres", "setup")}
    if args.slurm_sbatch:
        slurm["sbatch"] = dict(_option(text) for text in args.slurm_sbatch)
    launcher, n_workers = _launcher(args)
    return {
        "datasets": args.datasets, "algorithms": args.algorithms, "test_envs": args.test_envs,
        "single_test_envs": args.single_test_envs, "n_hparams": args.n_hparams,
        "n_hparams_from": args.n_hparams_from, "n_trials": args.n_trials, "steps": args.steps,
        "checkpoint_freq": args.checkpoint_freq, "holdout_fraction": args.holdout_fraction,
        "hparams": hparams, "data_dir": args.data_dir, "output_dir": args.output_dir, "task": args.task,
        "launcher": launcher, "n_workers": n_workers,
        "slurm": {key: value for key, value in slurm.items() if value is not None} or None,
        "performance": performance_values(args) or None,
    }


def _option(text: str) -> tuple[str, str]:
    """("mail-type", "END") for "mail-type=END" (a `--slurm_sbatch` value)."""
    key, equal, value = text.partition("=")
    if not equal or not key.strip():
        raise UserError(f"--slurm_sbatch {text!r}: expected OPTION=VALUE, e.g. mail-type=END")
    return key.strip().lstrip("-"), value


def _confirm(question: str) -> bool:
    """Ask y/n on stdin; a closed stdin (CI, nohup) is a UserError asking for --skip_confirmation."""
    try:
        answer = input(f"{question} (y/n) ")
    except EOFError:
        print()
        raise UserError("no answer on stdin (not interactive): pass --skip_confirmation to proceed") from None
    return answer.strip().lower() in ("y", "yes")


def run(args: argparse.Namespace) -> int:
    from domainbed_recycle import sweep

    if args.action == "status" and not any(getattr(args, flag) is not None for flag in JOB_FLAGS):
        return _folder_status(args)
    values = _spec_values(args)
    if args.spec:
        spec = sweep.load_spec(args.spec, values, args.settings)
    elif args.settings:
        raise UserError("--set changes keys of a spec file: give --spec too (or use the flags)")
    else:
        spec = sweep.spec_from_dict({k: v for k, v in values.items() if v is not None}, source="sweep flags")
    jobs = spec.jobs()
    counts = sweep.status(jobs)

    if args.action == "status" or args.dry_run:
        if args.dry_run:
            from domainbed_recycle.sweep import cost

            for job in jobs:
                print(f"{job.job_id}  {sweep.job_state(job):<12}  {job.describe()}")
            print(f"{len(jobs)} jobs in {spec.output_dir} (dry run: nothing {_verb(args.action)})")
            print(cost.describe(cost.estimate(jobs), args.gpu))
        if args.action == "status":
            print(sweep.format_status(counts))
        return 0

    if args.action in ("delete_incomplete", "delete_all"):
        doomed = [job for job in jobs if (sweep.job_state(job) == sweep.INCOMPLETE if args.action == "delete_incomplete"
                                          else job.run.path.exists())]
        what = "incomplete" if args.action == "delete_incomplete" else "launched"
        print(f"{len(doomed)} {what} job(s) of {len(jobs)} in {spec.output_dir}")
        if not doomed:
            return 0
        if not args.skip_confirmation and not _confirm(f"Delete the folders of {len(doomed)} job(s)?"):
            print("Nothing deleted.")
            return 0
        deleted = sweep.delete_jobs(doomed)
        print(f"deleted {len(deleted)} job folder(s)")
        return 0

    if spec.launcher == "dummy":  # DomainBed's dummy launcher: print what would run
        for job in jobs:
            if sweep.job_state(job) not in (sweep.DONE, sweep.DIVERGED) or args.rerun_done:
                print(f"Dummy launcher: {job.command()}")
        return 0
    return _launch(args, spec, jobs)


def _folder_status(args: argparse.Namespace) -> int:
    """`sweep status --output_dir D` alone: the states of the run folders found in D, by dataset and
    algorithm (read from their args.json), without the flags that made the sweep."""
    from pathlib import Path

    from domainbed_recycle import sweep

    if args.output_dir is None:
        raise UserError("sweep status: pass --output_dir (alone, to count its run folders; or with the "
                        "sweep's flags or --spec, to list its jobs)")
    root = Path(args.output_dir)
    if not root.is_dir():
        raise UserError(f"--output_dir {root} is not a folder")
    counts = sweep.folder_status(root)
    if not counts:
        print(f"no run folder in {root}")
        return 0
    print(sweep.format_status(counts))
    return 0


def _verb(action: str) -> str:
    return {"launch": "launched", "delete_incomplete": "deleted", "status": "changed"}[action]


def _launch(args: argparse.Namespace, spec: Any, jobs: list) -> int:
    from domainbed_recycle import sweep
    from domainbed_recycle.sweep.launchers import SlurmOptions, launch

    states = [sweep.job_state(job) for job in jobs]
    n_done = states.count(sweep.DONE)
    n_todo = len(jobs) - (0 if args.rerun_done else n_done)
    n_diverged = states.count(sweep.DIVERGED)
    n_done += n_diverged  # final too: trained again only with --rerun_done
    print(f"{len(jobs)} jobs in {spec.output_dir}: {n_done - n_diverged} done, {n_diverged} diverged, "
          f"{states.count(sweep.INCOMPLETE)} incomplete (continued from their last save, if any), "
          f"{states.count(sweep.NOT_LAUNCHED)} not launched")
    done = [] if args.rerun_done else [job for job, state in zip(jobs, states, strict=True) if state == sweep.DONE]
    stale = [(job, changed) for job in done if (changed := sweep.changed_hparams(job))]
    if stale:  # the registry changed since they ran: their results answer another question
        for job, changed in stale:
            print(f"  STALE {job.job_id} ({job.describe()}): done with other values of {', '.join(changed)} "
                  f"than its arguments resolve to now")
        print(f"{len(stale)} finished job(s) ran with hyper-parameters the registry no longer gives (it changed "
              f"since): relaunch with --rerun_done to train them again, or use a new output folder")
        return 1
    if n_todo == 0:
        print("Nothing to launch.")
        return 0
    slurm = SlurmOptions.from_dict(dict(spec.slurm))
    where = f"launcher {spec.launcher}" + (f", {spec.n_workers} workers" if spec.n_workers else "")
    if not args.skip_confirmation and not _confirm(f"Launch {n_todo} jobs ({where})?"):
        print("Nevermind!")
        return 0
    from domainbed_recycle.locks import describe, folder_lock, try_hold

    # Sweeps may share a folder, so a launch running there is no reason to refuse: each job's own
    # lock makes this launch skip ("running elsewhere") the jobs the other one is training.
    with try_hold(folder_lock(spec.output_dir, f"sweep folder {spec.output_dir}")) as other:
        if other is not None:
            print(f"note: another launch ({describe(other)}) is working in {spec.output_dir}: "
                  f"the jobs it is training are skipped here")
        report = launch(jobs, launcher=spec.launcher, n_workers=spec.n_workers, slurm=slurm,
                        skip_done=not args.rerun_done, progress=not args.no_progress)
    print(report.summary())
    sys.stdout.flush()
    return 0 if report.ok else 1
