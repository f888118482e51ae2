"""Launchers: thread allotment, options, reports, run_job's folder handling, and submitit_local
with real training runs."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_NET

from domainbed_recycle import sweep
from domainbed_recycle.errors import UserError
from domainbed_recycle.rundir import RunDir
from domainbed_recycle.sweep import launchers, make_jobs
from domainbed_recycle.sweep.launchers import JobOutcome, LaunchReport, SlurmOptions, launch, run_job


def test_threads_per_worker_never_oversubscribes():
    assert launchers.threads_per_worker(1, cores=2) == 2
    assert launchers.threads_per_worker(2, cores=2) == 1
    assert launchers.threads_per_worker(3, cores=2) == 1
    assert launchers.threads_per_worker(2, cores=16) == 8
    assert launchers.available_cores() >= 1


def test_registry_and_options():
    assert {"inprocess", "pool", "submitit_local", "slurm"} <= set(launchers.LAUNCHERS.names())
    with pytest.raises(UserError, match="unknown launcher 'nope'"):
        launch([], "nope")
    assert SlurmOptions.from_dict({"partition": "gpu", "mem_gb": None}) == SlurmOptions(partition="gpu")
    with pytest.raises(UserError, match="unknown Slurm option.*queue"):
        SlurmOptions.from_dict({"queue": "x"})


def test_report_summary_points_at_err_txt():
    report = LaunchReport("pool", [JobOutcome("a", "/s/a", "done"), JobOutcome("b", "/s/b", "skipped"),
                                   JobOutcome("c", "/s/c", "failed", error="ValueError: x")], 3.0)
    assert not report.ok and report.n_ran == 1 and report.n_skipped == 1
    assert "1 ran, 1 already done, 1 failed" in report.summary() and "/s/c/err.txt" in report.summary()


def test_run_job_wipes_a_half_written_folder_and_skips_done(tmp_path):
    (job,) = make_jobs(["ColoredDigits"], ["ERM"], [[0]], 1, 1, 10, None, tmp_path, checkpoint_freq=10,
                       hparams=TINY_NET)
    job.run.create()  # a killed attempt of the harness (its marker is written first)
    (job.output_dir / RunDir.RESULTS).write_text('{"step": 10, "stale": true}\n')
    (job.output_dir / RunDir.OUT).write_text("old attempt\n")
    outcome = run_job(job.args, echo=False)
    assert outcome.status == "done" and sweep.job_state(job) == "done"
    records = [json.loads(line) for line in (job.output_dir / RunDir.RESULTS).read_text().splitlines()]
    assert [r["step"] for r in records] == [10] and "stale" not in records[0]
    assert "old attempt" not in (job.output_dir / RunDir.OUT).read_text()
    assert run_job(job.args).status == "skipped"
    assert launch([job, job], "inprocess", progress=False).n_skipped == 2


@pytest.mark.slow
def test_submitit_local_runs_real_jobs(tmp_path):
    jobs = make_jobs(["ColoredDigits"], ["ERM"], [[0], [1]], 1, 1, 10, None, tmp_path / "sweep",
                     checkpoint_freq=10, hparams=TINY_NET)
    report = launch(jobs, "submitit_local", n_workers=2, slurm=SlurmOptions(time_min=10), progress=False)
    assert report.ok and report.n_ran == 2, report.summary()
    for job in jobs:
        assert sweep.job_state(job) == "done"
        record = json.loads((job.output_dir / RunDir.RESULTS).read_text().splitlines()[-1])
        assert record["step"] == 10 and record["threads"] == launchers.threads_per_worker(2)
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))


def test_a_pool_worker_that_dies_fails_only_its_job(tmp_path):
    (job,) = make_jobs(["ColoredDigits"], ["ERM"], [[0]], 1, 1, 100000, None, tmp_path, hparams=TINY_NET)
    worker = launchers._PoolWorker(threads=1)
    assert worker.send(job, force=False)
    worker.proc.kill()
    outcome = worker.receive()
    assert outcome.status == "failed" and "worker process died" in outcome.error
    worker.stop()
