"""Weight averaging: hand-checkable cases for uniform/weighted averages, greedy soups, RunningAverage."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from domainbed_recycle.averaging import (
    RunningAverage,
    fusing_weights,
    greedy_soup,
    interpolate,
    prefix_averages,
    uniform_average,
    weighted_average,
)


def _linear(seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(4, 3)


def _bn_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    net.train()
    net(torch.randn(8, 2) * (seed + 1))  # moves running stats, num_batches_tracked = 1
    return net


def _scalar(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([v])}


# ---------------------------------------------------------------- uniform / weighted


def test_average_of_identical_models_is_that_model():
    sd = _bn_net(0).state_dict()
    avg = uniform_average([sd, sd, sd])
    assert list(avg) == list(sd)
    for k in sd:
        assert avg[k].dtype == sd[k].dtype
        torch.testing.assert_close(avg[k], sd[k], rtol=0, atol=0)


def test_uniform_average_is_parameter_mean_of_three_linears():
    sds = [_linear(s).state_dict() for s in range(3)]
    avg = uniform_average(sds)
    for k in ("weight", "bias"):
        expected = (sds[0][k] + sds[1][k] + sds[2][k]) / 3
        torch.testing.assert_close(avg[k], expected)


def test_uniform_average_on_hand_values():
    # (1 + 2 + 6) / 3 = 3
    avg = uniform_average([_scalar(1.0), _scalar(2.0), _scalar(6.0)])
    assert avg["w"].item() == 3.0


def test_streaming_generator_matches_list_and_inputs_untouched():
    sds = [_linear(s).state_dict() for s in range(4)]
    before = {k: v.clone() for k, v in sds[0].items()}
    loaded: list[int] = []

    def lazily():
        for i in range(4):
            loaded.append(i)
            yield _linear(i).state_dict()

    gen = uniform_average(lazily())
    lst = uniform_average(sds)
    assert loaded == [0, 1, 2, 3]
    for k in lst:
        torch.testing.assert_close(gen[k], lst[k], rtol=0, atol=0)
    for k in before:
        assert torch.equal(sds[0][k], before[k])


def test_integer_buffers_come_from_first_model_and_floats_are_averaged():
    a, b = _bn_net(0).state_dict(), _bn_net(1).state_dict()
    b["1.num_batches_tracked"] = torch.tensor(7)
    avg = uniform_average([a, b])
    assert avg["1.num_batches_tracked"].dtype == torch.long
    assert avg["1.num_batches_tracked"].item() == 1
    torch.testing.assert_close(avg["1.running_mean"], (a["1.running_mean"] + b["1.running_mean"]) / 2)


def test_float64_accumulation_keeps_dtype():
    # 1e8 + 1 + (-1e8) is lost in float32 summation order; the float64 accumulator keeps it.
    sds = [{"w": torch.tensor([x], dtype=torch.float32)} for x in (1e8, 1.0, -1e8)]
    avg = uniform_average(sds)
    assert avg["w"].dtype == torch.float32
    assert avg["w"].item() == pytest.approx(1.0 / 3.0)


def test_mismatched_key_raises_with_key_and_index():
    sds = [_linear(0).state_dict(), _linear(1).state_dict(), {"weight": torch.zeros(3, 4)}]
    with pytest.raises(ValueError, match=r"#2.*'bias' is missing"):
        uniform_average(sds)
    extra = dict(_linear(1).state_dict(), extra=torch.zeros(1))
    with pytest.raises(ValueError, match=r"#1.*unexpected key 'extra'"):
        uniform_average([_linear(0).state_dict(), extra])


def test_mismatched_shape_raises_with_key_and_index():
    bad = nn.Linear(5, 3).state_dict()
    with pytest.raises(ValueError, match=r"#1.*'weight' has shape \(3, 5\), expected \(3, 4\)"):
        uniform_average([_linear(0).state_dict(), bad])


def test_empty_input_raises():
    with pytest.raises(ValueError, match="empty"):
        uniform_average([])


def test_weighted_average_normalizes_weights():
    # weights (1, 3) -> (0.25, 0.75): 0.25*2 + 0.75*6 = 5
    avg = weighted_average(iter([_scalar(2.0), _scalar(6.0)]), [1.0, 3.0])
    assert avg["w"].item() == pytest.approx(5.0)


@pytest.mark.parametrize("weights", [[1.0], [1.0, 1.0, 1.0], [-1.0, 2.0], [0.0, 0.0], [math.nan, 1.0]])
def test_weighted_average_rejects_bad_weights(weights):
    with pytest.raises(ValueError):
        weighted_average([_scalar(2.0), _scalar(6.0)], weights)


def test_fusing_weights_normalized_and_deterministic():
    w = fusing_weights(5, 3.0, rng_seed=0)
    assert len(w) == 5
    assert math.fsum(w) == pytest.approx(1.0)
    assert all(x > 0 for x in w)
    assert fusing_weights(5, 3.0, rng_seed=0) == w
    assert fusing_weights(5, 3.0, rng_seed=1) != w
    # ratio of two weights is exp(r * (u_i - u_j)) <= e^r
    assert max(w) / min(w) <= math.exp(3.0)
    assert fusing_weights(4, 0.0, rng_seed=3) == [0.25] * 4
    with pytest.raises(ValueError):
        fusing_weights(3, -1.0, rng_seed=0)


def test_interpolate_endpoints_exact_and_midpoint():
    a, b = _linear(0).state_dict(), _linear(1).state_dict()
    for k in a:
        assert torch.equal(interpolate(a, b, 0.0)[k], a[k])
        assert torch.equal(interpolate(a, b, 1.0)[k], b[k])
        torch.testing.assert_close(interpolate(a, b, 0.5)[k], (a[k] + b[k]) / 2)
    # (1 - 0.25) * 2 + 0.25 * 6 = 3
    assert interpolate(_scalar(2.0), _scalar(6.0), 0.25)["w"].item() == pytest.approx(3.0)


# ---------------------------------------------------------------- greedy soup


def test_greedy_soup_selects_expected_subset():
    # Scalar "models" θ; validation accuracy of a soup = -(θ_soup - 1)^2 (best at θ = 1).
    # val_accs ranks the candidates 0 > 1 > 2 > 3 > 4 (order by decreasing accuracy):
    #   start {0}: θ=0.5        acc=-0.25
    #   + 1 (θ=2.0): mean 1.25  acc=-0.0625 >= -0.25   -> accept
    #   + 2 (θ=9.0): mean 3.833 acc=-8.03   <  -0.0625 -> reject
    #   + 3 (θ=0.5): mean 1.0   acc=0       >= -0.0625 -> accept
    #   + 4 (θ=1.0): mean 1.0   acc=0       >= 0       -> accept (ties accepted, as DiWA's `>=`)
    thetas = [0.5, 2.0, 9.0, 0.5, 1.0]
    val_accs = [0.9, 0.8, 0.7, 0.6, 0.5]
    loaded: list[int] = []

    def load(i):
        loaded.append(i)
        return _scalar(thetas[i])

    def evaluate(sd):
        return -((sd["w"].item() - 1.0) ** 2)

    res = greedy_soup(load, val_accs, evaluate)
    assert res.selected == [0, 1, 3, 4]
    assert res.state_dict["w"].item() == pytest.approx(1.0)
    assert res.val_acc == pytest.approx(0.0)
    assert [t[2] for t in res.trials] == [True, True, False, True, True]
    assert loaded == [0, 1, 2, 3, 4]  # each candidate loaded exactly once

    strict = greedy_soup(lambda i: _scalar(thetas[i]), val_accs, evaluate, strict=True)
    assert strict.selected == [0, 1, 3]  # model-soups' strict `>` rejects the tie


def test_greedy_soup_sorts_by_validation_accuracy():
    # Same models, scrambled indices: val_accs order is 3, 0, 4, 1, 2.
    thetas = [2.0, 0.5, 1.0, 0.5, 9.0]
    val_accs = [0.8, 0.6, 0.5, 0.9, 0.7]
    res = greedy_soup(lambda i: _scalar(thetas[i]), val_accs, lambda sd: -((sd["w"].item() - 1.0) ** 2))
    # 3 (0.5) -> +0 (2.0, mean 1.25, better) -> +4 (9.0, worse) -> +1 (0.5, mean 1.0) -> +2 (1.0, tie)
    assert res.selected == [3, 0, 1, 2]


def test_greedy_soup_does_not_modify_loaded_tensors_and_averages_real_models():
    models = [_linear(s).state_dict() for s in range(3)]
    copies = [{k: v.clone() for k, v in m.items()} for m in models]
    res = greedy_soup(lambda i: models[i], [0.3, 0.2, 0.1], lambda sd: 1.0)  # constant acc: all accepted
    assert res.selected == [0, 1, 2]
    for k in models[0]:
        torch.testing.assert_close(res.state_dict[k], (copies[0][k] + copies[1][k] + copies[2][k]) / 3)
        for m, c in zip(models, copies, strict=True):
            assert torch.equal(m[k], c[k])


def test_greedy_soup_errors():
    with pytest.raises(ValueError):
        greedy_soup(lambda i: _scalar(1.0), [], lambda sd: 1.0)
    with pytest.raises(ValueError, match="evaluate returned"):
        greedy_soup(lambda i: _scalar(1.0), [0.5], lambda sd: math.nan)
    with pytest.raises(ValueError, match=r"#1.*'w' has shape"):
        greedy_soup(lambda i: {"w": torch.zeros(i + 1)}, [0.9, 0.8], lambda sd: 1.0)


# ---------------------------------------------------------------- RunningAverage


def test_running_average_equals_mean_after_k_updates():
    net = _bn_net(0)
    avg = RunningAverage()
    snapshots = []
    for step in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(float(step + 1))
        net(torch.randn(8, 2))  # BN running stats and num_batches_tracked move too
        snapshots.append({k: v.clone() for k, v in net.state_dict().items()})
        avg.update(net)
    assert avg.count == 5
    out = avg.average()
    for k, v in out.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, torch.stack([s[k] for s in snapshots]).mean(0))
        else:  # integer buffers: latest value
            assert torch.equal(v, snapshots[-1][k])
    target = _bn_net(5)
    avg.load_into(target)
    for k, v in target.state_dict().items():
        assert torch.equal(v, out[k])


def test_running_average_hand_values_reset_and_errors():
    avg = RunningAverage()
    with pytest.raises(RuntimeError):
        avg.average()
    for v in (1.0, 2.0, 6.0):  # mean 3
        avg.update(_scalar(v))
    assert avg.average()["w"].item() == pytest.approx(3.0)
    avg.reset()
    assert avg.count == 0
    avg.update(_scalar(10.0))
    assert avg.average()["w"].item() == 10.0
    with pytest.raises(ValueError, match="'w' has shape"):
        avg.update({"w": torch.zeros(2)})


def test_running_average_does_not_alias_the_module():
    net = _linear(0)
    avg = RunningAverage()
    avg.update(net)
    first = avg.average()
    with torch.no_grad():
        net.weight.add_(1.0)
    assert torch.equal(avg.average()["weight"], first["weight"])


def test_prefix_averages_equal_each_prefix_average_to_one_float32_ulp():
    gen = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(64, 33, generator=gen), "n": torch.tensor(i)} for i in range(16)]
    for k, avg in enumerate(prefix_averages(iter(states)), start=1):
        expected = uniform_average(states[:k])["w"]
        assert avg["w"].dtype == torch.float32 and avg["n"].item() == 0
        ulp = torch.finfo(torch.float32).eps * expected.abs().clamp_min(torch.finfo(torch.float32).tiny)
        assert bool(((avg["w"] - expected).abs() <= ulp).all()), k
    assert torch.equal(next(prefix_averages(iter(states)))["w"], states[0]["w"])  # k = 1: the model itself


def test_live_prefix_averages_load_into_a_model_like_the_copies():
    models = [_bn_net(seed) for seed in range(4)]
    copies = list(prefix_averages(m.state_dict() for m in models))
    net = _bn_net(9)
    for k, live in enumerate(prefix_averages((m.state_dict() for m in models), copies=False)):
        assert live["0.weight"].dtype == torch.float64  # the accumulator itself, no copy made
        net.load_state_dict(live)  # casts while copying
        for key, value in net.state_dict().items():
            assert torch.equal(value, copies[k][key]), (k, key)


def test_greedy_soup_reports_the_kept_soup_after_each_trial():
    states = [{"w": torch.tensor([float(v)])} for v in (0.0, 2.0, 10.0)]
    seen = []
    result = greedy_soup(lambda i: states[i], [3, 2, 1], lambda s: -abs(float(s["w"]) - 1.0),
                         on_trial=lambda k, soup: seen.append((k, float(soup["w"]))))
    assert result.selected == [0, 1]  # 0 -> 1 (|1-1| = 0) kept, then 10 rejected
    assert seen == [(1, 0.0), (2, 1.0), (3, 1.0)]
