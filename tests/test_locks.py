"""Locks: a run folder is trained by one process at a time, a second launch skips it ("running
elsewhere"), a dead process's lock on this host is taken over, another host's lock is respected
(and reported when old), and a second `recycle` of one output folder is refused with one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_NET

from domainbed_recycle import cli
from domainbed_recycle.locks import FOLDER_LOCK, Lock, LockHeld, folder_lock
from domainbed_recycle.rundir import MADE_BY
from domainbed_recycle.sweep import make_jobs, run_job

ROOT = Path(__file__).resolve().parents[1]


def _job(tmp_path):
    (job,) = make_jobs(["ColoredDigits"], ["ERM"], [[0]], 1, 1, 3, None, tmp_path, checkpoint_freq=3,
                       hparams=TINY_NET)
    return job


def _holder_process(lock_path: Path) -> subprocess.Popen:
    """Another process holding `lock_path` until killed (prints 'held' once it holds it)."""
    code = ("import sys, time; from domainbed_recycle.locks import Lock; "
            "lock = Lock(sys.argv[1], 'x'); lock.acquire(); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock_path)], stdout=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_job_another_process_runs_is_skipped_then_taken_over_once_that_process_died(tmp_path):
    job = _job(tmp_path)
    job.run.create()
    other = _holder_process(job.run.lock_file)
    try:
        outcome = run_job(job.args, threads=1, echo=False)
        assert outcome.status == "running_elsewhere" and f"pid {other.pid}" in outcome.error
        assert sorted(os.listdir(job.run.path)) == [MADE_BY, "lock"]  # nothing trained, nothing reset
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    assert job.run.lock_file.exists()  # left behind by the SIGKILL: stale, on this host
    assert run_job(job.args, threads=1, echo=False).status == "done"
    assert job.run.is_done and not job.run.lock_file.exists()


def test_a_lock_from_another_host_is_respected_and_reported_when_old(tmp_path, monkeypatch):
    path = tmp_path / "lock"
    holder = {"host": socket.gethostname() + "-elsewhere", "pid": 1, "started": time.time() - 3 * 3600}
    path.write_text(json.dumps(holder))
    with pytest.raises(LockHeld) as fresh:
        Lock(path, "run folder R").acquire()
    assert "delete" not in str(fresh.value)
    monkeypatch.setenv("DRECYCLE_LOCK_MAX_AGE_H", "2")
    with pytest.raises(LockHeld, match=r"run folder R is in use by host .*-elsewhere pid 1 .*3 h old.*delete"):
        Lock(path, "run folder R").acquire()
    assert json.loads(path.read_text()) == holder  # never stolen


def test_a_file_named_lock_that_is_not_ours_is_never_deleted(tmp_path):
    path = tmp_path / "lock"
    path.write_text("my notes")
    os.utime(path, (0, 0))
    with pytest.raises(LockHeld):
        Lock(path, "x").acquire()
    assert path.read_text() == "my notes"


def test_a_second_recycle_of_one_output_folder_is_refused_naming_the_first(tmp_path, capsys):
    from domainbed_recycle.recycle.stages import claim_output_dir

    out = tmp_path / "recycle"
    claim_output_dir(out)  # as the first recycle does before it locks the folder
    with folder_lock(out, "first"):
        code = cli.main(["recycle", str(ROOT / "sweeps" / "recycle_tiny.toml"),
                         "--output_dir", str(out)])
        lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert f"pid {os.getpid()}" in lines[0] and str(out) in lines[0]
    assert not (out / FOLDER_LOCK).exists()


def test_a_second_launch_skips_the_job_another_process_trains_and_runs_the_rest(tmp_path):
    from domainbed_recycle.sweep import launch

    jobs = make_jobs(["ColoredDigits"], ["ERM"], [[0], [1]], 1, 1, 2, None, tmp_path, checkpoint_freq=2,
                     hparams=TINY_NET)
    busy, free = jobs
    busy.run.create()
    other = _holder_process(busy.run.lock_file)
    try:
        report = launch(jobs, launcher="inprocess", progress=False)
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    assert [o.status for o in report.outcomes] == ["running_elsewhere", "done"] and report.ok
    assert "1 running elsewhere" in report.summary() and f"pid {other.pid}" in report.summary()
    assert sorted(os.listdir(busy.run.path)) == [MADE_BY, "lock"] and free.run.is_done
