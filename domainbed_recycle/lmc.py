"""Linear mode connectivity: accuracy along ``θ(λ) = (1 − λ) θ_a + λ θ_b`` and its barrier.

No dataset code here: the caller passes ``evaluate(state_dict) -> accuracy`` (e.g. loads the state dict
into a network and measures accuracy on one domain). Accuracies are in whatever unit ``evaluate``
returns (fractions in [0, 1] for DomainBed records); the barrier is in the same unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from domainbed_recycle.averaging import StateDict, check_finite, interpolate

__all__ = ["DEFAULT_LAMBDAS", "barrier_height", "lmc_curve"]

#: 11 evenly spaced points 0, 0.1, ..., 1 (endpoints exact).
DEFAULT_LAMBDAS: tuple[float, ...] = tuple(float(x) for x in np.linspace(0.0, 1.0, 11))


def lmc_curve(
    state_a: StateDict,
    state_b: StateDict,
    evaluate: Callable[[StateDict], float],
    lambdas: Iterable[float] = DEFAULT_LAMBDAS,
) -> list[tuple[float, float]]:
    """Accuracy of the interpolated model at each λ.

    ``θ(0) = θ_a`` and ``θ(1) = θ_b`` exactly (see ``averaging.interpolate``), so the endpoints are the
    two models' own accuracies. One interpolated state dict is alive at a time.

    Args:
        state_a, state_b: state dicts with the same keys and shapes.
        evaluate: state dict -> accuracy.
        lambdas: interpolation coefficients, evaluated in the given order (values outside [0, 1]
            extrapolate).

    Returns:
        ``[(λ, accuracy), ...]`` in the order of ``lambdas``.
    """
    check_finite(state_a, "model a")  # callers naming runs check first (analysis.RunInfo.state)
    check_finite(state_b, "model b")
    curve: list[tuple[float, float]] = []
    for lam in lambdas:
        lam = float(lam)
        curve.append((lam, float(evaluate(interpolate(state_a, state_b, lam)))))
    return curve


def barrier_height(curve: Sequence[tuple[float, float]]) -> float:
    """Accuracy barrier ``max_λ [(1 − λ)·acc(0) + λ·acc(1) − acc(λ)]`` over the points with λ in [0, 1].

    The drop of the interpolated model below the straight line joining the endpoints' accuracies:
    positive = a barrier (the path crosses a worse region), 0 = linearly connected (no point below the
    line). Never negative, since the endpoints themselves give 0: a path that is *above* the line
    (interpolation helps, as in weight averaging) also gives 0. Same unit as the accuracies.

    Args:
        curve: ``(λ, acc)`` pairs in any order; must contain λ = 0 and λ = 1.

    Raises:
        ValueError: missing endpoint, duplicate λ with different accuracies, or non-finite values.
    """
    points: dict[float, float] = {}
    for lam, acc in curve:
        lam, acc = float(lam), float(acc)
        if not (math.isfinite(lam) and math.isfinite(acc)):
            raise ValueError(f"non-finite point ({lam}, {acc}) in the curve")
        if lam in points and points[lam] != acc:
            raise ValueError(f"λ={lam} appears twice with accuracies {points[lam]} and {acc}")
        points[lam] = acc
    if 0.0 not in points or 1.0 not in points:
        raise ValueError("the curve must contain the endpoints λ=0 and λ=1")
    acc0, acc1 = points[0.0], points[1.0]
    return max((1.0 - lam) * acc0 + lam * acc1 - acc for lam, acc in points.items() if 0.0 <= lam <= 1.0)
