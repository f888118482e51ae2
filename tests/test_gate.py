"""The merge gate and the diagonal Fisher, on hand-made models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from domainbed_recycle.fisher import diagonal_fisher
from domainbed_recycle.gate import featurizer_distance, merge_gate


def model(w, head=(1.0,)):
    return {"featurizer.w": torch.tensor(w), "classifier.w": torch.tensor(head)}


PHI0 = {"featurizer.w": torch.tensor([1.0, 0.05])}
SOUP = model([1.0, 0.0])


def evaluate(state):  # a "validation accuracy" that is 1 outside the unit ball and 0 inside
    return 1.0 if float(state["featurizer.w"].norm()) >= 0.99 else 0.0


def test_distance_is_relative_to_phi0():
    assert featurizer_distance(model([1.0, 0.05]), PHI0) == 0.0
    assert featurizer_distance(model([2.0, 0.1]), PHI0) == pytest.approx(1.0)


def test_gate_accepts_a_near_connected_model():
    verdict = merge_gate(model([1.0, 0.1]), SOUP, PHI0, evaluate)
    assert verdict.accepted and verdict.reason == "" and verdict.barrier == 0.0
    assert verdict.distance == pytest.approx(0.05 / float(PHI0["featurizer.w"].norm()))


def test_gate_refuses_a_mismatched_model():
    verdict = merge_gate({"featurizer.w": torch.zeros(3), "classifier.w": torch.ones(1)}, SOUP, PHI0, evaluate)
    assert not verdict.accepted and "featurizer.w" in verdict.reason and "\n" not in verdict.reason


def test_gate_refuses_a_model_far_from_the_foundation():
    verdict = merge_gate(model([0.0, 1.0]), SOUP, PHI0, evaluate)
    assert not verdict.accepted and "from the foundation" in verdict.reason and verdict.distance > 1.0


def test_gate_refuses_a_model_behind_a_barrier():
    # midpoint [0.5, 0.5] has norm 0.71: accuracy 0 between two endpoints at 1 -> barrier 1
    verdict = merge_gate(model([0.0, 1.0]), SOUP, PHI0, evaluate, max_distance=10.0)
    assert not verdict.accepted and verdict.barrier == pytest.approx(1.0) and "barrier" in verdict.reason


def test_diagonal_fisher_of_a_uniform_linear_model_by_hand():
    # zero weights -> p = (1/2, 1/2) whatever x; d log p(y|x)/d logits = onehot(y) - p = ±1/2, so each
    # row of W gets (x/2)^2 and the bias 1/4 whichever label is sampled:
    # F_W = mean over x1 = [1, 2], x2 = [3, 0] of x^2 / 4 = [[1.25, 0.5], [1.25, 0.5]], F_b = [0.25, 0.25]
    linear = nn.Linear(2, 2)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    fisher = diagonal_fisher(linear, x, torch.Generator().manual_seed(0), batch_size=1)
    assert torch.allclose(fisher["weight"], torch.tensor([[1.25, 0.5], [1.25, 0.5]]))
    assert torch.allclose(fisher["bias"], torch.tensor([0.25, 0.25]))
    assert linear.training  # mode restored


def test_diagonal_fisher_is_reproducible_and_matches_a_loop():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(5, 3)
    fisher = diagonal_fisher(net, x, torch.Generator().manual_seed(7), batch_size=2)
    again = diagonal_fisher(net, x, torch.Generator().manual_seed(7), batch_size=5)
    assert all(torch.allclose(fisher[k], again[k]) for k in fisher)
    gen = torch.Generator().manual_seed(7)  # same draws: one multinomial per batch of 2, 2, 1
    labels = torch.cat([torch.multinomial(torch.softmax(net(x[i:i + 2]), 1).detach(), 1, generator=gen).squeeze(1)
                        for i in (0, 2, 4)])
    expected = {k: torch.zeros_like(p) for k, p in net.named_parameters()}
    for xi, yi in zip(x, labels, strict=True):
        net.zero_grad()
        torch.log_softmax(net(xi[None]), 1)[0, yi].backward()
        for k, p in net.named_parameters():
            expected[k] += p.grad ** 2 / len(x)
    assert all(torch.allclose(fisher[k], expected[k], atol=1e-6) for k in expected)


def test_import_gate_refuses_a_far_featurizer_and_imports_a_near_one(tmp_path, capsys):
    from domainbed_recycle.checkpoints import save_checkpoint
    from domainbed_recycle.cli import main

    save_checkpoint(tmp_path / "phi0.safetensors", {"featurizer.w": torch.tensor([1.0, 0.05])}, {})
    save_checkpoint(tmp_path / "near.safetensors", {"featurizer.w": torch.tensor([1.0, 0.1])}, {})
    save_checkpoint(tmp_path / "far.safetensors", {"featurizer.w": torch.tensor([0.0, 1.0])}, {})
    argv = ["import", str(tmp_path / "near.safetensors"), str(tmp_path / "far.safetensors"), "--gate",
            "--reference", str(tmp_path / "phi0.safetensors"), "--output_dir", str(tmp_path / "out")]
    assert main(argv) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("imported") and lines[1].startswith("refused") and "foundation" in lines[1]
    assert [p.name for p in (tmp_path / "out" / "imported").iterdir()] == ["near.safetensors"]
