"""The merge-operator registry: declarations checked, values checked once, grids and tables made from them,
the operators' math (weights, per-tensor trim, SLERP) against hand-computed tensors."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from domainbed_recycle import averaging, merge_ops, merging
from domainbed_recycle.errors import UserError
from domainbed_recycle.merge_ops import MergeOp, Param, markdown_table, record_point, strategy_grid

REPO = Path(__file__).resolve().parents[1]


def _states(k: int = 3, seed: int = 0):
    """θ0 with two floating tensors and an integer buffer, and K fine-tuned models near it."""
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(6, 4, generator=g), "b": torch.randn(5, generator=g), "n": torch.tensor(3)}
    models = [{"w": base["w"] + 0.3 * torch.randn(6, 4, generator=g),
               "b": base["b"] + 0.3 * torch.randn(5, generator=g), "n": torch.tensor(10 + i)} for i in range(k)]
    return base, models


def test_every_operator_declares_what_the_tools_need():
    ops = merge_ops.operators()
    assert {"uniform", "task_arithmetic", "ties", "dare", "dare_ties", "model_stock", "wise_ft", "slerp"} <= {
        op.name for op in ops}
    for op in ops:
        assert op.summary and op.reference and op.url.startswith("https://"), op.name
        if op.row:
            assert op.needs_base, f"{op.name}: a strategy merges around θ0 = φ0 + probe"
        for param in op.params:
            assert param.help, (op.name, param.name)


def test_a_function_must_read_exactly_its_declared_parameters():
    with pytest.raises(ValueError, match="must read"):
        @merge_ops.merge_operator("bad_op", summary="s", reference="r", params=[Param("x", float, 1.0, "x")])
        def bad_op(base, models, *, y):  # the declared 'x' is not its keyword argument
            return base
    assert "bad_op" not in merge_ops.MERGE_OPS
    with pytest.raises(ValueError, match="must be in"):  # a default outside its own range
        merge_ops.merge_operator("bad_default", summary="s", reference="r",
                                 params=[Param("x", float, 2.0, "x", low=0.0, high=1.0)])(
            lambda base, models, *, x: base)


def test_arguments_fill_defaults_broadcast_per_model_values_and_refuse_in_one_line():
    ties = merge_ops.get("ties")
    args = ties.arguments(3)
    assert args == {"lam": 1.0, "keep": [0.2] * 3, "weight": [1.0] * 3, "trim": "model"}
    args = ties.arguments(3, {"keep": [0.5]}, [{}, {"keep": 0.9, "weight": 2.0}, {}])
    assert args["keep"] == [0.5, 0.9, 0.5] and args["weight"] == [1.0, 2.0, 1.0]
    assert merge_ops.get("task_arithmetic").arguments(4)["lam"] == 0.25  # per_k default: 1/K
    cases = [
        (ties, 2, {"keep": 0}, None, "keep must be in (0, 1], got 0"),
        (ties, 2, {"keep": [0.1, 0.2, 0.3]}, None, "got 3 values for 2 models"),
        (ties, 2, {"alpha": 0.5}, None, "ties has no parameter 'alpha'"),
        (ties, 2, None, [{"lam": 2.0}, {}], "'lam' is not a per-model parameter"),
        (ties, 2, {"trim": "layer"}, None, "trim must be one of model, tensor"),
        (ties, 2, {"lam": float("nan")}, None, "lam must be finite"),
        (merge_ops.get("dare"), 2, {"seed": 1.5}, None, "seed must be an integer"),
        (merge_ops.get("model_stock"), 1, None, None, "at least 2"),
        (merge_ops.get("wise_ft"), 2, None, None, "takes 1 fine-tuned model"),
    ]
    for op, k, given, per_model, message in cases:
        with pytest.raises(UserError) as error:
            op.arguments(k, given, per_model)
        assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


@pytest.mark.parametrize("op", [op for op in merge_ops.operators() if op.scale_param], ids=lambda op: op.name)
def test_a_scale_parameter_is_linear_around_the_base(op: MergeOp):
    """What lets a strategy merge once and interpolate: θ(g) = θ0 + g/u · (θ(u) − θ0)."""
    base, models = _states(k=op.max_models or 3)
    scale = op.scale_param
    unit = 1.0 / len(models) if scale.per_k else 1.0
    at_unit, _ = op(base, models, **op.arguments(len(models), {scale.name: unit}))
    for g in (0.3, 1.7):
        direct, _ = op(base, models, **op.arguments(len(models), {scale.name: g * unit}))
        via = averaging.interpolate(base, at_unit, g)
        for key in ("w", "b"):
            assert torch.allclose(direct[key], via[key], atol=1e-6), (op.name, key)


def test_the_operators_equal_the_math_functions_they_declare_bit_for_bit():
    base, models = _states()
    pairs = [
        ("task_arithmetic", {}, merging.task_arithmetic(base, models, 1 / 3)),
        ("ties", {"keep": 0.4, "lam": 1.3}, merging.ties_merge(base, models, 1.3, 0.4)),
        ("dare", {"p": 0.4, "seed": 7}, merging.task_arithmetic(base, merging.dare(base, models, 0.4, 7), 1 / 3)),
        ("dare_ties", {"seed": 3}, merging.ties_merge(base, list(merging.dare(base, models, 0.5, 3)), 1.0, 0.2)),
        ("model_stock", {}, merging.model_stock(base, models)[0]),
        ("uniform", {}, averaging.uniform_average(models)),
    ]
    for name, given, expected in pairs:
        op = merge_ops.get(name)
        merged, _ = op(base if op.needs_base else None, models, **op.arguments(3, given))
        assert all(torch.equal(merged[key], expected[key]) for key in expected), name


def test_strategy_grid_varies_the_scale_fastest_and_records_s_over_k():
    ties, dare = merge_ops.get("ties"), merge_ops.get("dare")
    grid = strategy_grid(ties)
    assert grid[:4] == [{"keep": 0.2, "lam": 0.5}, {"keep": 0.2, "lam": 1.0}, {"keep": 0.2, "lam": 1.5},
                        {"keep": 0.5, "lam": 0.5}] and len(grid) == 9
    assert record_point(ties, grid[0], 4) == {"keep": 0.2, "lambda": 0.5}
    assert record_point(dare, strategy_grid(dare)[1], 4) == {"p": 0.3, "s": 1.0, "lambda": 0.25}
    assert strategy_grid(merge_ops.get("model_stock")) == []


def test_readme_lists_every_operator_as_the_registry_declares_it():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = markdown_table(merge_ops.operators())
    assert table in readme, "README's operator table differs from `drecycle merge --list` (paste its output)"
    for op in merge_ops.operators():
        assert re.search(rf"\| `{op.name}` \|", table)


def test_building_the_command_line_imports_no_torch():
    code = ("import sys\nfrom domainbed_recycle import merge_ops\nfrom domainbed_recycle.cli import build_parser\n"
            "build_parser()\nassert merge_ops.operators()\nassert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---- the math the new options added, against hand-computed tensors ----

THETA0 = {"w": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([0.0])}
A = {"w": torch.tensor([2.0, 2.0, 1.0, 4.0]), "b": torch.tensor([1.0])}  # tau_A = w[1, 0, -2, 0] b[1]
B = {"w": torch.tensor([0.0, 5.0, 4.0, 4.0]), "b": torch.tensor([3.0])}  # tau_B = w[-1, 3, 1, 0] b[3]


def test_task_arithmetic_weights_scale_each_task_vector():
    merged = merging.task_arithmetic(THETA0, [A, B], 1.0, weights=[2.0, 0.5])  # 2 tau_A + 0.5 tau_B
    assert merged["w"].tolist() == [2.5, 3.5, -0.5, 4.0] and merged["b"].tolist() == [3.5]
    with pytest.raises(ValueError, match="2 models but 3 weights"):
        merging.task_arithmetic(THETA0, [A, B], 1.0, weights=[1.0, 1.0, 1.0])


def test_weighted_ties_takes_the_weighted_mean_of_the_agreeing_entries():
    # keep all; weights (3, 1): elected sign of 3 tau_A + tau_B = w[+2, +3, -5, 0] b[+6]
    # w0: only A agrees -> 3*1/3 = 1; w1: only B -> 3; w2: only A -> -2; b: (3*1 + 1*3)/(3 + 1) = 1.5
    merged = merging.ties_merge(THETA0, [A, B], lam=1.0, keep=1.0, weights=[3.0, 1.0])
    assert merged["w"].tolist() == [2.0, 5.0, 1.0, 4.0] and merged["b"].tolist() == [1.5]


def test_ties_trims_within_each_tensor_when_asked():
    # keep 0.4 of each tensor: w keeps ceil(1.6) = 2 of 4 entries, b its one entry.
    # tau_A w[1, 0, -2, 0] keeps -2 and 1; tau_B w[-1, 3, 1, 0] keeps 3 and the tie |-1| = |1| (ties kept)
    # elect: w0 1 - 1 = 0 (nothing agrees); w1 3; w2 -2 + 1 -> '-' -> -2; b (1 + 3)/2
    merged = merging.ties_merge(THETA0, [A, B], lam=1.0, keep=0.4, trim="tensor")
    assert merged["w"].tolist() == [1.0, 5.0, 1.0, 4.0] and merged["b"].tolist() == [2.0]
    # over the whole vector (5 entries, 2 kept), tau_B keeps only its two 3s, so w0 gets tau_A's +1
    assert merging.ties_merge(THETA0, [A, B], lam=1.0, keep=0.4)["w"].tolist() == [2.0, 5.0, 1.0, 4.0]


def test_dare_with_given_masks_drops_and_rescales_exactly_those_entries():
    masks = {"w": torch.tensor([True, False, True, True]), "b": torch.tensor([False])}
    out = merging.drop_and_rescale(THETA0, A, masks, p=0.75)  # survivors x4
    assert out["w"].tolist() == [5.0, 2.0, -5.0, 4.0] and out["b"].tolist() == [0.0]
    g = torch.Generator().manual_seed(5)
    drawn = merging.dare_masks(THETA0, 0.5, g)
    (again,) = merging.dare(THETA0, [A], 0.5, seed=5)
    assert torch.equal(again["w"], merging.drop_and_rescale(THETA0, A, drawn, 0.5)["w"])


def test_slerp_follows_the_arc_and_falls_back_to_a_line_for_colinear_tensors():
    a, b = {"x": torch.tensor([1.0, 0.0]), "n": torch.tensor(1)}, {"x": torch.tensor([0.0, 2.0]), "n": torch.tensor(2)}
    half = merging.slerp(a, b, 0.5)  # 90 degrees apart: sin(45°)/sin(90°) of each
    assert torch.allclose(half["x"], torch.tensor([math.sqrt(0.5), 2 * math.sqrt(0.5)]))
    assert half["n"].item() == 1
    assert torch.equal(merging.slerp(a, b, 0.0)["x"], a["x"]) and torch.allclose(merging.slerp(a, b, 1.0)["x"], b["x"])
    c = {"x": torch.tensor([3.0, 0.0]), "n": torch.tensor(1)}  # colinear with a: linear interpolation
    assert torch.allclose(merging.slerp(a, c, 0.25)["x"], torch.tensor([1.5, 0.0]))
