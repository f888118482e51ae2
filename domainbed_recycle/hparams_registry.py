"""Hyper-parameters: each has a default, a seeded random distribution (DomainBed's recipe), a kind
and a range.

`hparams_seed == 0` gives the defaults. Otherwise, as in DomainBed's and the Ratatouille reference's
`train.py`, the draw is seeded by `seed_hash(hparams_seed, trial_seed)`, so each trial draws its own
hyper-parameters; each value comes from its own generator seeded by (that seed, name), so adding a
hyper-parameter never changes the values drawn for the others.

This module holds the hyper-parameters every run has (`_common`), the profiles, the seeded drawing
and the override rule; each algorithm declares its own in `Algorithm.define_hparams` (see
`hparams_spec` for `define(name, default, sampler, kind)`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from domainbed_recycle.algorithms import get_algorithm_class
from domainbed_recycle.algorithms.base import LP_STEPS, OPTIMIZERS
from domainbed_recycle.errors import UserError
from domainbed_recycle.hparams_spec import Define, Flag, HParam, Integer, OneOf, Real, choice, log_uniform
from domainbed_recycle.misc import domainbed_seed_hash, seed_hash
from domainbed_recycle.networks import ARCHITECTURES

PROFILES = ("small", "small_finetune", "resnet", "resnet_scratch", "mnist")
# The profile a run gets when none is named: its network, trained from scratch or from pre-trained
# weights (`default_profile`). A dataset's own profile without such a pair is kept as it is.
_PROFILE_OF = {("small_cnn", False): "small", ("small_cnn", True): "small_finetune",
               ("resnet", True): "resnet", ("resnet", False): "resnet_scratch"}
_ARCH_OF = {"small": "small_cnn", "small_finetune": "small_cnn", "resnet": "resnet50", "resnet_scratch": "resnet50"}
# Profiles whose random draws use DomainBed's own `seed_hash` (md5 of str), so that they equal DomainBed's
# for the same (hparams seed, trial seed); the others keep this project's (md5 of JSON).
DOMAINBED_DRAWS = ("mnist",)


def _hash(profile: str) -> Any:
    return domainbed_seed_hash if profile in DOMAINBED_DRAWS else seed_hash


POSITIVE = Real(low=0, low_open=True)
NON_NEGATIVE = Real(low=0)
PROBABILITY = Real(low=0, high=1, high_open=True)  # dropout: 1 would drop everything


def _common(define: Define, profile: str) -> None:
    """Hyper-parameters of every run: optimiser, batch, regularisation, architecture, LP warm-up."""
    define("optimizer", "adam", None, OneOf(OPTIMIZERS))
    # steps training the head alone before everything (LP-FT)
    define("lp_steps", LP_STEPS, None, Integer(low=0, limit="steps"))
    if profile == "resnet":
        # The paper's ResNet-50 setting (Ramé et al. 2023, DiWA): Adam, batch 32, frozen BatchNorm.
        define("arch", "resnet50", None, OneOf(ARCHITECTURES))
        define("freeze_bn", True, None, Flag())
        define("data_augmentation", True, None, Flag())
        define("lr", 5e-5, choice([1e-5, 3e-5, 5e-5]), POSITIVE)
        define("dropout", 0.0, choice([0.0, 0.1, 0.5]), PROBABILITY)
        define("weight_decay", 0.0, choice([1e-4, 1e-6]), NON_NEGATIVE)
        define("batch_size", 32, None, Integer(low=1, limit="batch"))
    elif profile == "resnet_scratch":
        # A ResNet trained from a random init (`--pretrained none`): BatchNorm learns its statistics
        # (frozen random statistics would never become the data's), and the step sizes of DomainBed's
        # networks trained from scratch (its MNIST ranges: 1e-3, 10^U(-4.5, -2.5)).
        define("arch", "resnet50", None, OneOf(ARCHITECTURES))
        define("freeze_bn", False, None, Flag())
        define("data_augmentation", True, None, Flag())
        define("lr", 1e-3, log_uniform(-4.5, -2.5), POSITIVE)
        define("dropout", 0.0, choice([0.0, 0.1, 0.5]), PROBABILITY)
        define("weight_decay", 0.0, log_uniform(-6, -2), NON_NEGATIVE)
        define("batch_size", 32, None, Integer(low=1, limit="batch"))
    elif profile in ("small", "small_finetune"):
        # CPU scale: the small CNN on 3x28x28 built-ins. Fine-tuning a pre-trained featurizer
        # ("small_finetune") mirrors the shape of the paper's ResNet-50 ranges: a narrow learning-rate
        # set whose default is its top (the paper: {1, 3, 5}e-5, default 5e-5) and a fixed batch, so the
        # runs of a soup differ in regularisation and seeds, not in how far they trained. Measured on
        # TextureMNIST (300 steps): at 2e-4..5e-4 runs were still improving at their last step and the
        # best were the 5e-4 ones (regime notes in README's built-in benchmark section). Batch 32 per
        # domain, as the paper's.
        define("arch", "small_cnn", None, OneOf(ARCHITECTURES))
        define("cnn_width", 16, None, Integer(low=1, limit="width"))
        define("data_augmentation", False, None, Flag())
        if profile == "small":
            define("lr", 1e-3, log_uniform(-3.5, -2.5), POSITIVE)
        else:
            define("lr", 1e-3, choice([5e-4, 7e-4, 1e-3]), POSITIVE)
        define("dropout", 0.0, choice([0.0, 0.1, 0.5]), PROBABILITY)
        define("weight_decay", 0.0, choice([0.0, 1e-6, 1e-4]), NON_NEGATIVE)
        if profile == "small":
            define("batch_size", 64, lambda rng: int(2 ** rng.uniform(5, 7)), Integer(low=1, limit="batch"))
        else:  # the paper's batch: 32 images per training domain
            define("batch_size", 32, None, Integer(low=1, limit="batch"))
    elif profile == "mnist":
        # DomainBed's values for its small images (RotatedMNIST, ColoredMNIST) and its MNIST_CNN, drawn
        # as DomainBed draws them (same names, so the same seeded draws): lr 1e-3 or 10^U(-4.5, -2.5),
        # no weight decay, batch 64 or int(2^U(3, 9)); no dropout (DomainBed's is for ResNets only).
        define("arch", "mnist_cnn", None, OneOf(ARCHITECTURES))
        define("lr", 1e-3, log_uniform(-4.5, -2.5), POSITIVE)
        define("dropout", 0.0, None, PROBABILITY)
        define("weight_decay", 0.0, None, NON_NEGATIVE)
        define("batch_size", 64, lambda rng: int(2 ** rng.uniform(3, 9)), Integer(low=1, limit="batch"))
    else:
        raise UserError(f"unknown hyper-parameter profile '{profile}'; known: {', '.join(PROFILES)}")


def network_family(arch: str) -> str:
    """'resnet' for resnet18/resnet50, else the architecture's own name."""
    return "resnet" if arch.startswith("resnet") else arch


