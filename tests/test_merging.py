"""Merging operators against hand-computed results on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from domainbed_recycle.merging import (
    dare,
    fisher_weighted_average,
    model_stock,
    model_stock_ratio,
    task_arithmetic,
    ties_merge,
    wise_ft,
)


def sd(w, b=None, steps=7):
    out = {"w": torch.tensor(w, dtype=torch.float32), "n": torch.tensor(steps)}
    if b is not None:
        out["b"] = torch.tensor(b, dtype=torch.float32)
    return out


THETA0 = sd([1.0, 2.0, 3.0, 4.0], [0.0], steps=7)
A = sd([2.0, 2.0, 1.0, 4.0], [1.0], steps=100)  # tau_A = [1, 0, -2, 0], [1]
B = sd([0.0, 5.0, 4.0, 4.0], [3.0], steps=200)  # tau_B = [-1, 3, 1, 0], [3]


def close(state, key, expected):
    assert torch.allclose(state[key], torch.tensor(expected, dtype=torch.float32), atol=1e-6), state[key]


def test_wise_ft_interpolates_and_keeps_base_integer_buffers():
    merged = wise_ft(THETA0, A, 0.25)
    close(merged, "w", [1.25, 2.0, 2.5, 4.0])
    close(merged, "b", [0.25])
    assert merged["n"].item() == 7 and merged["w"].dtype == torch.float32
    assert torch.equal(wise_ft(THETA0, A, 1.0)["w"], A["w"])


def test_task_arithmetic_adds_scaled_sum_of_task_vectors():
    merged = task_arithmetic(THETA0, iter([A, B]), 0.5)  # sum tau = [0, 3, -1, 0], [4]
    close(merged, "w", [1.0, 3.5, 2.5, 4.0])
    close(merged, "b", [2.0])
    assert merged["n"].item() == 7
    assert THETA0["w"].tolist() == [1.0, 2.0, 3.0, 4.0]  # inputs untouched


def test_task_arithmetic_with_one_over_k_is_the_uniform_average():
    merged = task_arithmetic(THETA0, [A, B], 0.5)
    close(merged, "w", ((A["w"] + B["w"]) / 2).tolist())


def test_task_arithmetic_refuses_a_mismatched_model():
    with pytest.raises(ValueError, match="'w'"):
        task_arithmetic(THETA0, [A, sd([1.0, 2.0], [0.0])], 1.0)


def test_ties_trims_elects_and_takes_the_disjoint_mean():
    # keep 0.4 of 5 entries -> 2 per task vector.
    # tau_A = w[1, 0, -2, 0] b[1]  -> top-2 |.|: -2 and the tie at 1 (w0, b0): ties at the threshold kept
    #       -> w[1, 0, -2, 0] b[1]
    # tau_B = w[-1, 3, 1, 0] b[3]  -> top-2: 3, 3 -> w[0, 3, 0, 0] b[3]
    # elect sign of the sums: w[+, +, -, 0] b[+]; disjoint mean: w[1, 3, -2, 0] b[(1+3)/2 = 2]
    merged = ties_merge(THETA0, [A, B], lam=1.0, keep=0.4)
    close(merged, "w", [2.0, 5.0, 1.0, 4.0])
    close(merged, "b", [2.0])
    assert merged["n"].item() == 7


def test_ties_without_trim_drops_the_minority_sign():
    # keep everything: w0 taus (1, -1) sum 0 -> sign 0 -> nothing agrees -> 0;
    # w2 taus (-2, 1) -> elected '-' -> -2; lambda 0.5 scales the merged vector
    merged = ties_merge(THETA0, [A, B], lam=0.5, keep=1.0)
    close(merged, "w", [1.0, 2.0 + 1.5, 3.0 - 1.0, 4.0])
    close(merged, "b", [0.0 + 0.5 * 2.0])


def test_dare_with_zero_drop_is_identity_and_is_seeded():
    same = list(dare(THETA0, [A, B], 0.0, seed=3))
    close(same[0], "w", A["w"].tolist())
    assert same[0]["n"].item() == 7
    big = sd([0.0] * 4000, [0.0])
    model = sd([1.0] * 4000, [1.0])
    first = next(dare(big, [model], 0.75, seed=1))["w"]
    again = next(dare(big, [model], 0.75, seed=1))["w"]
    assert torch.equal(first, again)
    assert set(first.unique().tolist()) == {0.0, 4.0}  # dropped, or rescaled by 1/(1-p)
    assert abs((first != 0).float().mean().item() - 0.25) < 0.03  # about 1-p survive
    assert not torch.equal(first, next(dare(big, [model], 0.75, seed=2))["w"])


def test_dare_matches_a_hand_drawn_mask():
    p, seed = 0.5, 11
    gen = torch.Generator().manual_seed(seed)
    mask_w = torch.rand(4, generator=gen) >= p
    mask_b = torch.rand(1, generator=gen) >= p
    (out,) = dare(THETA0, [A], p, seed)
    tau_w = torch.tensor([1.0, 0.0, -2.0, 0.0])
    close(out, "w", (THETA0["w"] + torch.where(mask_w, tau_w * 2, 0.0)).tolist())
    close(out, "b", (torch.where(mask_b, torch.tensor([2.0]), 0.0)).tolist())


def test_fisher_weighted_average_per_entry():
    fa = {"w": torch.tensor([1.0, 0.0, 3.0, 1.0]), "b": torch.tensor([1.0])}
    fb = {"w": torch.tensor([1.0, 0.0, 1.0, 1.0])}  # no 'b' Fisher: weight 1
    merged = fisher_weighted_average([A, B], [fa, fb], floor=1e-12)
    # w0: (2 + 0)/2 = 1; w1: no mass -> uniform (2 + 5)/2; w2: (3*1 + 1*4)/4 = 1.75; w3: 4; b: (1+3)/2
    close(merged, "w", [1.0, 3.5, 1.75, 4.0])
    close(merged, "b", [2.0])
    assert merged["n"].item() == 100  # non-floating entries from the first model, as averaging does


def test_fisher_needs_one_fisher_per_model():
    with pytest.raises(ValueError):
        fisher_weighted_average([A, B], [{}])


def test_model_stock_ratio_hand_values():
    assert model_stock_ratio([torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])]) == pytest.approx(1.0)
    assert model_stock_ratio([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]) == 0.0
    # cos 60 degrees = 0.5, N = 2 -> t = 2*0.5/(1+0.5) = 2/3
    d60 = torch.tensor([0.5, math.sqrt(3) / 2])
    assert model_stock_ratio([torch.tensor([1.0, 0.0]), d60]) == pytest.approx(2 / 3)
    # N = 3, pairwise cosines 1, 0.5, 0.5 -> mean 2/3 -> t = 3*(2/3)/(1+2*(2/3)) = 6/7
    assert model_stock_ratio([torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0]), d60]) == pytest.approx(6 / 7)


def test_model_stock_moves_each_layer_toward_the_mean_by_its_ratio():
    base = {"w": torch.zeros(2), "b": torch.zeros(2), "n": torch.tensor(1)}
    m1 = {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0, 0.0]), "n": torch.tensor(5)}
    m2 = {"w": torch.tensor([0.5, math.sqrt(3) / 2]), "b": torch.tensor([0.0, 1.0]), "n": torch.tensor(9)}
    merged, ratios = model_stock(base, [m1, m2])
    assert ratios == pytest.approx({"w": 2 / 3, "b": 0.0})
    close(merged, "w", [(2 / 3) * 0.75, (2 / 3) * math.sqrt(3) / 4])
    close(merged, "b", [0.0, 0.0])
    assert merged["n"].item() == 1
    with pytest.raises(ValueError, match="at least 2"):
        model_stock(base, [m1])
