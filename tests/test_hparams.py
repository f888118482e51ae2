"""Hyper-parameter registry: defaults at seed 0, seeded draws, per-name independence, kinds and
ranges, and the one override rule."""

from __future__ import annotations

import re

import pytest

from domainbed_recycle import hparams_registry as hr
from domainbed_recycle.algorithms import ALGORITHMS
from domainbed_recycle.algorithms.erm import ERM
from domainbed_recycle.errors import UserError
from domainbed_recycle.hparams_spec import Flag, Integer, OneOf, Real


def test_seed_zero_gives_defaults_and_other_seeds_are_reproducible():
    assert hr.get_hparams("ERM", "small", 0) == hr.default_hparams("ERM", "small")
    assert hr.get_hparams("ERM", "small", 3) == hr.get_hparams("ERM", "small", 3)
    draws = {hr.get_hparams("ERM", "small", seed)["lr"] for seed in range(1, 6)}
    assert len(draws) == 5
    assert all(10**-3.5 <= lr <= 10**-2.5 for lr in draws)


def test_adding_a_hyper_parameter_leaves_the_others_unchanged():
    # CORAL = ERM's hyper-parameters plus mmd_gamma: the shared ones must be drawn identically.
    for seed in range(1, 8):
        erm = hr.random_hparams("ERM", "small", seed)
        coral = hr.random_hparams("CORAL", "small", seed)
        assert {k: coral[k] for k in erm} == erm
        assert "mmd_gamma" in coral


def test_resnet_profile_uses_the_papers_ranges():
    for seed in range(1, 30):
        hp = hr.random_hparams("ERM", "resnet", seed)
        assert hp["lr"] in (1e-5, 3e-5, 5e-5)
        assert hp["dropout"] in (0.0, 0.1, 0.5)
        assert hp["weight_decay"] in (1e-4, 1e-6)
        assert hp["batch_size"] == 32 and hp["optimizer"] == "adam" and hp["arch"] == "resnet50"


def test_overrides_apply_and_unknown_names_are_rejected():
    assert hr.get_hparams("ERM", "small", 0, {"lr": 0.5})["lr"] == 0.5
    with pytest.raises(UserError, match="unknown hyper-parameter.*lrr"):
        hr.get_hparams("ERM", "small", 0, {"lrr": 0.5})


def test_overrides_of_the_wrong_kind_are_rejected():
    assert hr.get_hparams("ERM", "small", 0, {"lr": 1})["lr"] == 1  # an int may stand for a float
    with pytest.raises(UserError, match="'lr' must be a finite number > 0, got \\[1\\]"):
        hr.get_hparams("ERM", "small", 0, {"lr": [1]})
    with pytest.raises(UserError,
                       match="'arch' must be one of 'small_cnn', 'mnist_cnn', 'resnet18', 'resnet50', got 3"):
        hr.get_hparams("ERM", "small", 0, {"arch": 3})


# --- contract: every registered algorithm, every profile ------------------------------------------


@pytest.mark.parametrize("profile", hr.PROFILES)
@pytest.mark.parametrize("algorithm", ALGORITHMS.names())
def test_every_algorithm_declares_valid_hparams_for_every_profile(algorithm, profile):
    declared = hr.declarations(algorithm, profile)
    common = hr.declarations("ERM", profile)
    assert common.keys() <= declared.keys()  # every algorithm has the common ones
    for spec in declared.values():
        assert spec.problem(spec.default) is None, (algorithm, profile, spec)
    for seed in range(1, 40):
        drawn = hr.random_hparams(algorithm, profile, seed)
        assert drawn.keys() == declared.keys()
        assert all(declared[name].problem(value) is None for name, value in drawn.items()), (seed, drawn)
    assert hr.get_hparams(algorithm, profile, 0) == hr.default_hparams(algorithm, profile)


def test_subclasses_inherit_their_parents_hparams():
    for name in ALGORITHMS.names():
        cls = ALGORITHMS.get(name)
        parents = [p.__name__ for p in cls.__mro__[1:] if p.__name__ in ALGORITHMS and ALGORITHMS.get(p.__name__) is p]
        for parent in parents:
            assert hr.default_hparams(parent).items() <= hr.default_hparams(name).items(), (name, parent)
    assert "ma_start_step" in hr.default_hparams("MovingAverage") and issubclass(ALGORITHMS.get("SWAD"), ERM)


