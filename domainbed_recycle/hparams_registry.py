"""Hyper-parameters: each has a default and a seeded random distribution (DomainBed's recipe).

`hparams_seed == 0` gives the defaults. Each random value is drawn from its own generator seeded by
(hparams_seed, name), so adding a hyper-parameter never changes the values drawn for the others.

Adding an algorithm's hyper-parameters = one entry in `ALGORITHM_HPARAMS`: a function that calls
`define(name, default, sampler)` for each of them, where `sampler(rng)` draws from a numpy RandomState.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from domainbed_recycle.errors import UserError
from domainbed_recycle.misc import seed_hash

Sampler = Callable[[np.random.RandomState], Any]
PROFILES = ("small", "small_finetune", "resnet")
Define = Callable[[str, Any, Sampler], None]


def _log_uniform(low: float, high: float) -> Sampler:
    """10 ** U(low, high)."""
    return lambda rng: float(10 ** rng.uniform(low, high))


def _choice(values: list[Any]) -> Sampler:
    return lambda rng: values[rng.randint(len(values))]


def _common(define: Define, profile: str) -> None:
    """Hyper-parameters of every run: optimiser, batch, regularisation, architecture, LP warm-up."""
    define("optimizer", "adam", lambda rng: "adam")
    define("lp_steps", 0, lambda rng: 0)  # steps training the head alone before everything (LP-FT)
    if profile == "resnet":
        # The paper's ResNet-50 setting (Ramé et al. 2023, DiWA): Adam, batch 32, frozen BatchNorm.
        define("arch", "resnet50", lambda rng: "resnet50")
        define("freeze_bn", True, lambda rng: True)
        define("data_augmentation", True, lambda rng: True)
        define("lr", 5e-5, _choice([1e-5, 3e-5, 5e-5]))
        define("dropout", 0.0, _choice([0.0, 0.1, 0.5]))
        define("weight_decay", 0.0, _choice([1e-4, 1e-6]))
        define("batch_size", 32, lambda rng: 32)
    elif profile in ("small", "small_finetune"):
        # CPU scale: the small CNN on 3x28x28 built-ins. Fine-tuning a pre-trained featurizer
        # ("small_finetune") uses a 3x smaller learning rate range, as the ResNet ranges are for
        # fine-tuning ImageNet weights: fine-tunings stay close to their init, where averaging works.
        define("arch", "small_cnn", lambda rng: "small_cnn")
        define("cnn_width", 16, lambda rng: 16)
        define("data_augmentation", False, lambda rng: False)
        if profile == "small":
            define("lr", 1e-3, _log_uniform(-3.5, -2.5))
        else:
            define("lr", 3e-4, _log_uniform(-4.0, -3.0))
        define("dropout", 0.0, _choice([0.0, 0.1, 0.5]))
        define("weight_decay", 0.0, _choice([0.0, 1e-6, 1e-4]))
        define("batch_size", 64, lambda rng: int(2 ** rng.uniform(5, 7)))
    else:
        raise UserError(f"unknown hyper-parameter profile '{profile}'; known: {', '.join(PROFILES)}")


def _moving_average(define: Define, profile: str) -> None:
    define("ma_start_step", 100, lambda rng: 100)  # iterates averaged from this step on (DiWA's MA)


def _coral(define: Define, profile: str) -> None:
    define("mmd_gamma", 1.0, _log_uniform(-1, 1))


def _group_dro(define: Define, profile: str) -> None:
    define("groupdro_eta", 1e-2, _log_uniform(-3, -1))


def _mixup(define: Define, profile: str) -> None:
    define("mixup_alpha", 0.2, _log_uniform(-1, 1))


def _vrex(define: Define, profile: str) -> None:
    define("vrex_lambda", 1e1, _log_uniform(-1, 5))
    # DomainBed's default is 500 steps (of 5000); built-in runs last 300 steps, so 100 there.
    anneal_default = 500 if profile == "resnet" else 100
    define("vrex_penalty_anneal_iters", anneal_default, lambda rng: int(10 ** rng.uniform(0, 4)))


def _swad(define: Define, profile: str) -> None:
    # SWAD (Cha et al. 2021) defaults: converge/tolerance windows counted in evaluations.
    define("swad_n_converge", 3, lambda rng: 3)
    define("swad_n_tolerance", 6, lambda rng: 6)
    define("swad_tolerance_ratio", 0.3, lambda rng: 0.3)


# algorithm name -> its own hyper-parameters (on top of `_common`)
ALGORITHM_HPARAMS: dict[str, Callable[[Define, str], None]] = {
    "ERM": lambda define, profile: None,
    "MovingAverage": _moving_average,
    "CORAL": _coral,
    "GroupDRO": _group_dro,
    "Mixup": _mixup,
    "VREx": _vrex,
    "SWAD": _swad,
}


def _collect(algorithm: str, profile: str, seed: int | None) -> dict[str, Any]:
    values: dict[str, Any] = {}

    def define(name: str, default: Any, sampler: Sampler) -> None:
        if name in values:
            raise ValueError(f"hyper-parameter '{name}' defined twice")
        if seed is None:
            values[name] = default
        else:
            values[name] = sampler(np.random.RandomState(seed_hash(seed, name)))

    _common(define, profile)
    ALGORITHM_HPARAMS.get(algorithm, lambda define, profile: None)(define, profile)
    return values


def default_hparams(algorithm: str, profile: str = "small") -> dict[str, Any]:
    """Default hyper-parameters of `algorithm` for a dataset profile ('small' or 'resnet')."""
    return _collect(algorithm, profile, None)


def random_hparams(algorithm: str, profile: str, seed: int) -> dict[str, Any]:
    """Hyper-parameters drawn from their random distributions with `seed`."""
    return _collect(algorithm, profile, seed)


def get_hparams(
    algorithm: str, profile: str, hparams_seed: int, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """DomainBed's rule: seed 0 -> defaults, else random; then apply user `overrides` (e.g. --hparams)."""
    if hparams_seed == 0:
        hparams = default_hparams(algorithm, profile)
    else:
        hparams = random_hparams(algorithm, profile, hparams_seed)
    unknown = sorted(set(overrides or {}) - set(hparams))
    if unknown:
        raise UserError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} for {algorithm}; known: {', '.join(sorted(hparams))}"
        )
    for name, value in (overrides or {}).items():
        if not _same_kind(hparams[name], value):
            raise UserError(f"hyper-parameter '{name}' must be a {type(hparams[name]).__name__} like its default "
                            f"{hparams[name]!r}, got {value!r}")
    hparams.update(overrides or {})
    return hparams


def _same_kind(default: Any, value: Any) -> bool:
    """Whether an override can stand where `default` stood (an int may replace a float, not a bool)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, int | float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


def overrides_for(algorithm: str, profile: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The subset of `overrides` that `algorithm` defines (a spec's shared overrides may name
    hyper-parameters of only some of its algorithms, e.g. `ma_start_step`)."""
    known = default_hparams(algorithm, profile)
    return {key: value for key, value in overrides.items() if key in known}


def known_anywhere(profile: str) -> set[str]:
    """Every hyper-parameter name some registered algorithm defines (to validate shared overrides)."""
    return {name for algorithm in ALGORITHM_HPARAMS for name in default_hparams(algorithm, profile)}


def parse_overrides(text: str | None, flag: str = "--hparams") -> dict[str, Any]:
    """A `--hparams` flag's JSON object (None -> {}); UserError naming the flag if it is not one."""
    import json

    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{flag} is not valid JSON ({error.msg}): {text}") from None
    if not isinstance(value, dict):
        raise UserError(f"{flag} must be a JSON object, got: {text}")
    return value
