"""Training objectives: each one steps on tiny batches; their formulas checked against hand computations."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domainbed_recycle import hparams_registry
from domainbed_recycle.algorithms import ALGORITHMS, get_algorithm_class
from domainbed_recycle.algorithms.coral import coral_penalty, mean_cov_distance
from domainbed_recycle.algorithms.group_dro import group_dro_weights
from domainbed_recycle.algorithms.mixup import mixup_loss, random_domain_pairs
from domainbed_recycle.algorithms.swad import LossValley, training_validation_loss
from domainbed_recycle.algorithms.vrex import variance_penalty
from domainbed_recycle.rundir import RunDir

ARCH = {"featurizer": "small_cnn", "input_shape": [3, 28, 28], "num_classes": 3, "width": 4}


def _make(name: str, num_domains: int = 3, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    hparams = hparams_registry.default_hparams(name) | overrides
    return get_algorithm_class(name)(ARCH, num_domains, hparams)


def _batches(num_domains: int = 3, size: int = 8, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(size, 3, 28, 28, generator=gen), torch.randint(3, (size,), generator=gen))
            for _ in range(num_domains)]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _mean(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k].double() for s in states]).mean(0) for k in states[0]}


def _assert_state_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key].double(), expected[key].double(), rtol=1e-5, atol=1e-6)


def _record(val_acc: float, test_envs=(2,), n_envs: int = 3) -> dict:
    record = {"args": {"test_envs": list(test_envs)}}
    for i in range(n_envs):
        record[f"env{i}_out_acc"] = 0.0 if i in test_envs else val_acc
    return record


# --- every registered algorithm steps -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_update_returns_finite_floats_and_moves_parameters(name):
    algorithm = _make(name)
    before = _state(algorithm.network)
    for _ in range(2):
        out = algorithm.train_step(_batches())
        assert out and all(isinstance(v, float) and math.isfinite(v) for v in out.values()), out
    after = algorithm.network.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert algorithm.update_count == 2
    algorithm.eval()
    assert algorithm.predict(_batches()[0][0]).shape == (8, 3)


# --- CORAL ---------------------------------------------------------------------------------------


def test_coral_penalty_by_hand():
    # a: mean (1, 1), unbiased covariance diag(4/3, 4/3); b: mean (3, 1), covariance 0.
    a = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    b = torch.tensor([[3.0, 1.0]] * 4)
    # mean term: ((1-3)^2 + 0) / 2 = 2; covariance term: 2 * (4/3)^2 / 4 = 8/9.
    assert mean_cov_distance(a, b).item() == pytest.approx(2 + 8 / 9)
    assert mean_cov_distance(a, a).item() == pytest.approx(0.0)
    # Three domains: pairs (a,b), (a,a'), (b,a') -> (26/9 + 0 + 26/9) / 3.
    assert coral_penalty([a, b, a.clone()]).item() == pytest.approx(52 / 27)
    assert coral_penalty([a]).item() == 0.0


def test_coral_update_objective_matches_formula():
    algorithm = _make("CORAL", mmd_gamma=0.5)
    batches = _batches()
    with torch.no_grad():
        features = [algorithm.network.featurizer(x) for x, _ in batches]
        ce = np.mean([F.cross_entropy(algorithm.network.classifier(f), y).item()
                      for f, (_, y) in zip(features, batches, strict=True)])
        penalty = coral_penalty(features).item()
    out = algorithm.train_step(batches)
    assert out["loss"] == pytest.approx(ce, rel=1e-5)
    assert out["penalty"] == pytest.approx(penalty, rel=1e-4)


# --- IGA -----------------------------------------------------------------------------------------


def test_iga_penalty_is_the_spread_of_per_domain_gradients_by_hand():
    algorithm = _make("IGA", penalty=10.0)
    batches = _batches()
    params = list(algorithm.network.parameters())
    per_domain = []
    for x, y in batches:  # each domain's gradient, one flat vector
        algorithm.network.zero_grad()
        F.cross_entropy(algorithm.network(x), y).backward()
        per_domain.append(torch.cat([p.grad.flatten() for p in params]).double())
    mean = torch.stack(per_domain).mean(0)
    penalty = sum(((g - mean) ** 2).sum().item() for g in per_domain)
    with torch.no_grad():
        loss = np.mean([F.cross_entropy(algorithm.network(x), y).item() for x, y in batches])
    algorithm.network.zero_grad()
    out = algorithm.train_step(batches)
    assert out["loss"] == pytest.approx(loss, rel=1e-5)
    assert out["penalty"] == pytest.approx(penalty, rel=1e-3)


# --- GroupDRO ------------------------------------------------------------------------------------


def test_group_dro_weights_by_hand():
    q = group_dro_weights(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 2.0]), eta=0.1)
    expected = np.array([math.exp(0.1), math.exp(0.2)]) / (math.exp(0.1) + math.exp(0.2))
    np.testing.assert_allclose(q.numpy(), expected, rtol=1e-6)
    q = group_dro_weights(torch.tensor([0.2, 0.3, 0.5]), torch.zeros(3), eta=1.0)
    np.testing.assert_allclose(q.numpy(), [0.2, 0.3, 0.5], rtol=1e-6)


def test_group_dro_step_updates_q_buffer_and_weights_losses():
    algorithm = _make("GroupDRO", groupdro_eta=0.5)
    assert "q" in dict(algorithm.named_buffers())
    torch.testing.assert_close(algorithm.q, torch.full((3,), 1 / 3))
    batches = _batches()
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(algorithm.network(x), y) for x, y in batches])
    q = torch.exp(0.5 * losses) / torch.exp(0.5 * losses).sum()
    out = algorithm.train_step(batches)
    torch.testing.assert_close(algorithm.q, q)
    assert out["loss"] == pytest.approx(torch.dot(q, losses).item(), rel=1e-5)


# --- VREx ----------------------------------------------------------------------------------------


def test_vrex_variance_penalty_by_hand():
    # mean 3, squared deviations 4, 1, 9 -> 14/3 (population variance).
    assert variance_penalty(torch.tensor([1.0, 2.0, 6.0])).item() == pytest.approx(14 / 3)
    assert variance_penalty(torch.tensor([2.5])).item() == 0.0


def test_vrex_penalty_weight_switches_and_adam_is_reset_at_anneal_step():
    algorithm = _make("VREx", vrex_lambda=100.0, vrex_penalty_anneal_iters=2)
    optimizers = []
    for step in range(4):
        batches = _batches(seed=step)
        with torch.no_grad():
            losses = torch.stack([F.cross_entropy(algorithm.network(x), y) for x, y in batches])
        weight = 100.0 if step >= 2 else 1.0
        expected = (losses.mean() + weight * variance_penalty(losses)).item()
        out = algorithm.train_step(batches)
        assert out["loss"] == pytest.approx(expected, rel=1e-4)
        assert out["penalty"] == pytest.approx(variance_penalty(losses).item(), rel=1e-4)
        optimizers.append(algorithm.optimizer)
    assert optimizers[0] is optimizers[1]
    assert optimizers[2] is not optimizers[1] and optimizers[3] is optimizers[2]


# --- Mixup ---------------------------------------------------------------------------------------


def test_mixup_loss_by_hand():
    logits = torch.log(torch.tensor([[1.0, 3.0]]))  # softmax (1/4, 3/4)
    loss = mixup_loss(logits, torch.tensor([0]), torch.tensor([1]), lam=0.3)
    assert loss.item() == pytest.approx(0.3 * math.log(4) + 0.7 * math.log(4 / 3))


def test_random_domain_pairs_form_a_cycle_and_cut_to_the_smaller_batch():
    batches = [(torch.full((n, 1), float(i)), torch.full((n,), i)) for i, n in enumerate([4, 3, 5])]
    pairs = random_domain_pairs(batches, np.random.RandomState(0))
    firsts = [int(yi[0]) for (_, yi), _ in pairs]
    seconds = [int(yj[0]) for _, (_, yj) in pairs]
    assert sorted(firsts) == [0, 1, 2] and sorted(seconds) == [0, 1, 2]
    assert seconds == firsts[1:] + firsts[:1]
    assert all(len(xi) == len(xj) == min(len(batches[int(yi[0])][1]), len(batches[int(yj[0])][1]))
               for (xi, yi), (xj, yj) in pairs)


class _FixedRNG:
    """Stands in for Mixup's RandomState: identity pairing order and a fixed lam."""

    def __init__(self, lam: float) -> None:
        self.lam = lam

    def permutation(self, n: int) -> np.ndarray:
        return np.arange(n)

    def beta(self, a: float, b: float) -> float:
        return self.lam


