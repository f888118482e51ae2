"""Hyper-parameter registry: defaults at seed 0, seeded draws, per-name independence."""

from __future__ import annotations

import pytest

from domainbed_recycle import hparams_registry as hr
from domainbed_recycle.errors import UserError


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
    with pytest.raises(UserError, match="'lr' must be a float"):
        hr.get_hparams("ERM", "small", 0, {"lr": [1]})
    with pytest.raises(UserError, match="'arch' must be a str"):
        hr.get_hparams("ERM", "small", 0, {"arch": 3})
