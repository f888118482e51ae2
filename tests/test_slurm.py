"""The Slurm launcher on a real one-node cluster (started here by scripts/slurm/start_slurm.sh).

Skips when Slurm is missing or cannot start, unless CI=true or DRECYCLE_SLURM=1 (set by .ci/run):
then it fails, so CI never passes without having run it. Needs root and Debian's slurmctld, slurmd,
slurm-client and munge packages. `pytest -m slurm` runs only these tests.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY_NET

from domainbed_recycle import sweep
from domainbed_recycle.rundir import RunDir
from domainbed_recycle.sweep import jobs_from_configs
from domainbed_recycle.sweep.launchers import SlurmOptions, launch

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "slurm"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
REQUIRED = os.environ.get("CI", "").lower() == "true" or os.environ.get("DRECYCLE_SLURM") == "1"


def _unavailable(why: str) -> None:
    message = f"Slurm not available: {why}; CI installs it in .ci/run"
    if REQUIRED:
        pytest.fail(f"{message} (failing, not skipping: CI=true or DRECYCLE_SLURM=1)")
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A private cluster (own slurm.conf, ports, munge socket); yields the environment to use it."""
    search = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin"
    missing = [b for b in BINARIES if not shutil.which(b, path=search)]
    if missing:
        _unavailable(f"{', '.join(missing)} not found")
    if os.geteuid() != 0:
        _unavailable("the test cluster needs root")
    run_dir = Path(tempfile.mkdtemp(prefix="drecycle-slurm-"))
    run_dir.chmod(0o755)  # munged (user munge) keeps its socket inside
    env = os.environ | {"SLURMCTLD_PORT": str(_free_port()), "SLURMD_PORT": str(_free_port())}
    start = time.time()
    result = subprocess.run([str(SCRIPTS / "start_slurm.sh"), str(run_dir)], env=env, capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0:
        subprocess.run([str(SCRIPTS / "stop_slurm.sh"), str(run_dir)], capture_output=True, timeout=60)
        _unavailable(f"start_slurm.sh failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    print(f"Slurm cluster started in {time.time() - start:.1f} s ({run_dir})")
    use = {"SLURM_CONF": str(run_dir / "slurm.conf"), "PATH": f"{SCRIPTS}{os.pathsep}{search}"}
    try:
        yield use
    finally:
        pids = [int(p.read_text()) for p in (*run_dir.glob("run/*.pid"), run_dir / "munge" / "munged.pid")
                if p.exists() and p.read_text().strip()]
        subprocess.run([str(SCRIPTS / "stop_slurm.sh"), str(run_dir)], capture_output=True, timeout=60)
        alive = [pid for pid in pids if _alive(pid)]
        shutil.rmtree(run_dir, ignore_errors=True)
        assert not alive, f"daemons still running after stop_slurm.sh: {alive}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _node_memory_gb() -> float:
    """RealMemory of this node (MB in `slurmd -C`), in GB."""
    line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, env=os.environ | {
        "PATH": os.environ.get("PATH", "") + os.pathsep + "/usr/sbin"}).stdout.split()
    return int(next(f for f in line if f.startswith("RealMemory=")).split("=")[1]) / 1024


@pytest.fixture
def slurm_env(cluster, monkeypatch):
    for key, value in cluster.items():
        monkeypatch.setenv(key, value)
    return cluster


@pytest.mark.slow
def test_sweep_through_slurm_job_array(slurm_env, tmp_path):
    out = tmp_path / "sweep"
    mem_gb = min(1.0, _node_memory_gb() / 2)  # asking more than the node's RealMemory is refused
    argv = [sys.executable, "-m", "domainbed_recycle.cli", "sweep", "launch", "--datasets", "ColoredDigits",
            "--algorithms", "ERM", "--n_hparams", "1", "--n_trials", "1",
            "--test_envs", "0", "1", "2", "--single_test_envs", "--steps", "20", "--checkpoint_freq", "10",
            "--hparams", json.dumps(TINY_NET), "--output_dir", str(out), "--launcher", "slurm",
            "--slurm_partition", "debug", "--slurm_time_min", "10", "--slurm_mem_gb", str(mem_gb),
            "--slurm_cpus_per_task", "1", "--slurm_array_parallelism", "2", "--skip_confirmation",
            "--no_progress"]
    start = time.time()
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    print(f"3 jobs through Slurm in {time.time() - start:.1f} s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submitted Slurm job array" in result.stderr and "3 ran, 0 already done, 0 failed" in result.stdout

    jobs = sweep.make_jobs(["ColoredDigits"], ["ERM"], [[0], [1], [2]], 1, 1, 20, None, out,
                           checkpoint_freq=10, hparams=TINY_NET)
    for job in jobs:
        assert sweep.job_state(job) == "done"
        records = [json.loads(line) for line in (job.output_dir / RunDir.RESULTS).read_text().splitlines()]
        assert [r["step"] for r in records] == [10, 20]
        for record in records:
            for env in range(3):
                assert 0.0 <= record[f"env{env}_in_acc"] <= 1.0 and 0.0 <= record[f"env{env}_out_acc"] <= 1.0
            assert record["threads"] == 1  # = cpus_per_task
    # The array's tasks ran under Slurm and finished (the sacct shim reads slurmctld's memory).
    states = subprocess.run(["sacct", "-o", "JobID,State,NodeList", "--parsable2"], capture_output=True,
                            text=True).stdout.splitlines()[1:]
    # (a finished task may already have left slurmctld's memory, or still be COMPLETING)
    found = [line.split("|")[1] for line in states]
    assert any(state in ("COMPLETED", "COMPLETING") for state in found), states
    assert not {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"} & set(found), states
    assert list((out / ".submitit").glob("*_0/*_result.pkl"))

    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "Nothing to launch" in again.stdout


@pytest.mark.slow
def test_cancelled_slurm_job_is_reported_failed_not_awaited_forever(slurm_env, tmp_path):
    """Without accounting, submitit would wait forever for a job killed before it returned: the sacct
    shim lets the launcher see CANCELLED and report the job failed."""
    jobs = jobs_from_configs([{"dataset": "ColoredDigits", "steps": 100000, "checkpoint_freq": 100000,
                               "hparams": TINY_NET}], tmp_path)
    reports = []
    options = SlurmOptions(partition="debug", time_min=10, poll_s=0.5)
    thread = threading.Thread(
        target=lambda: reports.append(launch(jobs, "slurm", slurm=options, progress=False)))
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline and not (jobs[0].output_dir / RunDir.OUT).exists():
        time.sleep(0.2)
    assert (jobs[0].output_dir / RunDir.OUT).exists(), "the Slurm job never started"
    subprocess.run(["scancel", "--name=drecycle", "--state=RUNNING"], check=True)
    thread.join(timeout=90)
    assert not thread.is_alive(), "the launcher kept waiting for a cancelled job"
    (report,) = reports
    assert len(report.failed) == 1 and "UncompletedJobError" in report.failed[0].error
    assert "CANCELLED" in report.failed[0].error
    assert sweep.job_state(jobs[0]) == "incomplete"


@pytest.mark.slow
def test_recycling_combine_stage_through_slurm(slurm_env, tmp_path):
    """Issue 10: the combine stage is one Slurm task per cell; the table equals the in-process one."""
    from domainbed_recycle.recycle.pipeline import Pipeline
    from domainbed_recycle.recycle.spec import spec_from_dict

    values = {
        "output_dir": str(tmp_path / "recycle"), "launcher": "inprocess", "strategies": ["LP-FT", "Soup"],
        "foundation": {"dataset": "Textures", "steps": 20, "checkpoint_freq": 20, "hparams": TINY_NET},
        "auxiliary": {"datasets": ["Glyphs"], "n_runs": 1, "steps": 10, "checkpoint_freq": 10, "hparams": TINY_NET,
                      "hparams_profile": "small_finetune"},
        "probe": {"steps": 10, "checkpoint_freq": 10, "hparams": TINY_NET},
        "target": {"datasets": ["RotatedDigits"], "test_envs": [4, 5], "n_trials": 1, "n_runs": 2, "steps": 10,
                   "checkpoint_freq": 10, "hparams": TINY_NET, "hparams_profile": "small_finetune", "lp_steps": 2},
    }
    table = Pipeline(spec_from_dict(values)).run()
    for folder in ("combined", "table", "combine_jobs"):
        shutil.rmtree(tmp_path / "recycle" / folder)
    mem_gb = min(1.0, _node_memory_gb() / 2)
    slurm = {"partition": "debug", "time_min": 10, "mem_gb": mem_gb, "array_parallelism": 2, "poll_s": 0.5}
    on_slurm = Pipeline(spec_from_dict(values | {"launcher": "slurm", "slurm": slurm}))
    assert on_slurm.run() == table
    jobs = [p for p in (tmp_path / "recycle" / "combine_jobs").iterdir() if not p.name.startswith(".")]
    assert len(jobs) == 2 and all(RunDir(job).is_done for job in jobs)  # one task per cell
    assert list((tmp_path / "recycle" / "combine_jobs" / ".submitit").glob("*_1/*_result.pkl"))


@pytest.mark.slow
def test_slurm_options_account_sbatch_lines_and_setup_lines_reach_the_job(slurm_env, tmp_path):
    """Issue 16: a cluster's own options (account, any sbatch option, setup lines) pass through submitit."""
    jobs = jobs_from_configs([{"dataset": "ColoredDigits", "steps": 2, "checkpoint_freq": 2,
                               "hparams": TINY_NET}], tmp_path)
    options = SlurmOptions.from_dict({"partition": "debug", "time_min": 10, "poll_s": 0.5, "account": "drecycle-lab",
                                      "sbatch": {"comment": "drecycle-test"},
                                      "setup": ["echo setup-line-ran-$SLURM_JOB_ID"]})
    report = launch(jobs, "slurm", slurm=options, progress=False, log_dir=tmp_path / "logs")
    assert report.ok and report.n_ran == 1, report.summary()
    (script,) = (tmp_path / "logs").glob("*/*_submission.sh")
    lines = script.read_text().splitlines()
    assert "#SBATCH --account=drecycle-lab" in lines and "#SBATCH --comment=drecycle-test" in lines
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*/*_log.out"))
    assert "setup-line-ran-" in logs
