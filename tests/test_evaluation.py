"""The prediction ensemble accumulates members one at a time and equals the mean's argmax."""

from __future__ import annotations

import torch

from domainbed_recycle.evaluation import ProbabilityEnsemble


def test_streaming_ensemble_equals_the_mean_of_probabilities():
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(3, (50,), generator=gen)
    members = [{"env0_in": (torch.softmax(torch.randn(50, 3, generator=gen), 1), labels)} for _ in range(4)]
    ensemble = ProbabilityEnsemble()
    for member in members:
        ensemble.add(member)
    mean = torch.stack([m["env0_in"][0] for m in members]).mean(0)
    assert ensemble.count == 4
    assert ensemble.record()["env0_in_acc"] == float((mean.argmax(1) == labels).float().mean())
    assert members[0]["env0_in"][0].sum(1).allclose(torch.ones(50))  # members untouched
