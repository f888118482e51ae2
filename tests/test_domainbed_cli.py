"""DomainBed's command lines, unchanged: every flag of its train.py, sweep.py and collect_results.py is
accepted with DomainBed's meaning (flag names from DomainBed's scripts; meanings checked on jobs)."""

from __future__ import annotations

import hashlib
import json

import pytest

from domainbed_recycle import cli, sweep
from domainbed_recycle.algorithms import ALGORITHMS
from domainbed_recycle.rundir import RunDir
from domainbed_recycle.sweep.launchers import LaunchReport

# The flags of DomainBed's scripts/train.py, sweep.py and collect_results.py.
DOMAINBED_TRAIN_FLAGS = ("data_dir", "dataset", "algorithm", "task", "hparams", "hparams_seed", "trial_seed", "seed",
                         "steps", "checkpoint_freq", "test_envs", "output_dir", "holdout_fraction",
                         "uda_holdout_fraction", "skip_model_save", "save_model_every_checkpoint")
DOMAINBED_SWEEP_FLAGS = ("datasets", "algorithms", "task", "n_hparams_from", "n_hparams", "output_dir", "data_dir",
                         "seed", "n_trials", "command_launcher", "steps", "hparams", "holdout_fraction",
                         "single_test_envs", "skip_confirmation")
DOMAINBED_COLLECT_FLAGS = ("input_dir", "latex", "auto_lr")
SMALL = json.dumps({"cnn_width": 4, "batch_size": 8})


def _flags(command: str) -> set[str]:
    parser, _ = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {option[2:] for action in sub._actions for option in action.option_strings if option.startswith("--")}


@pytest.mark.parametrize("command, flags", [("train", DOMAINBED_TRAIN_FLAGS), ("sweep", DOMAINBED_SWEEP_FLAGS),
                                            ("collect", DOMAINBED_COLLECT_FLAGS)])
def test_every_domainbed_flag_is_accepted(command, flags):
    assert set(flags) <= _flags(command)


def test_train_takes_domainbeds_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data_dir", str(tmp_path), "--dataset", "ColoredDigits", "--algorithm", "ERM", "--task",
            "domain_generalization", "--hparams", SMALL, "--hparams_seed", "0", "--trial_seed", "0", "--seed", "0",
            "--steps", "2", "--checkpoint_freq", "1", "--test_env", "2",  # an abbreviation, as in DomainBed's README
            "--output_dir", str(out), "--holdout_fraction", "0.2", "--uda_holdout_fraction", "0",
            "--save_model_every_checkpoint", "--no_progress"]
    assert cli.main(argv) == 0
    record = json.loads((out / RunDir.RESULTS).read_text().splitlines()[-1])
    assert record["args"]["test_envs"] == [2] and record["args"]["save_model_every_checkpoint"] is True
    assert (out / "model_step2.safetensors").is_file()  # the built-ins count steps from 1 (see README)
    capsys.readouterr()


def _jobs(*argv: str) -> list[sweep.Job]:
    parser, modules = cli.build_parser()
    args = parser.parse_args(["sweep", "status", *argv])
    values = modules["sweep"]._spec_values(args)
    return sweep.spec_from_dict({k: v for k, v in values.items() if v is not None}).jobs()


def test_sweep_defaults_and_hparams_range_are_domainbeds(tmp_path):
    jobs = _jobs("--datasets", "ColoredDigits", "--output_dir", str(tmp_path))
    # every algorithm x 6 test-domain sets (3 singles, 3 pairs) x hparams seeds 0..19 x trial seeds 0..2
    assert len(jobs) == len(ALGORITHMS.names()) * 6 * 20 * 3
    assert {j.args["hparams_seed"] for j in jobs} == set(range(20))
    assert {j.args["trial_seed"] for j in jobs} == {0, 1, 2}
    ranged = _jobs("--datasets", "ColoredDigits", "--algorithms", "ERM", "--n_hparams_from", "2", "--n_hparams", "3",
                   "--n_trials", "1", "--output_dir", str(tmp_path), "--seed", "9")
    assert {j.args["hparams_seed"] for j in ranged} == {2}  # DomainBed: range(2, 3)
    default_datasets = {j.args["dataset"] for j in _jobs("--algorithms", "ERM", "--n_hparams", "1", "--n_trials", "1",
                                                          "--output_dir", str(tmp_path))}
    assert default_datasets == {"ColoredMNIST", "RotatedMNIST", "VLCS", "PACS", "OfficeHome", "TerraIncognita",
                                "DomainNet"}
    with pytest.raises(Exception, match="no hparams seeds"):
        _jobs("--datasets", "ColoredDigits", "--n_hparams_from", "3", "--n_hparams", "3", "--output_dir", str(tmp_path))


