"""A run whose loss or weights stop being finite ends as `diverged`: its own state (marker with step
and reason, no `done`), one line and a non-zero exit from `drecycle train`, its own outcome and
column in sweeps (kept on relaunch unless forced), and averaging/LMC refuse its weights. Tiny runs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_NET

from domainbed_recycle import cli
from domainbed_recycle.averaging import check_finite, first_nonfinite
from domainbed_recycle.errors import UserError
from domainbed_recycle.lmc import lmc_curve
from domainbed_recycle.rundir import RunDir
from domainbed_recycle.sweep import DIVERGED, format_status, launch, make_jobs, run_job, status

BLOW_UP = {"lr": 1e6, "optimizer": "sgd", "cnn_width": 8}
TINY = ["--dataset", "ColoredDigits", "--test_envs", "0", "--steps", "5", "--checkpoint_freq", "5",
        "--no_progress", "--threads", "1"]


def test_a_huge_learning_rate_ends_the_run_as_diverged_with_one_line(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    argv = ["train", *TINY, "--hparams", json.dumps(BLOW_UP), "--output_dir", str(run.path)]
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "diverged at step" in lines[0] and str(run.path) in lines[0], lines
    assert run.state == "diverged" and not run.is_done and not run.done_file.exists()
    info = run.diverged_info()
    assert 1 <= info["step"] <= 5 and ("nan" in info["reason"] or "inf" in info["reason"])
    # Asked again: still diverged, one line, nothing retrained or deleted.
    before = run.diverged_file.read_bytes()
    assert cli.main(argv) == 2
    assert "already diverged" in capsys.readouterr().err
    assert run.diverged_file.read_bytes() == before


def test_a_sweep_reports_diverged_jobs_and_keeps_them_diverged_unless_forced(tmp_path):
    jobs = make_jobs(["ColoredDigits"], ["ERM"], [[0]], 1, 1, 4, None, tmp_path, checkpoint_freq=4,
                     hparams=BLOW_UP)
    (job,) = jobs
    assert run_job(job.args, threads=1, echo=False).status == "diverged"
    assert job.run.state == DIVERGED
    assert "diverged" in format_status(status(jobs)).splitlines()[0]
    assert format_status(status(jobs)).splitlines()[-1].split()[1:3] == ["0", "1"]  # done 0, diverged 1
    marker = job.run.diverged_file.stat().st_mtime_ns
    report = launch(jobs, launcher="inprocess", progress=False)
    assert report.outcomes[0].status == "diverged" and report.ok and "1 diverged" in report.summary()
    assert job.run.diverged_file.stat().st_mtime_ns == marker  # not retrained
    forced = run_job(job.args, threads=1, echo=False, force=True)
    assert forced.status == "diverged" and job.run.diverged_info()["step"] >= 1


def test_averaging_and_lmc_refuse_non_finite_members_by_name():
    good = {"w": torch.ones(2), "n": torch.tensor(3)}
    bad = {"w": torch.tensor([1.0, float("nan")]), "n": torch.tensor(3)}
    assert first_nonfinite(good) is None and first_nonfinite(bad) == "w"
    assert check_finite(good, "run A") is good
    with pytest.raises(UserError, match="run B: its weights are not finite \\('w'"):
        check_finite(bad, "run B")
    with pytest.raises(UserError, match="model b"):
        lmc_curve(good, bad, lambda state: 1.0)


def test_the_collector_skips_diverged_runs_with_one_warning(tmp_path):
    from domainbed_recycle.collect import load_records

    jobs = make_jobs(["ColoredDigits"], ["ERM"], [[0]], 1, 1, 2, None, tmp_path, checkpoint_freq=1,
                     hparams=TINY_NET)
    assert run_job(jobs[0].args, threads=1, echo=False).status == "done"
    bad = RunDir(tmp_path / "bad").create()
    bad.results_file.write_text(jobs[0].run.results_file.read_text())  # records that look valid
    bad.mark_diverged(2, "loss = nan")
    frame, report = load_records(tmp_path)
    assert set(frame["run_dir"]) == {jobs[0].job_id} and len(frame) == 2
    warning = report.warning()
    assert warning is not None and "diverged" in warning and str(bad.results_file) in warning
    # a folder holding both markers is done, as RunDir.state decides
    bad.mark_done()
    assert RunDir(bad.path).state == "done"
    frame, report = load_records(tmp_path)
    assert set(frame["run_dir"]) == {jobs[0].job_id, "bad"} and report.warning() is None