def test_mixup_update_equals_hand_formula_for_fixed_lambda():
    algorithm = _make("Mixup")
    algorithm.rng = _FixedRNG(0.3)
    batches = _batches()
    with torch.no_grad():
        expected = np.mean([
            mixup_loss(algorithm.network(0.3 * xi + 0.7 * xj), yi, yj, 0.3).item()
            for (xi, yi), (xj, yj) in zip(batches, batches[1:] + batches[:1], strict=True)
        ])
    assert algorithm.train_step(batches)["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_mixup_is_reproducible_under_the_global_torch_seed():
    losses = [[_make("Mixup").train_step(_batches(seed=s))["loss"] for s in range(3)] for _ in range(2)]
    assert losses[0] == losses[1]


# --- MovingAverage -------------------------------------------------------------------------------


def test_moving_average_is_mean_of_iterates_from_start_step():
    algorithm = _make("MovingAverage", ma_start_step=3)
    iterates = []
    for step in range(6):
        algorithm.train_step(_batches(seed=step))
        if algorithm.update_count >= 3:
            iterates.append(_state(algorithm.network))
    assert len(iterates) == 4
    _assert_state_close(algorithm.eval_state_dict(), _mean(iterates))


# --- SWAD ----------------------------------------------------------------------------------------


def test_loss_valley_start_middle_and_dead_end_by_hand():
    valley = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    losses = [1.0, 0.8, 0.5, 0.52, 0.6, 0.55, 0.58, 0.9, 0.95, 1.0, 1.1, 1.2, 1.3, 0.1]
    windows = []
    for loss in losses:
        valley.add(loss)
        windows.append(valley.window())
    # Evaluations 0-3: the minimum of the last three is never the oldest.
    assert windows[:4] == [[], [], [], []]
    # Evaluation 4: [0.5, 0.52, 0.6] -> valley at segment 2, threshold 0.54 * 1.3 = 0.702; segment 1
    # is out (losses[0] = 1.0 > 0.702); segments 3, 4 are undecided tail (min of later losses <= 0.702).
    assert valley.valley == 2 and valley.threshold == pytest.approx(0.702)
    assert windows[4] == [2, 3, 4]
    assert windows[6] == [2, 3, 4, 5, 6]
    assert windows[7] == [2, 3, 4, 5, 6]  # segment 7 ends at 0.9 > threshold: not in the tail
    # Segment j is decided at evaluation j + 5: 3 at 8, ..., 6 at 11, all kept (min <= 0.702).
    assert valley.included[:4] == [2, 3, 4, 5]
    # Evaluation 12: min(losses[7:13]) = 0.9 > 0.702 -> dead; the 0.1 after it changes nothing.
    assert valley.dead and valley.included == [2, 3, 4, 5, 6]
    assert windows[12] == windows[13] == [2, 3, 4, 5, 6]


def test_loss_valley_looks_back_at_most_n_tolerance_minus_n_converge_evaluations():
    valley = LossValley(3, 6, 0.3)
    for loss in [0.65, 0.6, 0.58, 0.55, 0.5, 0.52, 0.56]:
        valley.add(loss)
    # Valley at 4 (found at evaluation 6), threshold = mean(0.5, 0.52, 0.56) * 1.3 = 0.68467.
    # Segments 2 and 3 are kept (losses[1..3] <= threshold); segment 1 is beyond the look-back of 3.
    assert valley.valley == 4 and valley.threshold == pytest.approx(0.5266667 * 1.3)
    assert valley.window() == [2, 3, 4, 5, 6]
    valley = LossValley(3, 6, 0.3)
    for loss in [0.6, 0.9, 0.55, 0.5, 0.52, 0.56]:
        valley.add(loss)
    assert valley.valley == 3 and valley.window() == [3, 4, 5]  # losses[1] = 0.9 blocks segments 1, 2


def test_loss_valley_never_converging_gives_no_window_and_rejects_nan():
    valley = LossValley(3, 6, 0.3)
    for loss in [1.0, 0.9, 0.8, 0.7, 0.6]:
        valley.add(loss)
    assert not valley.converged and valley.window() == []
    assert valley.earliest_needed() == 1  # a valley at 3 (next evaluation) could look back to 1
    with pytest.raises(ValueError, match="finite"):
        valley.add(float("nan"))


def test_training_validation_loss_reads_training_domains_only():
    record = {"args": {"test_envs": [1]}, "env0_out_acc": 0.8, "env1_out_acc": 0.1, "env2_out_acc": 0.6,
              "env0_in_acc": 0.0}
    assert training_validation_loss(record) == pytest.approx(0.3)
    record |= {"env0_out_acc_iterate": 0.5, "env2_out_acc_iterate": 0.7}
    assert training_validation_loss(record) == pytest.approx(0.4)


@pytest.mark.slow
def test_swad_eval_state_dict_is_mean_of_iterates_in_window():
    algorithm = _make("SWAD")
    accs = [0.0, 0.2, 0.5, 0.48, 0.4, 0.45, 0.42]  # losses 1 - acc: valley at segment 2 (evaluation 4)
    steps_per_segment = [3, 2, 2, 2, 2, 2, 3]
    iterates: list[list[dict]] = []
    current = _state(algorithm.network)
    for index, (acc, n_steps) in enumerate(zip(accs, steps_per_segment, strict=True)):
        iterates.append([])
        for step in range(n_steps):
            algorithm.train_step(_batches(seed=100 * index + step))
            iterates[-1].append(_state(algorithm.network))
        if index < 4:  # before the valley the current network is evaluated
            _assert_state_close(algorithm.eval_state_dict(), iterates[-1][-1])
        algorithm.end_of_evaluation(_record(acc))
        current = iterates[-1][-1]
    window = algorithm.window()
    assert window == [2, 3, 4, 5, 6]
    expected = _mean([state for j in window for state in iterates[j]])
    _assert_state_close(algorithm.eval_state_dict(), expected)
    x = _batches()[0][0]
    algorithm.eval()
    reference = copy.deepcopy(algorithm.network)
    reference.load_state_dict({k: v.float() for k, v in expected.items()})
    torch.testing.assert_close(algorithm.predict(x), reference(x), rtol=1e-4, atol=1e-5)
    _assert_state_close(algorithm.network.state_dict(), current)  # training weights untouched
    assert set(algorithm._segments) <= set(range(algorithm.valley.decided, len(accs)))


def test_swad_average_freezes_once_the_valley_is_dead():
    algorithm = _make("SWAD", swad_n_converge=1, swad_n_tolerance=1, swad_tolerance_ratio=0.0)
    algorithm.train_step(_batches(seed=0))
    first = _state(algorithm.network)
    algorithm.end_of_evaluation(_record(0.5))  # valley at segment 0, threshold 0.5
    algorithm.train_step(_batches(seed=1))
    algorithm.end_of_evaluation(_record(0.1))  # loss 0.9 > 0.5: dead, window = [0]
    assert algorithm.valley.dead and algorithm.window() == [0]
    for seed in (2, 3):
        algorithm.train_step(_batches(seed=seed))
        algorithm.end_of_evaluation(_record(0.9))
    _assert_state_close(algorithm.eval_state_dict(), first)


# --- end to end through the trainer --------------------------------------------------------------


@pytest.fixture(scope="module")
def small_colored_mnist():
    """ColoredDigits cut to 100 images per domain (3 domains), so each run below takes about a second."""
    pytest.importorskip("domainbed_recycle.datasets.splits")
    pytest.importorskip("domainbed_recycle.datasets.builtin")
    from domainbed_recycle.datasets import get_dataset

    try:
        dataset = get_dataset("ColoredDigits", None, [2], {})
    except Exception as error:  # the built-in sources are not installed here
        pytest.skip(f"ColoredDigits unavailable: {error}")
    small = copy.copy(dataset)
    small.datasets = [domain.subset(torch.arange(100)) for domain in dataset.datasets]
    return small


@pytest.mark.slow
@pytest.mark.parametrize("name", ["CORAL", "GroupDRO", "Mixup", "VREx", "SWAD"])
def test_train_end_to_end(tmp_path, small_colored_mnist, name):
    from domainbed_recycle import checkpoints
    from domainbed_recycle.training import TrainConfig, train

    hparams = {"cnn_width": 4, "batch_size": 8}
    if name == "SWAD":
        hparams |= {"swad_n_converge": 1, "swad_n_tolerance": 2}
    if name == "VREx":
        hparams |= {"vrex_penalty_anneal_iters": 4}
    config = TrainConfig(dataset="ColoredDigits", output_dir=str(tmp_path / name), algorithm=name,
                         test_envs=[2], steps=8, checkpoint_freq=4, progress=False, hparams=hparams)
    run = train(config, dataset=small_colored_mnist)
    records = [json.loads(line) for line in (run / RunDir.RESULTS).read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8]
    assert all(math.isfinite(r["loss"]) and 0.0 <= r["env0_out_acc"] <= 1.0 for r in records)
    assert (run / RunDir.DONE).exists()
    state, meta = checkpoints.load_checkpoint(run / RunDir.LAST)
    assert meta["algorithm"] == name and all(torch.isfinite(v).all() for v in state.values())


def test_the_lp_warmup_ends_with_a_new_optimizer_as_the_reference():
    """After `lp_steps` head-only steps the optimiser is made anew over every parameter: the next step
    is exactly that of a fresh Adam started from the warmed-up weights (no head moments carried over)."""
    warm = _make("ERM", lp_steps=2, lr=1e-2)
    batches = _batches()
    for step in range(2):
        before = _state(warm)
        warm.train_step(_batches(seed=10 + step))
        moved = [k for k in before if not torch.equal(before[k], warm.state_dict()[k])]
        assert moved and all(".classifier." in f".{k}" for k in moved)  # head only during the warm-up
    fresh = _make("ERM", lr=1e-2)
    fresh.load_state_dict(warm.state_dict())
    warm.train_step(batches)
    fresh.train_step(batches)
    _assert_state_close(_state(warm), _state(fresh))
    assert warm.optimizer.state  # and the new optimiser now holds moments for the featurizer too
    assert any(p.shape == warm.network.featurizer.layers[0].weight.shape for p in warm.optimizer.state)


def test_the_lp_warm_up_follows_the_registry_declared_lp_steps():
    """lp_steps has one default, `algorithms.base.LP_STEPS` (0: the featurizer trains from the first step), the
    registry's and the algorithm's when hparams lack it; a run's value freezes the featurizer that many steps."""
    from domainbed_recycle.algorithms.base import LP_STEPS

    assert hparams_registry.default_hparams("ERM")["lp_steps"] == LP_STEPS == 0
    assert not _make("ERM").featurizer_frozen()
    partial = {k: v for k, v in hparams_registry.default_hparams("ERM").items() if k != "lp_steps"}
    assert not get_algorithm_class("ERM")(ARCH, 3, partial).featurizer_frozen()
    algorithm = _make("ERM", lp_steps=2)
    frozen = []
    for _ in range(3):
        frozen.append(algorithm.featurizer_frozen())
        algorithm.train_step(_batches())
    assert frozen == [True, True, False]
