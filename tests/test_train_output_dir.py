"""`drecycle train --output_dir DIR` never loses a user's files and never shows a stale run:
only the harness's own files are deleted, a folder holding anything else is refused, a finished run
is shown again only for the same arguments, and a training length that cannot run is one clear line.
Every run here is tiny (3 steps)."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_NET

from domainbed_recycle import cli
from domainbed_recycle.errors import UserError
from domainbed_recycle.rundir import RunDir
from domainbed_recycle.sweep import make_jobs, run_job

TINY = ["--dataset", "ColoredDigits", "--test_envs", "0", "--steps", "3", "--checkpoint_freq", "3",
        "--hparams", json.dumps(TINY_NET), "--no_progress", "--threads", "1"]


def _train(out, *extra):
    return cli.main(["train", *TINY, "--output_dir", str(out), *extra])


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def _tree(path):
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in path.rglob("*")}


def test_a_folder_that_is_not_a_run_is_refused_and_kept_whole(tmp_path, capsys):
    # `--output_dir .` inside a git repository once removed .git/, src/ and the user's notes.
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / "notes.txt").write_text("my notes")
    (repo / "results.jsonl").write_text("{}\n")  # even next to a harness file name
    before = _tree(repo)
    assert _train(repo) == 2
    line = _one_error_line(capsys)
    assert str(repo) in line and "did not write" in line
    assert _tree(repo) == before


def test_a_killed_attempt_is_reset_then_trained(tmp_path, capsys):
    run = RunDir(tmp_path / "run").create()
    run.results_file.write_text('{"step": 999, "stale": true}\n{"trunc')
    run.best_checkpoint.write_text("half a checkpoint")
    assert _train(run.path) == 0
    assert [r["step"] for r in run.read_records()] == [3] and run.is_done
    assert "stale" not in run.results_file.read_text()


def test_same_arguments_show_the_finished_run_different_ones_are_refused(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    assert _train(run.path) == 0
    first = capsys.readouterr().out
    before = _tree(run.path)

    assert _train(run.path, "--threads", "2") == 0  # threads do not change the result
    out = capsys.readouterr().out
    assert "already done" in out and str(run.path) in out
    assert out.splitlines()[-4:] == first.splitlines()[-4:]  # the same table and step line
    assert _tree(run.path) == before

    assert cli.main(["train", *TINY[2:], "--dataset", "RotatedDigits", "--output_dir", str(run.path)]) == 2
    line = _one_error_line(capsys)
    assert str(run.path) in line and "--output_dir" in line
    assert "dataset='ColoredDigits' there, 'RotatedDigits' now" in line
    assert _train(run.path, "--seed", "1") == 2
    assert "seed=0 there, 1 now" in _one_error_line(capsys)
    assert _tree(run.path) == before


def test_negative_steps_are_one_clear_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--output_dir", str(out), "--steps", "-5"]) == 2
    assert "steps must be an integer >= 1 and <= 10,000,000" in _one_error_line(capsys)
    assert not out.exists()
    assert _train(out, "--steps", "0") == 2  # refused like -5 (it once wrote `done` after no step)
    assert "steps must be an integer >= 1" in _one_error_line(capsys)
    assert not out.exists()
    assert _train(out, "--checkpoint_freq", "0") == 2
    assert "checkpoint_freq must be an integer >= 1" in _one_error_line(capsys)
    assert not out.exists()
    assert _train(out, "--threads", "-1") == 2
    assert "threads must be an integer >= 1 and <= 1,024 (set DRECYCLE_MAX_THREADS" in _one_error_line(capsys)
    assert not out.exists()


def test_the_launcher_refuses_a_folder_holding_foreign_files(tmp_path):
    (job,) = make_jobs(["ColoredDigits"], ["ERM"], [[0]], 1, 1, 3, None, tmp_path, checkpoint_freq=3,
                       hparams=TINY_NET)
    job.output_dir.mkdir()
    (job.output_dir / "mine.txt").write_text("keep me")
    outcome = run_job(job.args, echo=False)
    assert outcome.status == "failed" and "did not write ('mine.txt'" in outcome.error
    assert [p.name for p in job.output_dir.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("key, value, rule", [
    ("holdout_fraction", 0, "a finite number > 0 and < 1"), ("holdout_fraction", 1.5, "a finite number > 0 and < 1"),
    ("steps", -1, "an integer >= 1"), ("checkpoint_freq", 0, "an integer >= 1"),
])
def test_holdout_fraction_steps_and_checkpoint_freq_have_one_rule_for_runs_sweep_and_recycle_specs(
        tmp_path, capsys, key, value, rule):
    """One validator (`validation`, from the fields' types) for a run, a sweep spec and a recycle spec's
    [target] (whose run settings `strategies.base.TargetRunSettings` declares once): the same rule in each,
    and the train command refuses it in one line, exit 2, nothing written."""
    from pathlib import Path

    from domainbed_recycle.recycle.spec import load_recycle_spec
    from domainbed_recycle.sweep.spec import spec_from_dict

    assert _train(tmp_path / "run", f"--{key}", str(value)) == 2
    assert f"{key} must be {rule}" in _one_error_line(capsys) and not (tmp_path / "run").exists()
    with pytest.raises(UserError, match=f"'{key}' must be {rule}"):
        spec_from_dict({"datasets": ["ColoredDigits"], key: value})
    paper = Path(__file__).resolve().parents[1] / "sweeps" / "recycle_paper.toml"
    with pytest.raises(UserError, match=rf"\[target\]: '{key}' must be {rule}"):
        load_recycle_spec(paper, {"output_dir": str(tmp_path / "r")}, [f"target.{key}={value}"])