def profile_network(profile: str) -> str | None:
    """The architecture a profile builds by default (None for a profile this module does not pair)."""
    return _ARCH_OF.get(profile)


def default_profile(dataset_profile: str, arch: str | None, pretrained: bool) -> str:
    """The profile of a run that names none: its network (the `arch` override, else the dataset's)
    trained from scratch or from pre-trained weights: small CNN -> 'small' / 'small_finetune', ResNet
    -> 'resnet_scratch' / 'resnet' (the paper's). A dataset profile this rule does not pair is kept."""
    arch = arch or _ARCH_OF.get(dataset_profile)
    if arch is None:
        return dataset_profile
    return _PROFILE_OF.get((network_family(arch), pretrained), dataset_profile)


def declarations(algorithm: str, profile: str) -> dict[str, HParam]:
    """Every hyper-parameter of `algorithm` under `profile`, in declaration order (common ones first)."""
    return dict(_declarations(get_algorithm_class(algorithm), profile))


@functools.lru_cache(maxsize=256)
def _declarations(algorithm_class: type, profile: str) -> dict[str, HParam]:
    """`declarations`, made once per (class, profile): a plan of thousands of runs asks for them per run."""
    declared: dict[str, HParam] = {}

    def define(name: str, default: Any, sampler: Any, kind: Any) -> None:
        if name in declared:
            raise ValueError(f"hyper-parameter '{name}' defined twice ({algorithm_class.__name__}, profile {profile})")
        declared[name] = HParam(name, default, sampler, kind)

    _common(define, profile)
    algorithm_class.define_hparams(define, profile)
    return declared


