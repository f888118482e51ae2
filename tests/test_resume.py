"""Resume, not restart: a run SIGKILLed at any point continues from its last resume state and ends
with records (timing fields aside) and weights identical to an uninterrupted run (CPU, 1 thread).

The child process kills itself (SIGKILL, no cleanup) at a chosen step, either at the start of a
training step or right after an evaluation wrote its record and checkpoints (before the resume
state of that evaluation is saved). Tiny runs: 8 steps, an evaluation every 2."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_NET
from safetensors.torch import load_file

from domainbed_recycle.rundir import RunDir
from domainbed_recycle.sweep import make_jobs, run_job

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("step_time", "mem_gb")

CHILD = """
import json, os, signal, sys
from domainbed_recycle.algorithms import get_algorithm_class
from domainbed_recycle.sweep import run_job

args, kill_step, where = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cls = get_algorithm_class(args["algorithm"])

def die(self, *rest):
    if self.update_count == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *rest)

original = getattr(cls, where)
setattr(cls, where, die)
run_job(args, threads=1, echo=False)
"""

HPARAMS = {
    "ERM": TINY_NET | {"dropout": 0.3},
    "SWAD": TINY_NET | {"swad_n_converge": 1, "swad_n_tolerance": 2},
    "Mixup": TINY_NET,
    "MovingAverage": TINY_NET | {"ma_start_step": 3},
}


def _job(root: Path, algorithm: str):
    (job,) = make_jobs(["ColoredDigits"], [algorithm], [[0]], 1, 1, 8, None, root, checkpoint_freq=2,
                       hparams=HPARAMS[algorithm])
    return job


def _result(run: RunDir) -> tuple[list[dict], dict]:
    """Records without timing fields (and without the folder's own path), and both checkpoints."""
    records = [{k: v for k, v in r.items() if k not in TIMING} for r in run.read_records()]
    for record in records:
        record["args"] = {k: v for k, v in record["args"].items() if k != "output_dir"}
    weights = {name: load_file(run.path / name) for name in (run.BEST, run.LAST)}
    return records, weights


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        x.keys() == y.keys() and all(bool((x[k] == y[k]).all()) for k in x) for x, y in
        ((a[n], b[n]) for n in a))


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(HPARAMS))
def test_a_run_killed_at_a_random_step_resumes_to_the_identical_result(tmp_path, algorithm):
    reference = _job(tmp_path / "reference", algorithm)
    assert run_job(reference.args, threads=1, echo=False).status == "done"
    expected = _result(reference.run)
    assert not reference.run.resume_file.exists()  # removed once done

    rng = random.Random(f"resume-{algorithm}")
    for trial, where in enumerate(("train_step", "end_of_evaluation")):
        kill_step = rng.randint(1, 7) if where == "train_step" else rng.choice([2, 4, 6])
        job = _job(tmp_path / f"killed{trial}", algorithm)
        child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(job.args), str(kill_step), where],
                               env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        assert child.returncode == -9, child.stderr[-2000:]
        assert job.run.state == "incomplete" and job.run.lock_file.exists()  # left by the kill
        has_state = job.run.resume_file.exists()
        assert has_state == (kill_step > 2 or (kill_step == 2 and where == "train_step")), kill_step
        assert run_job(job.args, threads=1, echo=False).status == "done"
        assert "resuming" in job.run.err_file.read_text() or not has_state
        records, weights = _result(job.run)
        assert records == expected[0], (where, kill_step)
        assert _same_weights(weights, expected[1]), (where, kill_step)


def _write_tree(root: Path) -> None:
    """root/d<k>/c<j>/<i>.png: 3 domains x 2 classes x 8 small images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for d in range(3):
        for c in range(2):
            (root / f"d{d}" / f"c{c}").mkdir(parents=True)
            for i in range(8):
                pixels = rng.integers(0, 90, (18, 22, 3)) + 110 * c + 15 * d
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / f"d{d}" / f"c{c}" / f"{i}.png")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bf16+channels_last", "folder, loader workers"])
def test_runs_with_speed_switches_resume_to_the_identical_result(tmp_path, monkeypatch, case):
    """bf16 autocast with channels-last weights, and a folder dataset whose batches (augmented) come
    from loader workers: killed, resumed, identical to the uninterrupted run."""
    if case.startswith("folder"):
        monkeypatch.setenv("DRECYCLE_CACHE", str(tmp_path / "cache"))
        _write_tree(tmp_path / "tree")
        dataset, extra = f"folder:{tmp_path / 'tree'}?resolution=16", {"loader_workers": 1}
        hparams = {"data_augmentation": True, "batch_size": 4}
    else:
        dataset, extra, hparams = "ColoredDigits", {"precision": "bf16", "channels_last": True}, {"dropout": 0.3}

    def job(root: Path):
        (made,) = make_jobs([dataset], ["ERM"], [[0]], 1, 1, 6, None, root, checkpoint_freq=2,
                            hparams={"cnn_width": 8} | hparams, extra=extra | {"hparams_profile": "small"})
        return made

    reference = job(tmp_path / "reference")
    assert run_job(reference.args, threads=1, echo=False).status == "done"
    expected = _result(reference.run)
    assert all(expected[0][-1]["args"][key] == value for key, value in extra.items())
    killed = job(tmp_path / "killed")
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(killed.args), "3", "train_step"],
                           env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert child.returncode == -9, child.stderr[-2000:]
    assert killed.run.resume_file.exists()
    assert run_job(killed.args, threads=1, echo=False).status == "done"
    assert "resuming" in killed.run.err_file.read_text()
    records, weights = _result(killed.run)
    assert records == expected[0]
    assert _same_weights(weights, expected[1])
