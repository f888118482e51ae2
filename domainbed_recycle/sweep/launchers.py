"""Run a list of sweep jobs: in-process, on a local process pool, with submitit locally or on Slurm.

Python API (used by `drecycle sweep` and by the recycling pipeline)::

    from domainbed_recycle.sweep import launch, SlurmOptions
    report = launch(jobs, launcher="pool", n_workers=2)
    report.failed  # outcomes of the jobs that raised; their tracebacks are in <run folder>/err.txt

Every launcher runs `sweep.run_job.run_job(job.args)` once per job (one job: see that module). A job
that fails is recorded (traceback in `err.txt`, outcome "failed") and the others go on; only the
`inprocess` launcher, meant for debugging, lets the exception propagate.

GPUs: on a node with GPUs the `pool` launcher runs one worker per GPU by default, each seeing only its
GPU (`CUDA_VISIBLE_DEVICES`), as DomainBed's `multi_gpu` launcher does (`gpu_of_worker`); the `slurm`
launcher can pack `runs_per_task` jobs into each array task, run there by such a pool over the task's GPUs.

Why one module of ~550 lines: the four launchers share `LaunchContext`, the outcome bookkeeping, the
GPU assignment and the registry they register in; each is a short function, and splitting them would
only add a module that imports this one back. submitit is imported inside the two launchers that use it (optional).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from domainbed_recycle.errors import UserError
from domainbed_recycle.locks import release_if_mine
from domainbed_recycle.registry import Registry
from domainbed_recycle.rundir import RunDir
from domainbed_recycle.sweep.jobs import DIVERGED, DONE, Job, changed_hparams, job_state
from domainbed_recycle.sweep.run_job import (
    DIVERGED_OUTCOME,
    ELSEWHERE,
    FAILED,
    RAN,
    SKIPPED,
    STALE,
    JobOutcome,
    ResumableJob,
    available_cores,
    limit_threads,
    run_job,
    threads_per_worker,
)
from domainbed_recycle.validation import Annotated, Bounds, check


@dataclasses.dataclass
class SlurmOptions:
    """Resources of each Slurm job (one sweep job = one task of a Slurm job array, or `runs_per_task`
    jobs packed in one task), passed through submitit.

    `mem_gb` None requests no memory (the partition's default); on a single node it must not exceed
    the node's RealMemory. `cpus_per_task` is also the job's torch thread count (shared by the jobs of
    a packed task, as are its `gpus_per_node` GPUs: one job per GPU, or several per GPU when
    `runs_per_task` exceeds them). `account`, `qos`, `constraint` and `gres` are sbatch's options of
    those names; `sbatch` adds any other sbatch option (`{"mail-type" = "END"}` -> `#SBATCH
    --mail-type=END`); `setup` lines run in the job script before the job (`module load cuda/12.1`,
    `source ~/venvs/drecycle/bin/activate`).
    """

    partition: str | None = None
    time_min: int = 60
    mem_gb: float | None = None
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    array_parallelism: int = 256
    runs_per_task: int = 1  # jobs packed into one array task, run side by side over its GPUs and CPUs
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gres: str | None = None
    sbatch: dict[str, Any] = dataclasses.field(default_factory=dict)
    setup: list[str] = dataclasses.field(default_factory=list)
    poll_s: float = 2.0  # how often the launcher checks for finished jobs

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SlurmOptions:
        """Options from a spec's `[slurm]` table or flags; UserError naming an unknown key or a bad value."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown Slurm option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
        given = {key: value for key, value in values.items() if value is not None}
        for key, value in given.items():
            problem = _slurm_value_problem(key, value)
            if problem:
                raise UserError(f"Slurm option '{key}': {problem}, got {value!r}")
        return cls(**given)

    def executor_parameters(self) -> dict[str, Any]:
        """The keyword arguments of submitit's `update_parameters` for these options."""
        params: dict[str, Any] = {
            "name": "drecycle", "timeout_min": int(self.time_min), "cpus_per_task": int(self.cpus_per_task),
            "slurm_array_parallelism": int(self.array_parallelism), "slurm_partition": self.partition,
        }
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.gpus_per_node:
            params["gpus_per_node"] = int(self.gpus_per_node)
        for key in ("account", "qos", "constraint", "gres"):
            if getattr(self, key) is not None:
                params[f"slurm_{key}"] = getattr(self, key)
        if self.sbatch:
            params["slurm_additional_parameters"] = dict(self.sbatch)
        if self.setup:
            params["slurm_setup"] = list(self.setup)
        return params


_SLURM_TEXT = ("partition", "account", "qos", "constraint", "gres")
_SLURM_COUNTS = {"time_min": 1, "cpus_per_task": 1, "gpus_per_node": 0, "array_parallelism": 1,
                 "runs_per_task": 1}


def _one_line(value: Any) -> bool:
    """A string without line breaks or NUL bytes (a value written into one line of the job script)."""
    return isinstance(value, str) and not any(c in value for c in "\n\r\x00")


def _slurm_value_problem(key: str, value: Any) -> str | None:
    """Why `value` cannot be Slurm option `key` (None when it can)."""
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf")

    if key in _SLURM_TEXT:  # one line: each becomes an `#SBATCH` line of the job script
        return None if _one_line(value) and value.strip() else "expected a non-empty string on one line"
    if key == "cpus_per_task":  # also each job's torch threads: bounded as --threads is
        try:
            check(value, Annotated[int, Bounds(1, limit="threads")], "cpus_per_task")
        except UserError as error:
            return str(error).partition(" must be ")[2].rpartition(", got ")[0] or str(error)
        return None
    if key in _SLURM_COUNTS:
        low = _SLURM_COUNTS[key]
        return None if isinstance(value, int) and not isinstance(value, bool) and value >= low else \
            f"expected an integer >= {low}"
    if key in ("mem_gb", "poll_s"):
        return None if number(value) and value > 0 else "expected a finite number > 0"
    if key == "sbatch":
        ok = isinstance(value, dict) and all(_one_line(k) and k and (_one_line(v) or isinstance(v, bool) or number(v))
                                              for k, v in value.items())
        return None if ok else 'expected a table of sbatch options, e.g. {"mail-type" = "END"}'
    if key == "setup":
        ok = isinstance(value, list) and all(_one_line(line) for line in value)
        return None if ok else "expected a list of shell lines"
    return None


@dataclasses.dataclass
class LaunchReport:
    """Outcomes of one `launch`, in the order of the jobs given."""

    launcher: str
    outcomes: list[JobOutcome]
    seconds: float = 0.0

    @property
    def failed(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == FAILED]

    @property
    def n_ran(self) -> int:
        return sum(o.status == RAN for o in self.outcomes)

    @property
    def n_skipped(self) -> int:
        return sum(o.status == SKIPPED for o in self.outcomes)

    @property
    def diverged(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == DIVERGED_OUTCOME]

    @property
    def elsewhere(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == ELSEWHERE]

    @property
    def stale(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == STALE]

    @property
    def ok(self) -> bool:
        """No job failed, and no finished job ran with other hyper-parameters than it would now."""
        return not self.failed and not self.stale

    def summary(self) -> str:
        """One line of counts, then one line per diverged or failed job (failures point at err.txt)."""
        counts = [f"{self.n_ran} ran", f"{self.n_skipped} already done"]
        counts += [f"{len(group)} {name}" for group, name in ((self.elsewhere, "running elsewhere"),
                                                              (self.diverged, "diverged"),
                                                              (self.stale, "stale")) if group]
        counts.append(f"{len(self.failed)} failed")
        lines = [f"{self.launcher}: {len(self.outcomes)} jobs in {self.seconds:.1f} s: {', '.join(counts)}"]
        for outcome in self.elsewhere:
            lines.append(f"  RUNNING ELSEWHERE {outcome.job_id}: {outcome.error}")
        for outcome in self.diverged:
            lines.append(f"  DIVERGED {outcome.job_id}: {outcome.error} (left out of results; "
                         f"--rerun_done trains it again)")
        for outcome in self.stale:
            lines.append(f"  STALE {outcome.job_id}: {outcome.error} (--rerun_done trains it again; or use a new "
                         f"output folder)")
        for outcome in self.failed:
            lines.append(f"  FAILED {outcome.job_id}: {outcome.error} (see {RunDir(outcome.output_dir).err_file})")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- launchers


@dataclasses.dataclass
class LaunchContext:
    """What a launcher function receives besides the jobs."""

    n_workers: int | None
    slurm: SlurmOptions
    force: bool
    log_dir: Path
    progress: Any  # a tqdm bar (update(1) per finished job)


LauncherFn = Callable[[list[Job], LaunchContext], list[JobOutcome]]
LAUNCHERS: Registry[LauncherFn] = Registry("launcher")


def _failed(job: Job, message: str, seconds: float = 0.0) -> JobOutcome:
    return JobOutcome(job.job_id, str(job.output_dir), FAILED, seconds, message)


def _note(bar: Any, outcome: JobOutcome) -> None:
    bar.update(1)
    if outcome.status == FAILED:
        _say(bar, f"job {outcome.job_id} failed: {outcome.error}")


def _say(bar: Any, message: str) -> None:
    """Print a line to stderr above the progress bar."""
    bar.write(message, file=sys.stderr)


@LAUNCHERS.register("inprocess")
def launch_inprocess(jobs: list[Job], ctx: LaunchContext) -> list[JobOutcome]:
    """Sequential, in this process (debugging): output shown, the first exception propagates."""
    outcomes = []
    for job in jobs:
        outcomes.append(run_job(job.args, None, echo=True, force=ctx.force, reraise=True))
        ctx.progress.update(1)
    return outcomes


def visible_gpus(environ: Mapping[str, str], device_count: int) -> list[str]:
    """The GPUs a launcher may hand out, as DomainBed's `multi_gpu` launcher finds them: the entries of
    CUDA_VISIBLE_DEVICES when it is set (empty entries dropped: "0,1," is two GPUs), else "0" ..
    str(device_count - 1)."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [gpu.strip() for gpu in environ["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip()]
    return [str(i) for i in range(device_count)]


def gpu_of_worker(worker: int, gpus: Sequence[str]) -> str | None:
    """The GPU that pool worker `worker` (0-based) runs its jobs on: the GPUs in turn, so with as many
    workers as GPUs each has its own, and with more, several share one; None when there is no GPU."""
    return gpus[worker % len(gpus)] if gpus else None


def worker_environment(environ: Mapping[str, str], threads: int, gpu: str | None) -> dict[str, str]:
    """The environment of a pool worker: `threads` OpenMP/MKL/BLAS threads and, with a GPU, only that
    GPU visible (CUDA_VISIBLE_DEVICES)."""
    env = dict(environ) | {var: str(threads) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                          "OPENBLAS_NUM_THREADS")}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def node_gpus() -> list[str]:
    """This node's GPUs for the pool (`visible_gpus` of this process's environment and CUDA's count)."""
    import torch

    return visible_gpus(os.environ, torch.cuda.device_count() if torch.cuda.is_available() else 0)


class _PoolWorker:
    """One worker process of the `pool` launcher: a fresh interpreter (`python -c`, so the caller's
    `__main__` is never re-imported, unlike multiprocessing's spawn) that reads one JSON job request
    a line on stdin and answers one JSON `JobOutcome` a line on a private copy of its stdout. With
    `gpu`, the worker sees only that GPU."""

    def __init__(self, threads: int, gpu: str | None = None) -> None:
        import subprocess

        self.gpu = gpu
        env = worker_environment(os.environ, threads, gpu)
        code = "from domainbed_recycle.sweep.launchers import _worker_main; _worker_main()"
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(threads), str(os.getpid())],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        self.job: Job | None = None

    def send(self, job: Job, force: bool) -> bool:
        """Hand `job` to the worker; False if the worker is gone."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"args": job.args, "force": force}, default=str) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        self.job = job
        return True

    def receive(self) -> JobOutcome:
        """The outcome of the job in hand (a failure if the worker died during it)."""
        assert self.proc.stdout is not None and self.job is not None
        job, self.job = self.job, None
        line = self.proc.stdout.readline()
        if line:
            return JobOutcome(**json.loads(line))
        code = self.proc.wait()
        return _failed(job, f"its worker process died (exit status {code}: killed, out of memory or crashed)")

    def stop(self) -> None:
        """Close stdin (the worker exits after its current job) or kill it if it is busy."""
        with contextlib.suppress(OSError):
            if self.job is not None:
                self.proc.kill()
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=30)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (so no orphan keeps writing a run
    folder that a relaunch restarts); exit now if the parent is already gone."""
    import ctypes
    import signal

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _worker_main() -> None:
    """Entry point of a `pool` worker process (see `_PoolWorker`)."""
    threads, parent = int(sys.argv[1]), int(sys.argv[2])
    _die_with_parent(parent)
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stray output (C libraries, prints outside a job) must not corrupt the answers
    limit_threads(threads)
    try:
        for line in sys.stdin:
            request = json.loads(line)
            outcome = run_job(request["args"], threads, echo=False, force=request["force"])
            answers.write(json.dumps(dataclasses.asdict(outcome)) + "\n")
            answers.flush()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        os._exit(130)