def _values(algorithm: str, profile: str, seed: int | None) -> dict[str, Any]:
    values = {}
    for name, spec in declarations(algorithm, profile).items():
        if seed is None or spec.sampler is None:
            values[name] = spec.default
        else:
            values[name] = spec.sampler(np.random.RandomState(_hash(profile)(seed, name)))
    return values


def default_hparams(algorithm: str, profile: str = "small") -> dict[str, Any]:
    """Default hyper-parameters of `algorithm` for a profile (one of `PROFILES`)."""
    return _values(algorithm, profile, None)


def random_hparams(algorithm: str, profile: str, seed: int) -> dict[str, Any]:
    """Hyper-parameters drawn from their random distributions with `seed`."""
    return _values(algorithm, profile, seed)


def get_hparams(
    algorithm: str, profile: str, hparams_seed: int, overrides: Mapping[str, Any] | None = None,
    trial_seed: int = 0,
) -> dict[str, Any]:
    """DomainBed's rule: seed 0 -> defaults, else random with seed `seed_hash(hparams_seed, trial_seed)`;
    then apply user `overrides` (e.g. --hparams).

    Every value is checked against its declared kind and range (UserError naming the first bad one).
    """
    hparams = _values(algorithm, profile, _hash(profile)(hparams_seed, trial_seed) if hparams_seed else None)
    hparams.update(validate_overrides([algorithm], profile, overrides or {})[algorithm])
    declared = declarations(algorithm, profile)
    for name, value in hparams.items():
        problem = declared[name].problem(value)
        if problem:
            raise UserError(f"{problem} ({algorithm}, hparams seed {hparams_seed})")
    return hparams


def validate_overrides(
    algorithms: Sequence[str], profile: str, overrides: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The one override rule: which of `overrides` each of `algorithms` takes, checked once.

    An override that no algorithm of `algorithms` declares under `profile` is an error naming it;
    one that some declare applies to those only; a value outside its declared kind or range is an
    error. Returns {algorithm: its overrides, in the order given}.
    """
    declared = {algorithm: declarations(algorithm, profile) for algorithm in dict.fromkeys(algorithms)}
    unknown = [name for name in overrides if not any(name in names for names in declared.values())]
    if unknown:
        known = sorted({name for names in declared.values() for name in names})
        raise UserError(f"unknown hyper-parameter(s) {', '.join(unknown)} for {', '.join(declared)} "
                        f"(profile {profile}); known: {', '.join(known)}")
    for name, value in overrides.items():
        spec = next(names[name] for names in declared.values() if name in names)
        problem = spec.problem(value)
        if problem:
            raise UserError(problem)
    return {algorithm: {name: value for name, value in overrides.items() if name in names}
            for algorithm, names in declared.items()}


def parse_overrides(text: str | None, flag: str = "--hparams") -> dict[str, Any]:
    """A `--hparams` flag's JSON object (None -> {}); UserError naming the flag if it is not one."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{flag} is not valid JSON ({error.msg}): {text}") from None
    if not isinstance(value, dict):
        raise UserError(f"{flag} must be a JSON object, got: {text}")
    return value
