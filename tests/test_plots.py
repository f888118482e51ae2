"""Plots: non-empty PNG files and the numbers of the linear fit."""

from __future__ import annotations

import math

import pytest

from domainbed_recycle.plots import (
    linear_fit,
    plot_acc_vs_num_models,
    plot_claims,
    plot_diversity_vs_accuracy,
    plot_lmc_curves,
    plot_within_cells,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_acc_vs_num_models(tmp_path):
    curves = {
        "uniform": [(1, 0.80), (2, 0.82), (4, 0.84)],
        "greedy": [(1, 0.80), (2, 0.83), (3, 0.85)],
    }
    out = plot_acc_vs_num_models(curves, tmp_path / "sub" / "acc.png")
    assert out == tmp_path / "sub" / "acc.png"
    assert _is_png(out)


def test_lmc_curves(tmp_path):
    curves = {"a-b": [(0.0, 0.8), (0.5, 0.3), (1.0, 0.6)], "a-c": [(0.0, 0.8), (1.0, 0.82), (0.5, 0.85)]}
    out = plot_lmc_curves(curves, tmp_path / "lmc.png")
    assert _is_png(out)


def test_diversity_vs_accuracy_perfect_line(tmp_path):
    # acc = 0.5 + 0.1 * x (fraction) -> 50 + 10 x (%): slope 10 percentage points per unit, r = 1.
    x = [0.0, 1.0, 2.0, 3.0]
    y = [0.5, 0.6, 0.7, 0.8]
    out, slope, r, p = plot_diversity_vs_accuracy(x, y, ["m0", "m1", "m2", "m3"], tmp_path / "div.png")
    assert _is_png(out)
    assert slope == pytest.approx(10.0)
    assert r == pytest.approx(1.0)
    assert p < 1e-6


def test_diversity_vs_accuracy_negative_correlation_without_labels(tmp_path):
    out, slope, r, p = plot_diversity_vs_accuracy([0, 1, 2], [0.9, 0.8, 0.7], None, tmp_path / "d.png")
    assert _is_png(out)
    assert slope == pytest.approx(-10.0)
    assert r == pytest.approx(-1.0)


def test_linear_fit_hand_values():
    # points (0, 1), (1, 3), (2, 2): x̄ = 1, ȳ = 2; Sxy = (-1)(-1) + 0 + (1)(0) = 1; Sxx = 2
    # slope = 1/2, intercept = 2 - 0.5 = 1.5; Syy = 1 + 1 + 0 = 2; r = 1 / sqrt(2 * 2) = 0.5
    slope, intercept, r, p = linear_fit([0, 1, 2], [1, 3, 2])
    assert (slope, intercept) == pytest.approx((0.5, 1.5))
    assert r == pytest.approx(0.5)
    assert 0.0 < p < 1.0
    # Degenerate inputs: constant x -> all nan; constant y -> flat line, r undefined.
    assert all(math.isnan(v) for v in linear_fit([1, 1, 1], [0, 1, 2]))
    s, i, r, p = linear_fit([0, 1, 2], [5, 5, 5])
    assert (s, i) == (0.0, 5.0) and math.isnan(r) and math.isnan(p)


def test_percent_inputs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\]"):
        plot_lmc_curves({"a-b": [(0.0, 80.0), (1.0, 60.0)]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="labels"):
        plot_diversity_vs_accuracy([0, 1], [0.5, 0.6], ["a"], tmp_path / "y.png")


def test_curves_with_intervals_draw_error_bars(tmp_path):
    curves = {"uniform": [(1, 0.80, 0.75, 0.85), (2, 0.82, 0.80, 0.84)], "greedy": [(1, 0.8, 0.7, 0.9)]}
    assert _is_png(plot_acc_vs_num_models(curves, tmp_path / "acc.png"))
    with pytest.raises(ValueError, match="lower bounds of 'bad'"):  # bounds in percent are caught
        plot_lmc_curves({"bad": [(0.0, 0.5, 40.0, 0.6)]}, tmp_path / "bad.png")


def test_claims_and_within_cell_plots(tmp_path):
    claims = [
        {"claim": "a > b", "estimate": 1.0, "low": 0.2, "high": 1.8, "threshold": 0.0, "unit": "points",
         "verdict": "supported"},
        {"claim": "c > d", "estimate": -0.5, "low": None, "high": None, "threshold": 0.0, "unit": "points",
         "verdict": "inconclusive"},
        {"claim": "r > 0", "estimate": 0.3, "low": -0.1, "high": 0.6, "threshold": 0.0, "unit": "r",
         "verdict": "inconclusive"},
    ]
    assert _is_png(plot_claims(claims, tmp_path / "claims.png"))
    series = {"pool": ([-0.1, 0.0, 0.1], [-0.01, 0.0, 0.02])}
    assert _is_png(plot_within_cells(series, {"pool": "r = 0.9"}, tmp_path / "w.png", "x", "y", "t"))
