"""`drecycle sweep launch|delete_incomplete|status`: DomainBed's sweep command, plus spec files.

The sweep is described either by DomainBed's flags or by `--spec sweeps/NAME.toml`; flags given
next to `--spec` override the file's keys.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from domainbed_recycle.commands.train import add_performance_arguments, performance_values
from domainbed_recycle.errors import UserError

HELP = "Launch a sweep of training runs, delete its incomplete runs, or show its status."

ACTIONS = ("launch", "delete_incomplete", "status")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Every default is None so that a flag left out does not override the spec file's key.
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("--spec", default=None, help="sweep spec file (TOML or JSON, see sweeps/)")
    parser.add_argument("--datasets", nargs="+", default=None)
    parser.add_argument("--algorithms", nargs="+", default=None, help="default: ERM")
    parser.add_argument("--test_envs", type=int, nargs="+", default=None,
                        help="domains that may be held out (default: all)")
    parser.add_argument("--single_test_envs", action="store_true", default=None,
                        help="only one test domain per run (default: singles and pairs)")
    parser.add_argument("--n_hparams", type=int, default=None, help="hparams seeds per cell (default 1)")
    parser.add_argument("--n_hparams_from", type=int, default=None, help="first hparams seed (default 0)")
    parser.add_argument("--n_trials", type=int, default=None, help="trial seeds (default 1)")
    parser.add_argument("--steps", type=int, default=None, help="default: each dataset's N_STEPS")
    parser.add_argument("--checkpoint_freq", type=int, default=None)
    parser.add_argument("--holdout_fraction", type=float, default=None)
    parser.add_argument("--hparams", default=None, help="JSON object of hyper-parameter overrides")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--output_dir", default=None, help="sweep folder (one sub-folder per run)")
    parser.add_argument("--skip_confirmation", action="store_true")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the jobs and their state, and what they cost (steps, images, GPU-hours); "
                             "run nothing")
    parser.add_argument("--gpu", default=None,
                        help="GPU kind the dry run estimates GPU-hours for (default: every measured kind)")
    parser.add_argument("--launcher", default=None,
                        help="inprocess | pool (default) | submitit_local | slurm")
    parser.add_argument("--n_workers", type=int, default=None, help="parallel jobs (default: one per core)")
    parser.add_argument("--rerun_done", "--force", action="store_true",
                        help="wipe and train again jobs already done or diverged")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    slurm = parser.add_argument_group("Slurm (--launcher slurm)")
    slurm.add_argument("--slurm_partition", default=None)
    slurm.add_argument("--slurm_time_min", type=int, default=None, help="time limit per job (default 60)")
    slurm.add_argument("--slurm_mem_gb", type=float, default=None, help="memory per job (default: not asked)")
    slurm.add_argument("--slurm_cpus_per_task", type=int, default=None, help="also torch threads (default 1)")
    slurm.add_argument("--slurm_gpus_per_node", type=int, default=None)
    slurm.add_argument("--slurm_array_parallelism", type=int, default=None, help="tasks running at once")
    slurm.add_argument("--slurm_runs_per_task", type=int, default=None,
                       help="jobs packed into each array task, side by side on its GPUs (default 1)")
    add_performance_arguments(parser)


def _spec_values(args: argparse.Namespace) -> dict[str, Any]:
    """The spec keys the flags set (None: not given)."""
    from domainbed_recycle.hparams_registry import parse_overrides

    hparams = parse_overrides(args.hparams) if args.hparams is not None else None
    slurm = {key: getattr(args, f"slurm_{key}") for key in
             ("partition", "time_min", "mem_gb", "cpus_per_task", "gpus_per_node", "array_parallelism",
              "runs_per_task")}
    return {
        "datasets": args.datasets, "algorithms": args.algorithms, "test_envs": args.test_envs,
        "single_test_envs": args.single_test_envs, "n_hparams": args.n_hparams,
        "n_hparams_from": args.n_hparams_from, "n_trials": args.n_trials, "steps": args.steps,
        "checkpoint_freq": args.checkpoint_freq, "holdout_fraction": args.holdout_fraction,
        "hparams": hparams, "data_dir": args.data_dir, "output_dir": args.output_dir,
        "launcher": args.launcher, "n_workers": args.n_workers,
        "slurm": {key: value for key, value in slurm.items() if value is not None} or None,
        "performance": performance_values(args) or None,
    }


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

    values = _spec_values(args)
    if args.spec:
        spec = sweep.load_spec(args.spec, values)
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

    if args.action == "delete_incomplete":
        incomplete = [job for job in jobs if sweep.job_state(job) == sweep.INCOMPLETE]
        print(f"{len(incomplete)} incomplete job(s) of {len(jobs)} in {spec.output_dir}")
        if not incomplete:
            return 0
        if not args.skip_confirmation and not _confirm(f"Delete the folders of {len(incomplete)} job(s)?"):
            print("Nothing deleted.")
            return 0
        deleted = sweep.delete_incomplete(incomplete)
        print(f"deleted {len(deleted)} incomplete job folder(s)")
        return 0

    return _launch(args, spec, jobs)


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
