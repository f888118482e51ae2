"""One sweep job in this process: `run_job(args)` and what it reports (`JobOutcome`).

`run_job` skips a job that is already done, continues a killed run from its resume state, else
resets a half-written run folder (`RunDir.reset`: so no record is ever written twice; it is the only
place a run folder is reset before training), tees the job's stdout/stderr into `out.txt`/`err.txt`
of its run folder and calls `training.train`, holding the run folder's lock. `ResumableJob` is the
same, checkpointable for submitit (Slurm requeues a preempted job, which then resumes).

Task jobs: a job whose arguments name a `task` ("module:function" inside this package) runs that
function with its arguments instead of training, with the same lock, logs, outcome and `done` marker,
so any launcher can run other units of work (the recycling pipeline's combine stage, one job per
cell). The function is named, not pickled, because the pool's workers take JSON.

Threads: on a CPU machine parallel runs are processes, and oversubscription is costly (measured on
2 cores: 2 processes x 2 threads ran 4-7x slower than 2 x 1), so each worker sets torch's thread
count to cores // workers (`limit_threads`) before torch does any work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from domainbed_recycle import provenance
from domainbed_recycle.datasets import get_dataset_class
from domainbed_recycle.errors import RunDiverged, UserError, os_error_line
from domainbed_recycle.locks import Lock, LockHeld, release_if_mine
from domainbed_recycle.misc import available_cores
from domainbed_recycle.rundir import RunDir
from domainbed_recycle.sweep.jobs import TASK_KEY, Job
from domainbed_recycle.training import TrainConfig, can_resume, train

# Outcome statuses.
RAN = "done"  # trained to the end in this launch
SKIPPED = "skipped"  # already done before this launch
FAILED = "failed"
DIVERGED_OUTCOME = "diverged"  # its loss or weights stopped being finite (now or in an earlier launch)
ELSEWHERE = "running_elsewhere"  # another process holds the run folder's lock: not touched here
STALE = "stale"  # done, with hyper-parameters other than its arguments resolve to now (see jobs.changed_hparams)

_TASK_PACKAGE = "domainbed_recycle."


@dataclasses.dataclass
class JobOutcome:
    """What happened to one job in one launch."""

    job_id: str
    output_dir: str
    status: str  # "done", "skipped", "diverged", "running_elsewhere", "stale" or "failed"
    seconds: float = 0.0
    error: str | None = None  # one line: exception type and message (details in err.txt)


def threads_per_worker(n_workers: int, cores: int | None = None) -> int:
    """torch threads for each of `n_workers` parallel processes: cores // workers, at least 1."""
    return max(1, (cores or available_cores()) // max(1, n_workers))


def limit_threads(threads: int | None) -> None:
    """Set torch's thread count (and OpenMP/MKL's, when torch is not imported yet) to `threads`."""
    if not threads:
        return
    if "torch" not in sys.modules:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only allowed before any inter-op parallel work
        torch.set_num_interop_threads(threads)


def resolve_task(name: str) -> Callable[[dict[str, Any]], None]:
    """The function a task job runs: `name` is "module:function" with the module inside this package
    (a job naming code anywhere else is refused, so a job list cannot run code from elsewhere)."""
    module, _, function = str(name).partition(":")
    if not module.startswith(_TASK_PACKAGE) or not function:
        raise UserError(f"task {name!r}: expected 'domainbed_recycle.<module>:<function>'")
    try:
        found = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as error:
        raise UserError(f"task {name!r} not found: {error}") from None
    if not callable(found):
        raise UserError(f"task {name!r} is not a function")
    return found


class _Tee(io.TextIOBase):
    """Writes to a log file and, optionally, to the original stream too."""

    def __init__(self, log: TextIO, echo: TextIO | None) -> None:
        self.log, self.echo = log, echo

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        if self.echo is not None:
            self.echo.write(text)
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        if self.echo is not None:
            self.echo.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # code writing to the raw descriptor (faulthandler...) reaches the log
        return self.log.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


@contextlib.contextmanager
def _tee_output(run: RunDir, echo: bool) -> Iterator[None]:
    """Send sys.stdout/sys.stderr to the run's out.txt and err.txt (and the terminal if `echo`)."""
    with open(run.out_file, "a", encoding="utf-8") as out, open(run.err_file, "a", encoding="utf-8") as err:
        saved = sys.stdout, sys.stderr
        sys.stdout = _Tee(out, saved[0] if echo else None)  # type: ignore[assignment]
        sys.stderr = _Tee(err, saved[1] if echo else None)  # type: ignore[assignment]
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


def run_job(args: dict[str, Any], threads: int | None = None, echo: bool = True,
            force: bool = False, reraise: bool = False) -> JobOutcome:
    """Train one job (the `TrainConfig` arguments `args`, `output_dir` included); never raises
    unless `reraise`.

    Takes the run folder's lock first (`locks.Lock` on `RunDir.lock_file`): a job another process
    holds is left alone, outcome "running_elsewhere". Skips a job already done, and reports a job
    that diverged before as "diverged" (unless `force`: either runs again). A run that diverges now
    is "diverged" too (its folder holds the `diverged` marker). A killed attempt that saved a resume
    state (`training.can_resume`) is continued; otherwise the run folder is reset
    (deleting only the harness's files of a killed attempt; a folder holding anything else fails
    the job), tees stdout/stderr to `out.txt` and `err.txt` there, and trains with
    `progress=False` and `threads` torch threads. A failure's traceback goes to `err.txt`; the
    outcome says "failed" and the folder stays incomplete.
    """
    start = time.time()
    limit_threads(threads)
    run = RunDir(args["output_dir"])
    run_dir, job_id = run.path, run.name
    if run.is_done and not force:
        return JobOutcome(job_id, str(run_dir), SKIPPED)
    if run.is_diverged and not force:
        return JobOutcome(job_id, str(run_dir), DIVERGED_OUTCOME, 0.0, run.describe_divergence())
    lock = Lock(run.lock_file, f"run folder {run_dir}")
    try:
        run.check_is_run()  # never put a lock into a folder that is not a run
        run.create()
        lock.acquire()
    except LockHeld as held:
        return JobOutcome(job_id, str(run_dir), ELSEWHERE, 0.0, str(held))
    except (OSError, UserError) as error:
        if reraise:
            raise
        message = os_error_line(error, run_dir) if isinstance(error, OSError) else str(error)
        return JobOutcome(job_id, str(run_dir), FAILED, time.time() - start, f"cannot prepare {run_dir}: {message}")
    try:
        return _run_locked(run, args, threads, echo, force, reraise, start)
    finally:
        lock.release()


def _run_locked(run: RunDir, args: dict[str, Any], threads: int | None, echo: bool, force: bool,
                reraise: bool, start: float) -> JobOutcome:
    """`run_job`'s work once the run folder's lock is held (the state is read again: another
    process may have finished or diverged the run before the lock was taken)."""
    run_dir, job_id = run.path, run.name
    if run.is_done and not force:
        return JobOutcome(job_id, str(run_dir), SKIPPED)
    if run.is_diverged and not force:
        return JobOutcome(job_id, str(run_dir), DIVERGED_OUTCOME, 0.0, run.describe_divergence())

    config_args = {key: value for key, value in args.items() if key not in ("progress", "threads")}
    task = args.get(TASK_KEY)
    try:
        resumable = (task is None and not force
                     and can_resume(TrainConfig(**config_args), get_dataset_class(args["dataset"])))
    except Exception:  # bad arguments: training them reports the problem below
        resumable = False
    try:
        if not resumable:  # a killed attempt without a resume state starts afresh
            run.reset()
    except (OSError, UserError) as error:
        if reraise:
            raise
        return JobOutcome(job_id, str(run_dir), FAILED, time.time() - start, f"cannot prepare {run_dir}: {error}")
    with _tee_output(run, echo):
        if task is None:
            print(f"job {job_id}: {config_args}", flush=True)
        else:  # a task's arguments can be long (a combine job carries its cell's runs): one line, the rest to a file
            run.write_args({"args": config_args, "versions": provenance.versions(),
                            "git_commit": provenance.git_commit()})
            print(f"job {job_id}: {Job(config_args, run.path.parent).describe()} (arguments in {run.args_file})",
                  flush=True)
        try:
            if task is None:
                train(TrainConfig(**config_args, progress=False, threads=threads))
            else:
                resolve_task(task)(config_args)
                run.mark_done()
        except RunDiverged:  # an outcome, not a bug: never re-raised
            print(run.describe_divergence(), file=sys.stderr)
            return JobOutcome(job_id, str(run_dir), DIVERGED_OUTCOME, time.time() - start,
                              run.describe_divergence())
        except Exception as error:
            traceback.print_exc()
            if reraise:
                raise
            message = (os_error_line(error, run_dir) if isinstance(error, OSError)
                       else f"{type(error).__name__}: {error}".splitlines()[0])
            return JobOutcome(job_id, str(run_dir), FAILED, time.time() - start, message)
    return JobOutcome(job_id, str(run_dir), RAN, time.time() - start)


class ResumableJob:
    """`run_job` as submitit runs it: callable, and checkpointable (submitit calls `checkpoint` when
    Slurm preempts the job or its time limit nears, then requeues what it returns). The requeued job
    continues from the run's last resume state: the run folder's lock is released first (the new
    attempt may start on another host) and `force` is dropped (a forced rerun must not reset the
    progress of its own first attempt)."""

    def __call__(self, args: dict[str, Any], threads: int | None = None, echo: bool = True,
                 force: bool = False) -> JobOutcome:
        return run_job(args, threads, echo, force)

    def checkpoint(self, args: dict[str, Any], threads: int | None = None, echo: bool = True,
                   force: bool = False) -> Any:
        import submitit

        release_if_mine(RunDir(args["output_dir"]).lock_file)
        return submitit.helpers.DelayedSubmission(ResumableJob(), args, threads, echo, False)
