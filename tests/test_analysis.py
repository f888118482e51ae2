"""analysis + `drecycle diversity` / `drecycle lmc` on three tiny real RotatedDigits runs."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from conftest import TINY_NET

from domainbed_recycle import analysis, checkpoints, diversity
from domainbed_recycle.averaging import uniform_average
from domainbed_recycle.cli import main
from domainbed_recycle.errors import UserError
from domainbed_recycle.rundir import RunDir
from domainbed_recycle.training import TrainConfig, train

pytestmark = pytest.mark.slow  # its module fixture trains the runs every test reads

TEST_ENV = 5


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """Three finished runs differing only by their training seed."""
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for seed in range(3):
        config = TrainConfig(
            dataset="RotatedDigits", output_dir=str(root / f"run{seed}"), test_envs=[TEST_ENV], steps=20,
            checkpoint_freq=10, seed=seed, progress=False, hparams=TINY_NET,
        )
        dirs.append(train(config))
    return dirs


@pytest.fixture(scope="module")
def runs(run_dirs):
    return [analysis.load_run(path) for path in run_dirs]


@pytest.fixture(scope="module")
def evaluator(runs):
    return analysis.evaluator_for(runs)


def _copy_run(source, target, metadata=None, args=None):
    """A copy of a run folder with some checkpoint metadata / args.json entries replaced."""
    shutil.copytree(source, target)
    if metadata:
        for name in (RunDir.BEST, RunDir.LAST):
            state, meta = checkpoints.load_checkpoint(target / name)
            checkpoints.save_checkpoint(target / name, state, meta | metadata)
    if args:
        static = json.loads((target / RunDir.ARGS).read_text())
        static["args"].update(args)
        (target / RunDir.ARGS).write_text(json.dumps(static))
    return target


# ------------------------------------------------------------------------------------------------------
# load_run / evaluator_for
# ------------------------------------------------------------------------------------------------------


def test_load_run_reads_what_the_run_was_trained_on(runs, run_dirs):
    info = runs[0]
    assert info.checkpoint == run_dirs[0] / RunDir.BEST
    assert (info.dataset, info.test_envs, info.trial_seed) == ("RotatedDigits", [TEST_ENV], 0)
    assert info.holdout_fraction == 0.2 and info.data_dir is None and info.init_label == "random"
    assert info.arch["width"] == 8 and info.name == "run0" and 0.0 <= info.val_acc <= 1.0
    assert set(info.state) == set(checkpoints.load_checkpoint(info.checkpoint)[0])


def test_load_run_refuses_what_is_not_a_finished_run(tmp_path, run_dirs):
    with pytest.raises(UserError, match="no such run folder"):
        analysis.load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run folder"):
        analysis.load_run(tmp_path / "empty")
    unfinished = shutil.copytree(run_dirs[0], tmp_path / "unfinished")
    (unfinished / RunDir.DONE).unlink()
    with pytest.raises(UserError, match="unfinished run"):
        analysis.load_run(unfinished)
    nomodel = shutil.copytree(run_dirs[0], tmp_path / "nomodel")
    for name in (RunDir.BEST, RunDir.LAST):
        (nomodel / name).unlink()
    with pytest.raises(UserError, match="saved no model"):
        analysis.load_run(nomodel)


@pytest.mark.parametrize(
    ("field", "metadata", "args"),
    [
        ("trial_seed", {"trial_seed": 1}, None),
        ("dataset", {"dataset": "ColoredDigits"}, None),
        ("holdout_fraction", None, {"holdout_fraction": 0.3}),
        ("architecture", {"arch": {"featurizer": "small_cnn", "input_shape": [3, 28, 28], "num_classes": 10,
                                   "width": 16}}, None),
    ],
)
def test_mismatched_runs_are_refused_naming_run_and_field(tmp_path, run_dirs, field, metadata, args):
    other = _copy_run(run_dirs[1], tmp_path / "other", metadata, args)
    with pytest.raises(UserError, match=rf"{other}: {field} .* differs from .* of {run_dirs[0]}"):
        analysis.evaluator_for([run_dirs[0], other])


def test_common_test_env(tmp_path, runs, run_dirs):
    assert analysis.common_test_env(runs) == TEST_ENV
    other = _copy_run(run_dirs[1], tmp_path / "other", {"test_envs": [4]})
    with pytest.raises(UserError, match="--test_env"):
        analysis.common_test_env([run_dirs[0], other])


# ------------------------------------------------------------------------------------------------------
# LMC
# ------------------------------------------------------------------------------------------------------


def test_lmc_endpoints_are_each_runs_own_accuracy(runs, evaluator):
    a, b = runs[0], runs[1]
    result = analysis.lmc_between(a, b, evaluator, TEST_ENV, [0.0, 0.5, 1.0])
    assert [lam for lam, _ in result["test_curve"]] == [0.0, 0.5, 1.0]
    assert result["test_curve"][0][1] == evaluator.test_acc(a.state, TEST_ENV)
    assert result["test_curve"][-1][1] == evaluator.test_acc(b.state, TEST_ENV)
    assert result["val_envs"] == [0, 1, 2, 3, 4]
    assert result["val_curve"][0][1] == evaluator.val_acc(a.state, [TEST_ENV])
    assert result["val_curve"][-1][1] == evaluator.val_acc(b.state, [TEST_ENV])
    assert result["test_barrier"] >= 0.0 and result["val_barrier"] >= 0.0
    # λ=0 of (a, b) is λ=1 of (b, a), exactly.
    swapped = analysis.lmc_between(b, a, evaluator, TEST_ENV, [0.0, 1.0], validation=False)
    assert swapped["test_curve"] == [(0.0, result["test_curve"][-1][1]), (1.0, result["test_curve"][0][1])]
    assert swapped["val_curve"] is None and swapped["val_barrier"] is None


def test_lmc_of_a_run_with_itself_is_flat(runs, evaluator):
    result = analysis.lmc_between(runs[2], runs[2], evaluator, TEST_ENV, [0.0, 0.3, 1.0])
    accs = {acc for _, acc in result["test_curve"]}
    assert accs == {evaluator.test_acc(runs[2].state, TEST_ENV)}
    assert result["test_barrier"] == 0.0 and result["val_barrier"] == 0.0


def test_lmc_needs_both_endpoints(runs, evaluator):
    with pytest.raises(UserError, match="include 0 and 1"):
        analysis.lmc_between(runs[0], runs[1], evaluator, TEST_ENV, [0.0, 0.5])
    with pytest.raises(UserError, match="out of range"):
        analysis.lmc_between(runs[0], runs[1], evaluator, 6, [0.0, 1.0])


# ------------------------------------------------------------------------------------------------------
# diversity and pairwise weight averages
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictions(runs, evaluator):
    return analysis.test_predictions(runs, evaluator, TEST_ENV)


def test_predictions_are_the_test_domains_in_split(runs, evaluator, predictions):
    probs, labels = predictions
    split = evaluator.in_splits[TEST_ENV]
    assert probs.shape == (3, len(split), 10) and labels.shape == (len(split),)
    np.testing.assert_allclose(probs.sum(axis=2), 1.0, atol=1e-5)
    for info, p in zip(runs, probs, strict=True):  # argmax of softmax vs of logits: ties may move a sample
        own = evaluator.test_acc(info.state, TEST_ENV)
        assert abs(np.mean(p.argmax(1) == labels) - own) <= 1 / len(labels)


def test_diversity_report_matches_diversity_module(runs, evaluator, predictions):
    probs, labels = predictions
    report = analysis.diversity_report(runs, evaluator, TEST_ENV, predictions)
    preds = list(probs.argmax(axis=2))
    for name in analysis.DIVERSITY_METRICS:
        expected = diversity.mean_pairwise(preds, labels, name)
        assert report["mean"][name] == pytest.approx(expected, nan_ok=True)
        np.testing.assert_array_equal(
            np.array(report["matrices"][name]), diversity.pairwise_matrix(preds, labels, name)
        )
    assert report["accuracies"] == [diversity.accuracy(p, labels) for p in preds]
    assert report["ensemble_accuracy"] == diversity.ensemble_accuracy(probs, labels)
    assert report["mean_accuracy"] == pytest.approx(np.mean(report["accuracies"]))
    assert report["ensemble_gain"] == report["ensemble_accuracy"] - report["mean_accuracy"]
    assert report["n_samples"] == len(labels) and report["init_labels"] == ["random"] * 3
    # Computing the predictions itself gives the same report.
    again = analysis.diversity_report(runs, evaluator, TEST_ENV)
    assert again["accuracies"] == report["accuracies"] and again["runs"] == report["runs"]
    assert json.dumps(analysis.jsonable(again)) == json.dumps(analysis.jsonable(report))


def test_a_run_with_itself_has_no_diversity_and_no_wa_gain(runs, evaluator):
    twice = [runs[0], runs[0]]
    report = analysis.diversity_report(twice, evaluator, TEST_ENV)
    acc = report["accuracies"][0]
    assert report["mean"]["disagreement"] == 0.0 and report["mean"]["ratio_error"] == 0.0
    assert report["mean"]["double_fault"] == pytest.approx(1.0 - acc)
    assert report["ensemble_accuracy"] == acc and report["ensemble_gain"] == 0.0
    (pair,) = analysis.pairwise_wa_gains(twice, evaluator, TEST_ENV)
    assert pair["gain"] == 0.0 and pair["wa_acc"] == pair["acc_a"] == pair["acc_b"] == acc
    assert pair["disagreement"] == 0.0


def test_pairwise_wa_gains(runs, evaluator, predictions):
    probs, labels = predictions
    rows = analysis.pairwise_wa_gains(runs, evaluator, TEST_ENV, predictions)
    assert [(r["i"], r["j"]) for r in rows] == [(0, 1), (0, 2), (1, 2)]
    preds = probs.argmax(axis=2)
    for row in rows:
        i, j = row["i"], row["j"]
        expected = diversity.ratio_error(preds[i], preds[j], labels)
        assert row["ratio_error"] == pytest.approx(expected, nan_ok=True)
        assert row["disagreement"] == diversity.disagreement(preds[i], preds[j])
        assert row["mean_acc"] == pytest.approx((row["acc_a"] + row["acc_b"]) / 2)
        assert row["gain"] == pytest.approx(row["wa_acc"] - row["mean_acc"])
        average = uniform_average([runs[i].state, runs[j].state])
        assert abs(row["wa_acc"] - evaluator.test_acc(average, TEST_ENV)) <= 1 / len(labels)
        assert 0.0 <= row["ensemble_acc"] <= 1.0


def test_diversity_needs_two_runs(runs, evaluator):
    with pytest.raises(UserError, match="at least 2"):
        analysis.diversity_report(runs[:1], evaluator, TEST_ENV)
    with pytest.raises(UserError, match="at least 2"):
        analysis.pairwise_wa_gains(runs[:1], evaluator, TEST_ENV)


def test_jsonable():
    out = analysis.jsonable({"a": (1.0, math.nan), "b": np.float32(0.5), "c": np.int64(3), "d": [math.inf]})
    assert out == {"a": [1.0, None], "b": 0.5, "c": 3, "d": [None]}
    assert json.dumps(out, allow_nan=False)


# ------------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------------


def test_diversity_command(run_dirs, tmp_path, capsys):
    plot = tmp_path / "plots" / "div.png"
    assert main(["diversity", *map(str, run_dirs), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    for text in ("ratio-err", "WA gain pp", "0-1", "1-2", "ensemble of all 3", "WA gain vs ratio-error"):
        assert text in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["diversity", *map(str, run_dirs[:2]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["pairs"]) == 1 and set(report["mean"]) == set(analysis.DIVERSITY_METRICS)


def test_lmc_command(run_dirs, tmp_path, capsys):
    plot = tmp_path / "lmc.png"
    assert main(["lmc", str(run_dirs[0]), str(run_dirs[1]), "--points", "3", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "barrier (test)" in out and "barrier (val" in out and "0.5" in out and plot.is_file()
    assert main(["lmc", str(run_dirs[0]), str(run_dirs[0]), "--points", "2", "--no_val", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["lambdas"] == [0.0, 1.0] and result["test_barrier"] == 0.0 and result["val_curve"] is None


@pytest.mark.parametrize("command", ["diversity", "lmc"])
def test_commands_refuse_a_non_run_folder_in_one_line(run_dirs, tmp_path, capsys, command):
    assert main([command, str(run_dirs[0]), str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"drecycle {command}: error: ")
    assert str(tmp_path) in lines[0]


def test_command_argument_errors(run_dirs, capsys):
    assert main(["lmc", str(run_dirs[0]), str(run_dirs[1]), "--points", "1"]) == 2
    assert main(["diversity", str(run_dirs[0])]) == 2
    assert main(["diversity", str(run_dirs[0]), str(run_dirs[1]), "--test_env", "9"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 3
