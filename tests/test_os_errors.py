"""File-system failures are one line naming the path, in `drecycle train` and in launchers; a
preempted Slurm/submitit job is requeued to continue (not restart) its run. Tiny runs."""

from __future__ import annotations

import json

import submitit
from conftest import TINY_NET

from domainbed_recycle import cli
from domainbed_recycle.errors import os_error_line
from domainbed_recycle.locks import Lock
from domainbed_recycle.sweep import make_jobs, run_job
from domainbed_recycle.sweep.launchers import ResumableJob

TINY = ["--dataset", "ColoredDigits", "--test_envs", "0", "--steps", "2", "--checkpoint_freq", "2",
        "--hparams", json.dumps(TINY_NET), "--no_progress", "--threads", "1"]


def test_an_output_dir_under_a_file_is_one_line_naming_it(tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    assert cli.main(["train", *TINY, "--output_dir", str(blocker / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(blocker) in lines[0] and "Not a directory" in lines[0], lines
    assert blocker.read_text() == "mine"


def test_a_launcher_job_that_cannot_write_names_the_path(tmp_path):
    blocker = tmp_path / "sweep"
    blocker.write_text("mine")
    (job,) = make_jobs(["ColoredDigits"], ["ERM"], [[0]], 1, 1, 2, None, blocker, checkpoint_freq=2,
                       hparams=TINY_NET)
    outcome = run_job(job.args, threads=1, echo=False)
    assert outcome.status == "failed" and str(blocker) in outcome.error and "Not a directory" in outcome.error
    assert "\n" not in outcome.error and blocker.read_text() == "mine"


def test_os_error_line_names_the_path_even_when_the_error_does_not():
    assert os_error_line(OSError(28, "No space left on device"), "/runs/a") == "/runs/a: No space left on device"
    assert os_error_line(PermissionError(13, "Permission denied", "/x/f")) == "/x/f: Permission denied"


def test_a_requeued_job_continues_without_force_and_frees_its_run_folder(tmp_path):
    (job,) = make_jobs(["ColoredDigits"], ["ERM"], [[0]], 1, 1, 2, None, tmp_path, checkpoint_freq=2,
                       hparams=TINY_NET)
    job.run.create()
    lock = Lock(job.run.lock_file, "run")
    lock.acquire()  # as the preempted attempt holds it when submitit calls `checkpoint`
    delayed = ResumableJob().checkpoint(job.args, 1, False, True)
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.args == (job.args, 1, False, False) and not job.run.lock_file.exists()
    assert delayed.function(*delayed.args).status == "done" and job.run.is_done
