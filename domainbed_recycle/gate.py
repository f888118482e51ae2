"""The merge gate: may a contributed model join a weight average? (before recycling it)

Two checks, each refusal a one-line reason:
1. it shares the foundation: same keys and shapes as the soup, and its featurizer's relative distance
   ``‖φ − φ0‖ / ‖φ0‖`` to the foundation's featurizer φ0 is at most `max_distance` (a fine-tuning of φ0
   stays near it; a model trained from another initialisation is about √2 away);
2. its linear path to the current soup has no validation barrier (`lmc.barrier_height`) above
   `max_barrier` (weight averaging needs linear mode connectivity).
No dataset code here: the caller passes ``evaluate(state dict) -> validation accuracy``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from domainbed_recycle.averaging import StateDict, _is_averaged, check_compatible, interpolate
from domainbed_recycle.lmc import barrier_height

DEFAULT_MAX_DISTANCE = 1.0  # relative featurizer distance to φ0
DEFAULT_MAX_BARRIER = 0.05  # validation accuracy (fraction) lost along the path, above the chord


@dataclass(frozen=True)
class GateVerdict:
    """Whether a model may join the average; `reason` is a one-line explanation when refused ("" if not)."""

    accepted: bool
    reason: str = ""
    distance: float | None = None
    barrier: float | None = None


def featurizer_distance(state: StateDict, phi0: Mapping[str, torch.Tensor]) -> float:
    """Relative L2 distance ``‖φ − φ0‖ / ‖φ0‖`` over φ0's floating entries (keys as in `state`).

    Raises:
        ValueError: a key of φ0 missing from `state` or of another shape.
    """
    check_compatible(phi0, {key: state[key] for key in phi0 if key in state}, 1)
    diff, norm = 0.0, 0.0
    for key, ref in phi0.items():
        if _is_averaged(ref):
            ref64 = ref.detach().double()
            diff += float((state[key].detach().double() - ref64).pow(2).sum())
            norm += float(ref64.pow(2).sum())
    return math.sqrt(diff) / math.sqrt(norm) if norm > 0 else math.inf


def foundation_gate(featurizer: StateDict, phi0: Mapping[str, torch.Tensor],
                    max_distance: float = DEFAULT_MAX_DISTANCE) -> GateVerdict:
    """Does `featurizer` share the foundation? φ0's keys and shapes, relative distance ≤ `max_distance`.

    The first half of `merge_gate`, and all of `drecycle import --gate` (an imported fine-tuning has
    no head for the target task, so no validation path to a soup yet). Keys as in φ0 (with or without
    the ``featurizer.`` prefix, as long as both agree); extra keys of `featurizer` are ignored here.
    """
    try:
        distance = featurizer_distance(featurizer, phi0)
    except ValueError as error:
        return GateVerdict(False, f"not the foundation's featurizer: {str(error).split(': ', 1)[-1]}")
    if not distance <= max_distance:
        return GateVerdict(False, f"featurizer is {distance:.3g} (relative) from the foundation's, above "
                                  f"{max_distance:g}: not a fine-tuning of it", distance=distance)
    return GateVerdict(True, "", distance=distance)


def merge_gate(
    candidate: StateDict,
    soup: StateDict,
    phi0: Mapping[str, torch.Tensor],
    evaluate: Callable[[StateDict], float],
    *,
    soup_acc: float | None = None,
    candidate_acc: float | None = None,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    max_barrier: float = DEFAULT_MAX_BARRIER,
    lambdas: Sequence[float] = (0.5,),
) -> GateVerdict:
    """Check a candidate before it joins `soup` (the current average, or the first accepted model).

    Args:
        phi0: the foundation's featurizer with the model's key names (``featurizer.*``).
        evaluate: state dict -> validation accuracy (training domains only).
        soup_acc, candidate_acc: the endpoints' validation accuracies if already known (saves two
            evaluations); evaluated otherwise.
        lambdas: interior points of the path evaluated (each one evaluation).
    """
    try:
        check_compatible(soup, candidate, 1)
    except ValueError as error:
        return GateVerdict(False, f"not the soup's architecture: {str(error).split(': ', 1)[-1]}")
    verdict = foundation_gate(candidate, phi0, max_distance)
    if not verdict.accepted:
        return verdict
    distance = verdict.distance
    acc0 = float(evaluate(soup)) if soup_acc is None else float(soup_acc)
    acc1 = float(evaluate(candidate)) if candidate_acc is None else float(candidate_acc)
    curve = [(0.0, acc0), (1.0, acc1)] + [(float(lam), float(evaluate(interpolate(soup, candidate, lam))))
                                          for lam in lambdas]
    barrier = barrier_height(curve)
    if barrier > max_barrier:
        return GateVerdict(False, f"validation barrier {barrier:.3f} on the path to the soup, above {max_barrier:g}",
                           distance=distance, barrier=barrier)
    return GateVerdict(True, "", distance=distance, barrier=barrier)
