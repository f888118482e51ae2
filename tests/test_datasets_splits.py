"""`split_domain`: DomainBed's seeded in/out split of one domain."""

from __future__ import annotations

import torch
from torch.utils.data import Subset, TensorDataset

from domainbed_recycle.datasets import InMemoryDomain
from domainbed_recycle.datasets.splits import split_domain, split_indices
from domainbed_recycle.misc import seed_hash


def _domain(n: int, channels: int = 3) -> InMemoryDomain:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, channels, 2, 2).contiguous()
    return InMemoryDomain(images, torch.arange(n) % 5)


def test_matches_domainbed_split_dataset():
    """DomainBed: keys = range(n), RandomState(seed).shuffle(keys), out = keys[:n_out], in = keys[n_out:]."""
    in_keys, out_keys = split_indices(10, 0.2, 0)
    assert out_keys == [2, 8] and in_keys == [4, 9, 1, 6, 7, 3, 0, 5]


def test_sizes_disjoint_complete_deterministic():
    for n, fraction in ((1667, 0.2), (10, 0.0), (7, 1.0), (333, 0.33)):
        in_keys, out_keys = split_indices(n, fraction, seed_hash(0, 3))
        assert len(out_keys) == int(n * fraction)
        assert sorted(in_keys + out_keys) == list(range(n))
        assert (in_keys, out_keys) == split_indices(n, fraction, seed_hash(0, 3))
    assert split_indices(100, 0.2, 1) != split_indices(100, 0.2, 2)


def test_in_memory_domain_gives_in_memory_subsets():
    domain = _domain(50)
    in_split, out_split = split_domain(domain, 0.2, 7)
    assert isinstance(in_split, InMemoryDomain) and isinstance(out_split, InMemoryDomain)
    assert (len(in_split), len(out_split)) == (40, 10)
    in_keys, out_keys = split_indices(50, 0.2, 7)
    assert in_split.images[:, 0, 0, 0].tolist() == in_keys
    assert out_split.labels.tolist() == [k % 5 for k in out_keys]


def test_gray_view_stays_a_view():
    base = _domain(30, channels=1)
    domain = InMemoryDomain(base.images.expand(-1, 3, -1, -1), base.labels)
    in_split, out_split = split_domain(domain, 0.2, 1)
    assert in_split.images.stride(1) == 0 and out_split.images.shape == (6, 3, 2, 2)
    reference = domain.subset(torch.as_tensor(split_indices(30, 0.2, 1)[0]))
    assert torch.equal(in_split.images, reference.images)
    assert torch.equal(in_split.batch(torch.arange(5))[0], reference.batch(torch.arange(5))[0])


def test_other_datasets_give_subsets():
    dataset = TensorDataset(torch.arange(20).float(), torch.arange(20))
    in_split, out_split = split_domain(dataset, 0.25, 3)
    assert isinstance(in_split, Subset) and isinstance(out_split, Subset)
    assert (len(in_split), len(out_split)) == (15, 5)
    assert list(out_split.indices) == split_indices(20, 0.25, 3)[1]