@LAUNCHERS.register("pool")
def launch_pool(jobs: list[Job], ctx: LaunchContext) -> list[JobOutcome]:
    """A local pool of `n_workers` worker processes (default: one per GPU on a node with GPUs, else one
    per core), each with cores // n_workers torch threads and, with GPUs, its GPU (`gpu_of_worker`).
    Job output goes to the run folders only. A worker that dies (killed, out of memory) fails only the
    job it was running, and is replaced (on the same GPU)."""
    gpus = node_gpus()
    n_workers = min(ctx.n_workers or len(gpus) or available_cores(), len(jobs))
    return _run_pool(jobs, ctx, [gpu_of_worker(i, gpus) for i in range(n_workers)])


@LAUNCHERS.register("multi_gpu")
def launch_multi_gpu(jobs: list[Job], ctx: LaunchContext) -> list[JobOutcome]:
    """DomainBed's `multi_gpu` launcher: one job per GPU at a time, each worker seeing only its GPU
    (CUDA_VISIBLE_DEVICES); the GPUs are those CUDA_VISIBLE_DEVICES lists, else every visible one."""
    gpus = node_gpus()
    if not gpus:
        raise UserError("multi_gpu launcher: no GPU visible (CUDA_VISIBLE_DEVICES empty and no CUDA device); "
                        "use --command_launcher local on a CPU machine")
    return _run_pool(jobs, ctx, list(gpus[:len(jobs)]))


