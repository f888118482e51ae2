"""Linear mode connectivity: curve endpoints and the barrier of hand-made curves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from domainbed_recycle.lmc import DEFAULT_LAMBDAS, barrier_height, lmc_curve


def _models() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    a = nn.Linear(2, 3).state_dict()
    b = nn.Linear(2, 3).state_dict()
    return a, b


def _accuracy_fn():
    """Accuracy of a linear classifier on a fixed random batch (deterministic)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)

    def evaluate(sd):
        logits = x @ sd["weight"].T + sd["bias"]
        return float((logits.argmax(1) == y).float().mean())

    return evaluate


def test_endpoints_are_the_two_models_accuracies():
    a, b = _models()
    evaluate = _accuracy_fn()
    curve = lmc_curve(a, b, evaluate)
    assert [lam for lam, _ in curve] == list(DEFAULT_LAMBDAS)
    assert curve[0] == (0.0, evaluate(a))
    assert curve[-1] == (1.0, evaluate(b))


def test_curve_on_scalar_models_follows_the_interpolation():
    # θ(λ) = (1-λ)*0 + λ*4 = 4λ; "accuracy" = θ, so the curve is (λ, 4λ).
    a, b = {"w": torch.tensor([0.0])}, {"w": torch.tensor([4.0])}
    curve = lmc_curve(a, b, lambda sd: sd["w"].item(), lambdas=[0.0, 0.25, 1.0])
    assert curve == [(0.0, 0.0), (0.25, 1.0), (1.0, 4.0)]


def test_barrier_of_hand_curves():
    # Line from acc(0)=0.8 to acc(1)=0.6: at λ=0.5 the line is 0.7; acc(0.5)=0.3 -> barrier 0.4.
    # At λ=0.25: line 0.75, acc 0.7 -> 0.05. Max = 0.4.
    curve = [(0.0, 0.8), (0.25, 0.7), (0.5, 0.3), (1.0, 0.6)]
    assert barrier_height(curve) == pytest.approx(0.4)
    # Order does not matter.
    assert barrier_height(list(reversed(curve))) == pytest.approx(0.4)
    # A small dip of 0.05 below the line; then linearly connected (on or above the line) -> 0.
    assert barrier_height([(0.0, 0.8), (0.5, 0.65), (1.0, 0.6)]) == pytest.approx(0.05)
    assert barrier_height([(0.0, 0.8), (0.5, 0.7), (1.0, 0.6)]) == pytest.approx(0.0)
    assert barrier_height([(0.0, 0.8), (0.5, 0.9), (1.0, 0.6)]) == 0.0
    # Points outside [0, 1] (extrapolation) are ignored.
    assert barrier_height([(-0.5, 0.0), (0.0, 0.8), (1.0, 0.6), (1.5, 0.0)]) == 0.0


def test_barrier_needs_endpoints():
    with pytest.raises(ValueError, match="endpoints"):
        barrier_height([(0.0, 0.8), (0.5, 0.3)])
    with pytest.raises(ValueError, match="twice"):
        barrier_height([(0.0, 0.8), (0.0, 0.7), (1.0, 0.6)])
