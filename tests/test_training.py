"""`drecycle train` end to end on a built-in dataset: logs, checkpoints, reproducibility, inits, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import TINY_NET

from domainbed_recycle import checkpoints
from domainbed_recycle.errors import UserError
from domainbed_recycle.rundir import RunDir
from domainbed_recycle.training import TrainConfig, train

DOMAINBED_KEYS = {"step", "epoch", "loss", "step_time", "mem_gb", "hparams", "args"}


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / RunDir.RESULTS).read_text().splitlines()]


def _config(tmp_path, name, **kwargs):
    base = dict(dataset="RotatedDigits", output_dir=str(tmp_path / name), test_envs=[5], steps=20,
                checkpoint_freq=10, progress=False, hparams=TINY_NET)
    return TrainConfig(**(base | kwargs))


def test_run_writes_domainbed_log_checkpoints_and_done(tmp_path):
    run = train(_config(tmp_path, "run"))
    records = _records(run)
    assert [r["step"] for r in records] == [10, 20]
    for record in records:
        assert DOMAINBED_KEYS <= set(record)
        for env in range(6):
            assert 0.0 <= record[f"env{env}_in_acc"] <= 1.0 and 0.0 <= record[f"env{env}_out_acc"] <= 1.0
        assert record["args"]["test_envs"] == [5] and record["args"]["environments"][5] == "75"
        assert record["versions"]["torch"] and "git_commit" in record
    assert (run / RunDir.DONE).exists()
    state, meta = checkpoints.load_checkpoint(run / RunDir.BEST)
    assert meta["arch"]["featurizer"] == "small_cnn" and meta["dataset"] == "RotatedDigits"
    assert any(key.startswith("classifier.") for key in state)
    assert checkpoints.read_metadata(run / RunDir.LAST)["step"] == 20


def test_same_seeds_give_identical_numbers(tmp_path):
    keys = ["loss"] + [f"env{e}_{s}_acc" for e in range(6) for s in ("in", "out")]
    first = _records(train(_config(tmp_path, "a", seed=3)))
    second = _records(train(_config(tmp_path, "b", seed=3)))
    other = _records(train(_config(tmp_path, "c", seed=4)))
    assert [[r[k] for k in keys] for r in first] == [[r[k] for k in keys] for r in second]
    assert [r["loss"] for r in first] != [r["loss"] for r in other]


def test_train_writes_only_into_a_fresh_folder(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create()
    run.results_file.write_text('{"step": 999}\n{"trunc')  # a killed run's leftovers
    with pytest.raises(UserError, match="new or empty folder"):  # resetting is the launcher's job
        train(_config(tmp_path, "run"))
    assert run.results_file.read_text() == '{"step": 999}\n{"trunc'
    run.reset()
    run.out_file.write_text("a launcher's log, opened before training\n")
    train(_config(tmp_path, "run"))
    assert [r["step"] for r in _records(run.path)] == [10, 20] and run.is_done
    with pytest.raises(UserError, match="holds done run files"):
        train(_config(tmp_path, "run"))


def test_linear_probe_keeps_featurizer_and_lp_warmup_freezes_it_first(tmp_path):
    source = train(_config(tmp_path, "source"))
    state, _ = checkpoints.load_checkpoint(source / RunDir.LAST)
    probe = train(_config(tmp_path, "probe", init=str(source / RunDir.LAST), linear_probe=True))
    probed, _ = checkpoints.load_checkpoint(probe / RunDir.LAST)
    for key in state:
        same = torch.equal(state[key], probed[key])
        assert same if key.startswith("featurizer.") else True
    assert not torch.equal(state["classifier.weight"], probed["classifier.weight"])
    # lp_steps as long as the run: the featurizer must not move either.
    warm = train(_config(tmp_path, "warm", init=str(source / RunDir.LAST),
                         hparams=TINY_NET | {"lp_steps": 20}))
    warmed, _ = checkpoints.load_checkpoint(warm / RunDir.LAST)
    assert all(torch.equal(state[k], warmed[k]) for k in state if k.startswith("featurizer."))
    moved = train(_config(tmp_path, "moved", init=str(source / RunDir.LAST),
                          hparams=TINY_NET | {"lp_steps": 10}))
    moved_state, _ = checkpoints.load_checkpoint(moved / RunDir.LAST)
    assert not all(torch.equal(state[k], moved_state[k]) for k in state if k.startswith("featurizer."))


def test_init_from_a_checkpoint_of_another_architecture_fails_clearly(tmp_path):
    source = train(_config(tmp_path, "wide", hparams={"cnn_width": 4}))
    with pytest.raises(UserError, match="featurizer architecture"):
        train(_config(tmp_path, "bad", init=str(source / RunDir.LAST)))
    other_classes = train(_config(tmp_path, "colored", dataset="ColoredDigits", test_envs=[2]))
    with pytest.raises(UserError, match="classes|classifier"):
        train(_config(tmp_path, "bad2", init_classifier=str(other_classes / RunDir.LAST)))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "PACS", "--data_dir", "/nonexistent"], "/nonexistent"),
        (["--dataset", "NoSuchData"], "unknown dataset 'NoSuchData'"),
        (["--dataset", "RotatedDigits", "--algorithm", "NoSuchAlgo"], "unknown algorithm 'NoSuchAlgo'"),
        (["--dataset", "RotatedDigits", "--test_envs", "9"], "test env 9 out of range"),
        (["--dataset", "RotatedDigits", "--hparams", "{bad json"], "--hparams is not valid JSON"),
    ],
)
def test_cli_bad_input_exits_non_zero_with_one_clear_line(tmp_path, capsys, argv, message):
    from domainbed_recycle import cli

    assert cli.main(["train", *argv, "--output_dir", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in lines[0]
    assert not (tmp_path / "o").exists()


def test_cli_bad_input_in_a_process_of_its_own_prints_one_line_and_exits_2(tmp_path):
    """The same as a user sees it: a fresh interpreter (whatever importing prints counts too)."""
    result = subprocess.run(
        [sys.executable, "-m", "domainbed_recycle.cli", "train", "--dataset", "NoSuchData",
         "--output_dir", str(tmp_path / "o")], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown dataset 'NoSuchData'" in lines[0] and "Traceback" not in result.stderr


def test_how_often_a_run_is_evaluated_does_not_change_its_training(tmp_path):
    """Dropout masks come from torch's global generator; an evaluation pass must not draw from it (its
    DataLoader drew its base seed there, so a run evaluated every 5 steps trained differently from one
    evaluated every 10)."""
    final = {}
    for freq in (5, 10):
        out = tmp_path / f"freq{freq}"
        train(TrainConfig(dataset="ColoredDigits", output_dir=str(out), test_envs=[0], steps=10, checkpoint_freq=freq,
                          hparams={**TINY_NET, "dropout": 0.5}, progress=False, threads=1))
        final[freq], _ = checkpoints.load_checkpoint(RunDir(out).last_checkpoint)
    assert final[5].keys() == final[10].keys()
    assert all(torch.equal(final[5][key], final[10][key]) for key in final[5])