def _run_pool(jobs: list[Job], ctx: LaunchContext, worker_gpus: list[str | None]) -> list[JobOutcome]:
    """Run `jobs` on one worker process per entry of `worker_gpus` (the GPU it sees, or None)."""
    import selectors

    threads = threads_per_worker(len(worker_gpus))
    queue = list(reversed(jobs))
    outcomes: dict[str, JobOutcome] = {}
    idle = [_PoolWorker(threads, gpu) for gpu in worker_gpus]
    busy: list[_PoolWorker] = []
    selector = selectors.DefaultSelector()
    try:
        while queue or busy:
            while queue and idle:
                worker = idle.pop()
                job = queue.pop()
                if worker.send(job, ctx.force):
                    busy.append(worker)
                    selector.register(worker.proc.stdout, selectors.EVENT_READ, worker)  # type: ignore[arg-type]
                else:  # died before taking the job: replace it, and try the job again
                    worker.stop()
                    queue.append(job)
                    idle.append(_PoolWorker(threads, worker.gpu))
            for key, _ in selector.select():
                worker = key.data
                job = worker.job
                outcome = worker.receive()
                selector.unregister(key.fileobj)
                busy.remove(worker)
                if worker.proc.poll() is None:
                    idle.append(worker)
                else:  # it died with the job: replace it if jobs remain
                    worker.stop()
                    if queue:
                        idle.append(_PoolWorker(threads, worker.gpu))
                outcomes[job.job_id] = outcome
                _note(ctx.progress, outcome)
    finally:
        for worker in idle + busy:
            worker.stop()
        selector.close()
    return [outcomes[job.job_id] for job in jobs]


