"""Sweeps: job ids, DomainBed's job list, states, spec validation, and real launches (pool, resume
after SIGKILL, failures that do not stop the others)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_NET

from domainbed_recycle import cli, sweep
from domainbed_recycle.errors import UserError
from domainbed_recycle.misc import seed_hash
from domainbed_recycle.rundir import RunDir
from domainbed_recycle.sweep import Job, jobs_from_configs, make_jobs
from domainbed_recycle.sweep.launchers import JobOutcome, LaunchReport, launch, threads_per_worker

REPO = Path(__file__).resolve().parents[1]


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / RunDir.RESULTS).read_text().splitlines()]


# ------------------------------------------------------------------------------------ job lists


def test_job_ids_are_stable_and_ignore_where_and_how_a_job_runs(tmp_path):
    jobs = make_jobs(["ColoredDigits"], ["ERM"], None, 1, 1, 20, None, tmp_path, checkpoint_freq=10)
    # Pinned: a change here renames every run folder, so old sweeps would be re-run. (The same arguments
    # named the dataset ColoredMNIST, id 0ea16ff5328584ef2a8c494839e89a23, before the built-in was renamed.)
    assert jobs[0].job_id == "8da65e75811ed388924ac21f5256bf94"
    assert jobs[0].args["test_envs"] == [0] and jobs[0].output_dir == tmp_path / jobs[0].job_id
    same = Job(jobs[0].args | {"output_dir": "/elsewhere", "threads": 3, "progress": False, "init": None},
               tmp_path / "other")
    assert same.job_id == jobs[0].job_id and same.output_dir == tmp_path / "other" / same.job_id
    assert "threads" not in same.args and "init" not in same.args
    changed = Job(jobs[0].args | {"steps": 21}, tmp_path)
    assert changed.job_id != jobs[0].job_id


def test_overrides_go_to_the_algorithms_that_declare_them_and_ids_stay(tmp_path):
    # Every override applies to every algorithm: the ids are those of the commit before the rule (with the
    # dataset then named ColoredMNIST: 00a8d36c..., 7989d9b5..., bb10b3d8..., f145b69e...).
    jobs = make_jobs(["ColoredDigits"], ["ERM", "CORAL"], [[0]], 2, 1, 20, None, tmp_path,
                     hparams=TINY_NET | {"lr": 0.01}, checkpoint_freq=10)
    assert [j.job_id for j in jobs] == ["b372c78e0ae5ccdf7b5d7abea89d44c2", "a0ff741490b85fd4b5d84454e6043b24",
                                        "78d7e8e5385fabf0e82ccff81549f513", "f262c284fa12800dacd51f86f819c79b"]
    # mmd_gamma is CORAL's only: ERM jobs do not get it (they used to, and failed in their workers).
    jobs = make_jobs(["ColoredDigits"], ["ERM", "CORAL"], [[0]], 1, 1, 20, None, tmp_path,
                     hparams=TINY_NET | {"mmd_gamma": 2})
    assert {j.args["algorithm"]: j.args["hparams"] for j in jobs} == {
        "ERM": TINY_NET, "CORAL": TINY_NET | {"mmd_gamma": 2}}
    with pytest.raises(UserError, match="unknown hyper-parameter.*mmd_gamma for ERM, MovingAverage"):
        make_jobs(["ColoredDigits"], ["ERM", "MovingAverage"], [[0]], 1, 1, 20, None, tmp_path,
                  hparams={"mmd_gamma": 2})
    with pytest.raises(UserError, match="'batch_size' must be an integer >= 1 and <= 16,384 .*, got 2.5"):
        make_jobs(["ColoredDigits"], ["ERM"], [[0]], 1, 1, 20, None, tmp_path, hparams={"batch_size": 2.5})


def test_make_jobs_follows_domainbed(tmp_path):
    jobs = make_jobs(["ColoredDigits", "RotatedDigits"], ["ERM", "CORAL"], None, n_hparams=5, n_trials=2,
                     steps=5, data_dir=None, output_dir=tmp_path, n_hparams_from=3)  # range(3, 5), as DomainBed
    colored = [j for j in jobs if j.args["dataset"] == "ColoredDigits"]
    rotated = [j for j in jobs if j.args["dataset"] == "RotatedDigits"]
    # 3 domains: 3 singles + 3 pairs; 6 domains: 6 + 15; x 2 algorithms x 2 hparams x 2 trials.
    assert len(colored) == 6 * 8 and len(rotated) == 21 * 8
    assert len({j.job_id for j in jobs}) == len(jobs)
    combos = [j.args["test_envs"] for j in colored if j.args["algorithm"] == "ERM"
              and j.args["hparams_seed"] == 3 and j.args["trial_seed"] == 0]
    assert combos == [[0], [0, 1], [0, 2], [1], [1, 2], [2]]
    assert {j.args["hparams_seed"] for j in jobs} == {3, 4}
    assert {j.args["trial_seed"] for j in jobs} == {0, 1}
    for job in jobs[:10]:
        a = job.args
        assert a["seed"] == seed_hash(a["dataset"], a["algorithm"], a["test_envs"], a["hparams_seed"],
                                      a["trial_seed"])
    singles = make_jobs(["ColoredDigits"], ["ERM"], None, 1, 1, 5, None, tmp_path, single_test_envs=True)
    assert [j.args["test_envs"] for j in singles] == [[0], [1], [2]]
    assert sweep.test_env_combinations(0, candidates=[2, 0]) == [[0], [0, 2], [2]]


def test_make_jobs_rejects_a_test_domain_the_dataset_lacks(tmp_path):
    with pytest.raises(UserError, match="test env 3 out of range: ColoredDigits has 3 domains"):
        make_jobs(["ColoredDigits"], ["ERM"], [[0], [3]], 1, 1, 5, None, tmp_path)


def test_jobs_from_configs_keeps_extra_keys_dedups_and_rejects_unknown_keys(tmp_path):
    config = {"dataset": "ColoredDigits", "init_featurizer": "/a.safetensors", "linear_probe": True,
              "init_label": "aux:Glyphs", "output_dir": "ignored"}
    jobs = jobs_from_configs([config, dict(config), config | {"init_label": "aux:Textures"}], tmp_path)
    assert len(jobs) == 2 and jobs[0].args["init_featurizer"] == "/a.safetensors"
    assert jobs[0].output_dir.parent == tmp_path
    with pytest.raises(UserError, match="unknown key.*init_featurzer"):
        jobs_from_configs([{"dataset": "ColoredDigits", "init_featurzer": "x"}], tmp_path)


def test_status_and_delete_incomplete(tmp_path):
    jobs = make_jobs(["ColoredDigits"], ["ERM"], None, 1, 1, 5, None, tmp_path)  # 6 jobs
    jobs[0].run.create()
    (jobs[0].output_dir / RunDir.DONE).write_text("done\n")
    for job in jobs[1:3]:
        job.run.create()
        (job.output_dir / RunDir.RESULTS).write_text("{}\n")
    counts = sweep.status(jobs)[("ColoredDigits", "ERM")]
    assert (counts["done"], counts["incomplete"], counts["not_launched"]) == (1, 2, 3)
    table = sweep.format_status(sweep.status(jobs))
    assert "ColoredDigits" in table and "not launched" in table
    (jobs[2].output_dir / "notes.txt").write_text("mine")  # not the harness's: nothing is deleted
    with pytest.raises(UserError, match="did not write \\('notes.txt'"):
        sweep.delete_incomplete(jobs)
    assert all(job.output_dir.exists() for job in jobs[:3])
    (jobs[2].output_dir / "notes.txt").unlink()
    assert sweep.delete_incomplete(jobs) == jobs[1:3]
    assert [sweep.job_state(j) for j in jobs[:3]] == ["done", "not_launched", "not_launched"]


# ------------------------------------------------------------------------------------ spec and CLI


def test_builtin_spec_is_valid():
    spec = sweep.load_spec(REPO / "sweeps" / "builtin_erm.toml", {"output_dir": "/tmp/x", "steps": 7})
    jobs = spec.jobs()
    assert len(jobs) == 3 + 6 + 5 and {j.args["steps"] for j in jobs} == {7}
    assert spec.slurm["partition"] == "debug"


def test_spec_test_envs_forms(tmp_path):
    base = {"datasets": ["ColoredDigits"], "algorithms": ["ERM"], "n_hparams": 1, "n_trials": 1,
            "output_dir": str(tmp_path)}
    def test_envs(value):
        return [j.args["test_envs"] for j in sweep.spec_from_dict(base | {"test_envs": value}).jobs()]

    assert test_envs([0, 2]) == [[0], [0, 2], [2]]
    assert test_envs([[1, 2]]) == [[1, 2]]
    with pytest.raises(UserError, match="'test_envs' must be"):
        sweep.spec_from_dict(base | {"test_envs": "0"})


def test_bad_spec_key_exits_2_with_one_line(tmp_path, capsys):
    spec = tmp_path / "bad.toml"
    spec.write_text('datasets = ["ColoredDigits", "NoSuchData"]\nbogus_key = 1\n')
    assert cli.main(["sweep", "status", "--spec", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key(s) bogus_key" in err
    spec.write_text('datasets = ["ColoredDigits", "NoSuchData"]\nalgorithms = ["ERM", "Nope"]\n')
    with pytest.raises(UserError, match="unknown dataset.*NoSuchData.*unknown algorithm.*Nope"):
        sweep.load_spec(spec, {"output_dir": str(tmp_path)})


def _sweep_argv(action, out, *extra):
    return ["sweep", action, "--datasets", "ColoredDigits", "--algorithms", "ERM", "--n_hparams", "1", "--n_trials",
            "1", "--test_envs", "0", "1", "--single_test_envs",
            "--steps", "20", "--checkpoint_freq", "10", "--hparams", json.dumps(TINY_NET),
            "--output_dir", str(out), *extra]


def test_launch_without_confirmation_on_closed_stdin_is_refused(tmp_path, monkeypatch, capsys):
    def closed(prompt=""):
        raise EOFError

    monkeypatch.setattr("builtins.input", closed)
    assert cli.main(_sweep_argv("launch", tmp_path)) == 2
    assert "--skip_confirmation" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_dry_run_lists_jobs_and_runs_nothing(tmp_path, capsys):
    assert cli.main(_sweep_argv("launch", tmp_path, "--dry_run")) == 0
    out = capsys.readouterr().out
    assert out.count("not_launched") == 2 and "2 jobs" in out and not any(tmp_path.iterdir())


def test_cli_exit_status_is_1_when_a_job_failed(tmp_path, monkeypatch, capsys):
    def fake_launch(jobs, **kwargs):
        outcomes = [JobOutcome(j.job_id, str(j.output_dir), "done") for j in jobs]
        outcomes[0].status, outcomes[0].error = "failed", "ValueError: boom"
        return LaunchReport("pool", outcomes)

    monkeypatch.setattr("domainbed_recycle.sweep.launchers.launch", fake_launch)
    assert cli.main(_sweep_argv("launch", tmp_path, "--skip_confirmation")) == 1
    assert "1 failed" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ real launches


def test_inprocess_launcher_lets_exceptions_propagate(tmp_path):
    bad = jobs_from_configs([{"dataset": "ColoredDigits", "test_envs": [7], "steps": 5}], tmp_path)
    with pytest.raises(UserError, match="out of range"):
        launch(bad, "inprocess", progress=False)
    assert "Traceback" in (bad[0].output_dir / RunDir.ERR).read_text()


@pytest.mark.slow
def test_pool_runs_jobs_records_failures_and_skips_done(tmp_path):
    good = make_jobs(["ColoredDigits"], ["ERM"], [[0], [1]], 1, 1, 20, None, tmp_path, checkpoint_freq=10,
                     hparams=TINY_NET)
    bad = jobs_from_configs([{"dataset": "ColoredDigits", "test_envs": [7], "steps": 20}], tmp_path)
    report = launch(good + bad, "pool", n_workers=2, progress=False)

    assert (report.n_ran, report.n_skipped, len(report.failed)) == (2, 0, 1)
    assert report.failed[0].job_id == bad[0].job_id and "out of range" in report.failed[0].error
    assert "Traceback" in (bad[0].output_dir / RunDir.ERR).read_text()
    for job in good:
        assert sweep.job_state(job) == "done" and _steps(job.output_dir) == [10, 20]
        record = json.loads((job.output_dir / RunDir.RESULTS).read_text().splitlines()[-1])
        assert record["threads"] == threads_per_worker(2)  # cores // workers, set before torch started
        assert f"job {job.job_id}" in (job.output_dir / RunDir.OUT).read_text()
    counts = sweep.status(good + bad)[("ColoredDigits", "ERM")]
    assert (counts["done"], counts["incomplete"]) == (2, 1)

    before = {j.job_id: (j.output_dir / RunDir.RESULTS).stat().st_mtime_ns for j in good}
    start = time.time()
    again = launch(good, "pool", n_workers=2, progress=False)
    assert again.n_skipped == 2 and again.ok and time.time() - start < 5  # no worker was even started
    assert before == {j.job_id: (j.output_dir / RunDir.RESULTS).stat().st_mtime_ns for j in good}

    assert sweep.delete_incomplete(good + bad) == bad
    assert sweep.job_state(bad[0]) == "not_launched"


@pytest.mark.slow
def test_sweep_killed_with_sigkill_resumes_without_duplicates_or_losses(tmp_path):
    """Kill a pool sweep (the CLI and its workers) mid-way, relaunch it, and check every run."""
    out = tmp_path / "sweep"
    steps, freq = 40, 10
    argv = [sys.executable, "-m", "domainbed_recycle.cli", "sweep", "launch", "--datasets", "ColoredDigits",
            "--algorithms", "ERM", "--n_trials", "1",
            "--test_envs", "0", "1", "--single_test_envs", "--n_hparams", "2", "--steps", str(steps),
            "--checkpoint_freq", str(freq), "--hparams", json.dumps(TINY_NET), "--output_dir", str(out),
            "--n_workers", "2", "--skip_confirmation", "--no_progress"]
    jobs = make_jobs(["ColoredDigits"], ["ERM"], [[0], [1]], 2, 1, steps, None, out, checkpoint_freq=freq,
                     hparams=TINY_NET)
    assert len(jobs) == 4

    def started(job: Job) -> bool:
        path = job.output_dir / RunDir.RESULTS
        return path.exists() and path.stat().st_size > 0

    proc = subprocess.Popen(argv, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 150
        while time.time() < deadline and proc.poll() is None:
            states = [sweep.job_state(j) for j in jobs]
            running = [j for j, s in zip(jobs, states, strict=True) if s == "incomplete" and started(j)]
            if "done" in states and running:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"sweep ended before it could be killed:\n{proc.stdout.read()}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed_states = [sweep.job_state(j) for j in jobs]
    assert "done" in killed_states and "incomplete" in killed_states
    done_before = {j.job_id: (j.output_dir / RunDir.RESULTS).read_bytes()
                   for j, s in zip(jobs, killed_states, strict=True) if s == "done"}

    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(done_before)} already done, 0 failed" in result.stdout
    expected = list(range(freq, steps + 1, freq))
    for job in jobs:
        assert sweep.job_state(job) == "done"
        assert _steps(job.output_dir) == expected  # strictly increasing, unique, none lost
    for job_id, content in done_before.items():  # finished runs were not touched
        assert (out / job_id / RunDir.RESULTS).read_bytes() == content
    table = subprocess.run([sys.executable, "-m", "domainbed_recycle.cli", "collect", "--input_dir", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    for method in ("training-domain validation set", "leave-one-domain-out cross-validation",
                   "test-domain validation set (oracle)"):
        assert f"model selection method: {method}" in table.stdout
    assert f"Total records: {len(jobs) * len(expected)}" in table.stdout


def test_a_finished_job_the_registry_now_resolves_differently_is_stale_not_done(tmp_path, capsys):
    """A job id hashes the arguments, not the hyper-parameters they resolve to: after a change of the
    registry's defaults or ranges, its old runs must not pass for this registry's results."""
    argv = ["sweep", "launch", "--datasets", "ColoredDigits", "--algorithms", "ERM", "--n_hparams", "1", "--n_trials",
            "1", "--test_envs", "0", "--single_test_envs", "--steps", "2",
            "--checkpoint_freq", "1", "--hparams", json.dumps(TINY_NET), "--output_dir", str(tmp_path),
            "--launcher", "inprocess", "--skip_confirmation", "--no_progress"]
    assert cli.main(argv) == 0
    (job,) = make_jobs(["ColoredDigits"], ["ERM"], [[0]], 1, 1, 2, None, tmp_path, checkpoint_freq=1, hparams=TINY_NET)
    assert sweep.changed_hparams(job) == [] and launch([job], "inprocess", progress=False).n_skipped == 1
    # The run folder as a registry with another default learning rate would have left it.
    static = json.loads(job.run.args_file.read_text())
    static["hparams"]["lr"] *= 2
    job.run.args_file.write_text(json.dumps(static))
    assert sweep.changed_hparams(job) == ["lr"]
    report = launch([job], "inprocess", progress=False)
    assert not report.ok and [o.job_id for o in report.stale] == [job.job_id]
    assert "STALE" in report.summary() and "lr" in report.summary()
    capsys.readouterr()
    assert cli.main(argv) == 1  # refused before launching anything
    out = capsys.readouterr().out
    assert f"STALE {job.job_id}" in out and "--rerun_done" in out
    assert cli.main([*argv, "--rerun_done"]) == 0  # trained again with today's values
    assert sweep.changed_hparams(job) == [] and cli.main(argv) == 0