def test_sweep_seeds_of_domainbeds_datasets_are_domainbeds(tmp_path):
    jobs = _jobs("--datasets", "RotatedMNIST", "--algorithms", "ERM", "--n_hparams", "2", "--n_trials", "2",
                 "--output_dir", str(tmp_path))
    for job in jobs:
        a = job.args
        key = (a["dataset"], a["algorithm"], a["test_envs"], a["hparams_seed"], a["trial_seed"])
        assert a["seed"] == int(hashlib.md5(str(key).encode()).hexdigest(), 16) % 2**31  # DomainBed's seed_hash
        assert "task" not in a  # the default task stays out of job ids
    (adapted, *_) = _jobs("--datasets", "RotatedMNIST", "--algorithms", "ERM", "--n_hparams", "1", "--n_trials", "1",
                          "--task", "domain_adaptation", "--output_dir", str(tmp_path))
    assert adapted.args["task"] == "domain_adaptation"


def _sweep(*extra: str) -> list[str]:
    return ["sweep", "launch", "--datasets", "ColoredDigits", "--algorithms", "ERM", "--n_hparams", "1", "--n_trials",
            "1", "--single_test_envs", "--steps", "2", "--hparams", SMALL, *extra]


def test_command_launchers_map_to_this_projects(tmp_path, monkeypatch, capsys):
    assert cli.main(_sweep("--output_dir", str(tmp_path), "--command_launcher", "dummy")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith("Dummy launcher: drecycle train --algorithm ERM") for line in lines)
    assert not any(tmp_path.iterdir())  # nothing ran
    seen = {}

    def fake_launch(jobs, launcher, n_workers, **kwargs):
        seen.update(launcher=launcher, n_workers=n_workers)
        return LaunchReport(launcher, [])

    monkeypatch.setattr("domainbed_recycle.sweep.launchers.launch", fake_launch)
    assert cli.main(_sweep("--output_dir", str(tmp_path), "--command_launcher", "local", "--skip_confirmation")) == 0
    assert seen == {"launcher": "pool", "n_workers": 1}  # one job at a time, as DomainBed's local launcher
    assert cli.main(_sweep("--output_dir", str(tmp_path), "--command_launcher", "local", "--launcher", "slurm")) == 2
    assert "disagree" in capsys.readouterr().err


def test_multi_gpu_without_a_gpu_is_one_line(tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code = cli.main(_sweep("--output_dir", str(tmp_path), "--command_launcher", "multi_gpu", "--skip_confirmation",
                           "--no_progress"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no GPU visible" in err


@pytest.mark.slow
def test_delete_all_and_status_from_the_folder_alone(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert cli.main(_sweep("--output_dir", str(out), "--launcher", "inprocess", "--skip_confirmation",
                           "--no_progress")) == 0
    (out / "not_a_run").mkdir()  # ignored by status
    capsys.readouterr()
    assert cli.main(["sweep", "status", "--output_dir", str(out)]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("ColoredDigits"))
    assert row.split()[2:] == ["3", "0", "0", "0", "3"]  # done, diverged, incomplete, not launched, jobs
    argv = _sweep("--output_dir", str(out), "--skip_confirmation")
    argv[1] = "delete_all"
    assert cli.main(argv) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["not_a_run"]