def _submitit_outcomes(jobs: list[Job], submitted: Any) -> list[JobOutcome]:
    """The outcomes a submitit job returned (one, or a list for a packed task), or failures if it
    died without returning them."""
    try:
        result = submitted.result()
        return result if isinstance(result, list) else [result]
    except Exception as error:  # submitit's FailedJobError / UncompletedJobError
        logs = getattr(getattr(submitted, "paths", None), "stderr", "?")
        if type(error).__name__ == "UncompletedJobError":  # cancelled, timed out, out of memory...
            state = getattr(submitted, "state", "UNKNOWN")
            message = f"job {submitted.job_id} ended {state} without a result"
        else:
            lines = str(error).strip().splitlines()
            message = lines[0] if lines else ""
        return [_failed(job, f"{type(error).__name__}: {message} (submitit log: {logs})") for job in jobs]


def _wait_submitit(pending: dict[Any, list[Job]], ctx: LaunchContext, poll_s: float,
                   outcomes: dict[str, JobOutcome], limit: int = 0) -> None:
    """Poll submitit jobs (each running a list of sweep jobs) until at most `limit` are still pending
    (0: all finished)."""
    while len(pending) > limit:
        finished = [sub for sub in pending if sub.done()]
        for sub in finished:
            for outcome in _submitit_outcomes(pending.pop(sub), sub):
                outcomes[outcome.job_id] = outcome
                _note(ctx.progress, outcome)
        if len(pending) > limit and not finished:
            time.sleep(poll_s)