# --- kinds and ranges ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "message"), [
    ("batch_size", 0, "an integer >= 1 and <= 16,384 (set DRECYCLE_MAX_BATCH to raise this limit), got 0"),
    ("batch_size", -3, "an integer >= 1 and <= 16,384 (set DRECYCLE_MAX_BATCH to raise this limit), got -3"),
    # 2.5 was once logged while 2 was used
    ("batch_size", 2.5, "an integer >= 1 and <= 16,384 (set DRECYCLE_MAX_BATCH to raise this limit), got 2.5"),
    ("batch_size", True, "an integer >= 1 and <= 16,384 (set DRECYCLE_MAX_BATCH to raise this limit), got True"),
    ("batch_size", 10**9, "an integer >= 1 and <= 16,384 (set DRECYCLE_MAX_BATCH to raise this limit), got 1000000000"),
    ("cnn_width", 100_000, "an integer >= 1 and <= 4,096 (set DRECYCLE_MAX_WIDTH to raise this limit), got 100000"),
    ("dropout", 2.0, "a finite number >= 0 and < 1, got 2.0"),
    ("dropout", 1, "a finite number >= 0 and < 1, got 1"),
    ("lr", -1e-3, "a finite number > 0, got -0.001"),
    ("lr", 0, "a finite number > 0, got 0"),
    ("lr", float("nan"), "a finite number > 0, got nan"),
    ("weight_decay", -1, "a finite number >= 0, got -1"),
    ("optimizer", "rmsprop", "one of 'adam', 'sgd', got 'rmsprop'"),
    ("data_augmentation", 1, "true or false, got 1"),
    ("lp_steps", -1, "an integer >= 0 and <= 10,000,000 (set DRECYCLE_MAX_STEPS to raise this limit), got -1"),
])
def test_a_value_outside_its_kind_or_range_is_one_line_naming_it(name, value, message):
    with pytest.raises(UserError, match=f"^hyper-parameter '{name}' must be {re.escape(message)}$") as error:
        hr.get_hparams("ERM", "small", 0, {name: value})
    assert "\n" not in str(error.value)


def test_the_edges_of_each_range_that_are_allowed_pass():
    allowed = {"batch_size": 1, "dropout": 0.0, "weight_decay": 0, "lr": 1, "optimizer": "sgd", "lp_steps": 0}
    assert hr.get_hparams("ERM", "small", 0, allowed).items() >= allowed.items()
    assert hr.get_hparams("Mixup", "small", 0, {"mixup_alpha": 1e-9})["mixup_alpha"] == 1e-9
    with pytest.raises(UserError, match="'mixup_alpha' must be a finite number > 0"):
        hr.get_hparams("Mixup", "small", 0, {"mixup_alpha": 0})


def test_kinds_say_what_they_accept():
    assert Integer(low=1).problem(1) is None and Integer(low=1).problem(1.0) == "an integer >= 1"
    assert Integer(low=0, high=3).problem(4) == "an integer >= 0 and <= 3"
    assert Real().problem(-5) is None and Real().problem("1") == "a finite number"
    assert Real(low=0, high=1, low_open=True, high_open=True).problem(0.5) is None
    assert Flag().problem(False) is None and Flag().problem(0) == "true or false"
    assert OneOf((True,)).problem(1) == "one of True"  # 1 == True, but not the same kind


# --- one override rule ----------------------------------------------------------------------------


def test_an_override_applies_to_the_algorithms_that_declare_it():
    split = hr.validate_overrides(["ERM", "CORAL"], "small", {"mmd_gamma": 2, "lr": 0.01})
    assert split == {"ERM": {"lr": 0.01}, "CORAL": {"mmd_gamma": 2, "lr": 0.01}}
    assert list(split["CORAL"]) == ["mmd_gamma", "lr"]  # the order given (it goes into job ids)
    assert hr.validate_overrides(["ERM", "ERM"], "small", {}) == {"ERM": {}}


def test_an_override_no_selected_algorithm_declares_is_an_error_naming_it():
    with pytest.raises(UserError, match=r"^unknown hyper-parameter\(s\) mmd_gamma for ERM, MovingAverage "
                                        r"\(profile small\); known: .*ma_start_step"):
        hr.validate_overrides(["ERM", "MovingAverage"], "small", {"mmd_gamma": 2, "ma_start_step": 3})
    with pytest.raises(UserError, match="unknown hyper-parameter.*cnn_width"):  # small profile only
        hr.validate_overrides(["ERM"], "resnet", {"cnn_width": 8})
    with pytest.raises(UserError, match="'mmd_gamma' must be a finite number >= 0, got -1"):
        hr.validate_overrides(["ERM", "CORAL"], "small", {"mmd_gamma": -1})
    with pytest.raises(UserError, match="unknown hyper-parameter profile 'tiny'"):
        hr.validate_overrides(["ERM"], "tiny", {})
    with pytest.raises(UserError, match="unknown algorithm 'NoSuch'"):
        hr.validate_overrides(["NoSuch"], "small", {})