def _cancel_all(submitted: Sequence[Any]) -> None:
    for sub in submitted:
        with contextlib.suppress(Exception):
            sub.cancel(check=False)


@LAUNCHERS.register("submitit_local")
def launch_submitit_local(jobs: list[Job], ctx: LaunchContext) -> list[JobOutcome]:
    """submitit's LocalExecutor: one subprocess per job, at most `n_workers` at a time (submitit
    alone would start every job at once); logs in `log_dir`."""
    import submitit

    n_workers = min(ctx.n_workers or available_cores(), len(jobs))
    threads = threads_per_worker(n_workers)
    executor = submitit.LocalExecutor(folder=str(ctx.log_dir / "%j"))
    executor.update_parameters(timeout_min=ctx.slurm.time_min)
    pending: dict[Any, Job] = {}
    outcomes: dict[str, JobOutcome] = {}
    try:
        for job in jobs:
            _wait_submitit(pending, ctx, 0.2, outcomes, limit=n_workers - 1)
            pending[executor.submit(ResumableJob(), job.args, threads, False, ctx.force)] = [job]
        _wait_submitit(pending, ctx, 0.2, outcomes)
    except BaseException:
        _cancel_all(list(pending))
        raise
    return [outcomes[job.job_id] for job in jobs]


@LAUNCHERS.register("slurm")
def launch_slurm(jobs: list[Job], ctx: LaunchContext) -> list[JobOutcome]:
    """One Slurm job array through submitit (`sbatch --array`, at most `array_parallelism` tasks at
    a time); each task runs one job with `cpus_per_task` threads, with this process's Python, or
    `runs_per_task` jobs side by side (`PackedJobs`: a pool over the task's GPUs and CPUs).

    A preempted or timed-out task is requeued by submitit and continues from its resume state
    (`ResumableJob`). The jobs keep running on the cluster if this process dies; a relaunch
    meanwhile skips the jobs they hold ("running elsewhere", through each run folder's lock).
    """
    import submitit

    opts = ctx.slurm
    executor = submitit.AutoExecutor(folder=str(ctx.log_dir / "%j"), cluster="slurm")
    executor.update_parameters(**opts.executor_parameters())
    size = int(opts.runs_per_task)
    groups = [jobs[start:start + size] for start in range(0, len(jobs), size)]
    n = len(groups)
    try:
        if size == 1:
            submitted = executor.map_array(ResumableJob(), [job.args for job in jobs], [opts.cpus_per_task] * n,
                                           [False] * n, [ctx.force] * n)
        else:
            submitted = executor.map_array(PackedJobs(), [[job.args for job in group] for group in groups],
                                           [ctx.force] * n)
    except Exception as error:  # sbatch refused (bad partition, memory above the node's, no slurmctld)
        message = str(error).strip().splitlines()
        raise UserError(f"Slurm refused the job array: {message[-1] if message else error}") from None
    _say(ctx.progress, f"submitted Slurm job array {submitted[0].job_id.split('_')[0]} ({n} tasks"
                       + (f" of up to {size} jobs" if size > 1 else "") + f"); logs in {ctx.log_dir}")
    pending = dict(zip(submitted, groups, strict=True))
    outcomes: dict[str, JobOutcome] = {}
    try:
        _wait_submitit(pending, ctx, opts.poll_s, outcomes)
    except KeyboardInterrupt:
        _say(ctx.progress, "interrupted: cancelling the Slurm jobs still pending")
        _cancel_all(list(pending))
        raise
    return [outcomes[job.job_id] for job in jobs]


class PackedJobs:
    """Several sweep jobs in one Slurm array task: a `pool` of one worker per job, over the task's GPUs
    (`gpu_of_worker` of its CUDA_VISIBLE_DEVICES) and its CPUs (cores // jobs threads each).

    Checkpointable as `ResumableJob`: on preemption or time-out, the run folders' locks held by the
    task's workers are released and the whole group is requeued; each job continues from its resume
    state, a finished one is skipped.
    """

    def __call__(self, args_list: list[dict[str, Any]], force: bool = False) -> list[JobOutcome]:
        from tqdm import tqdm

        jobs = [Job(args, Path(args["output_dir"]).parent) for args in args_list]
        with tqdm(disable=True) as bar:
            ctx = LaunchContext(len(jobs), SlurmOptions(), force, default_log_dir(jobs), bar)
            return launch_pool(jobs, ctx)

    def checkpoint(self, args_list: list[dict[str, Any]], force: bool = False) -> Any:
        import submitit

        for args in args_list:
            release_if_mine(RunDir(args["output_dir"]).lock_file, children=True)
        return submitit.helpers.DelayedSubmission(PackedJobs(), args_list, False)


# --------------------------------------------------------------------------------------- API


def default_log_dir(jobs: Sequence[Job]) -> Path:
    """Where submitit keeps its pickles and logs: `.submitit` inside the first job's sweep folder."""
    return jobs[0].output_dir.parent / ".submitit"


def launch(
    jobs: Sequence[Job],
    launcher: str = "pool",
    n_workers: int | None = None,
    slurm: SlurmOptions | None = None,
    skip_done: bool = True,
    *,
    log_dir: str | Path | None = None,
    progress: bool = True,
) -> LaunchReport:
    """Run `jobs` with the named launcher and report what happened to each.

    Args:
        launcher: "pool" (default; local processes), "inprocess" (sequential, exceptions propagate),
            "submitit_local" or "slurm" (a submitit job array; see `SlurmOptions`).
        n_workers: parallel processes for "pool" and "submitit_local" (default: one per core);
            each gets cores // n_workers torch threads.
        slurm: resources for "slurm" (its `time_min` is also submitit_local's timeout).
        skip_done: jobs already done are reported "skipped" (or "stale" when they ran with other
            hyper-parameters than their arguments resolve to now), and jobs that diverged before
            "diverged", without being sent to a worker; with False all are wiped and trained again.
            Incomplete jobs continue from their resume state if they have one, else start afresh.
        log_dir: submitit's folder (default `<sweep folder>/.submitit`).
        progress: show a tqdm bar over jobs (stderr).
    Failed jobs do not stop the others (except with "inprocess"): check `report.ok` / `report.failed`.
    """
    from tqdm import tqdm

    launch_fn = LAUNCHERS.get(launcher)
    if n_workers is not None:  # each pool worker is a process importing torch: bounded
        check(n_workers, Annotated[int, Bounds(1, limit="workers")], "n_workers")
    start = time.time()
    jobs = list(jobs)
    outcomes: dict[str, JobOutcome] = {}
    to_run: dict[str, Job] = {}  # a job listed twice runs once
    for job in jobs:
        state = job_state(job) if skip_done else None
        changed = changed_hparams(job) if state == DONE else []
        if changed:
            outcomes[job.job_id] = JobOutcome(
                job.job_id, str(job.output_dir), STALE, 0.0,
                f"done with other values of {', '.join(changed)} than its arguments resolve to now "
                f"(the hyper-parameter registry changed since it ran)")
        elif state == DONE:
            outcomes[job.job_id] = JobOutcome(job.job_id, str(job.output_dir), SKIPPED)
        elif state == DIVERGED:
            outcomes[job.job_id] = JobOutcome(job.job_id, str(job.output_dir), DIVERGED_OUTCOME, 0.0,
                                              job.run.describe_divergence())
        else:
            to_run.setdefault(job.job_id, job)
    if to_run:
        with tqdm(total=len(to_run), desc=f"jobs ({launcher})", unit="job", file=sys.stderr,
                  disable=not progress, dynamic_ncols=True) as bar:
            ctx = LaunchContext(n_workers, slurm or SlurmOptions(), not skip_done,
                                Path(log_dir) if log_dir else default_log_dir(list(to_run.values())), bar)
            for outcome in launch_fn(list(to_run.values()), ctx):
                outcomes[outcome.job_id] = outcome
    return LaunchReport(launcher, [outcomes[job.job_id] for job in jobs], time.time() - start)
