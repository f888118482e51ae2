"""Seeded in/out splits of one domain, as DomainBed's `misc.split_dataset` (the `out` part is held out).

DomainBed's train.py calls `out, in_ = split_dataset(env, int(len(env) * holdout_fraction),
seed_hash(trial_seed, env_i))`; `split_domain(env, holdout_fraction, seed)` returns `(in_, out)`
with the same index sets for the same seed; `make_splits` splits every domain that way, seeding with
DomainBed's own `seed_hash` for datasets of DomainBed's protocol (so their splits are DomainBed's) and
with this project's for the built-ins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from domainbed_recycle.datasets.base import InMemoryDomain
from domainbed_recycle.misc import domainbed_seed_hash, seed_hash


def split_indices(n: int, holdout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(in indices, out indices) of a domain of `n` items; out has int(n * holdout_fraction) items.

    Same algorithm as DomainBed: shuffle range(n) with numpy's RandomState(seed), the first part is out.
    """
    if not 0.0 <= holdout_fraction <= 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1], got {holdout_fraction}")
    keys = list(range(n))
    np.random.RandomState(seed).shuffle(keys)
    n_out = int(n * holdout_fraction)
    return keys[n_out:], keys[:n_out]


def split_domain(dataset: Dataset, holdout_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split one domain into (in_split, out_split); out_split holds int(len * holdout_fraction) items.

    An InMemoryDomain gives InMemoryDomain subsets (copies); any other dataset gives torch Subsets.
    """
    in_keys, out_keys = split_indices(len(dataset), holdout_fraction, seed)
    if isinstance(dataset, InMemoryDomain):
        return _subset(dataset, in_keys), _subset(dataset, out_keys)
    return Subset(dataset, in_keys), Subset(dataset, out_keys)


def _subset(domain: InMemoryDomain, keys: list[int]) -> InMemoryDomain:
    """`domain.subset(keys)`, keeping a gray-replicated image tensor (channel stride 0) as a view."""
    index = torch.as_tensor(keys, dtype=torch.long)
    images = domain.images
    if images.dim() == 4 and images.shape[1] > 1 and images.stride(1) == 0:
        gray = images[:, :1][index]  # [n, 1, H, W], a copy of one channel only
        return InMemoryDomain(gray.expand(-1, images.shape[1], -1, -1), domain.labels[index])
    return domain.subset(index)


def split_seed(dataset: object, trial_seed: int, env_index: int) -> int:
    """The seed of domain `env_index`'s split: DomainBed's `seed_hash(trial_seed, env_index)`, with
    DomainBed's hash for datasets of its protocol (`DOMAINBED_PROTOCOL`), this project's otherwise."""
    hash_fn = domainbed_seed_hash if getattr(dataset, "DOMAINBED_PROTOCOL", False) else seed_hash
    return hash_fn(trial_seed, env_index)


def make_splits(
    dataset: Sequence[Dataset], holdout_fraction: float, trial_seed: int
) -> tuple[list[Dataset], list[Dataset]]:
    """DomainBed's per-domain `in`/`out` split of every domain, seeded by (trial_seed, domain index).

    Returns (in splits, out splits), one of each per domain, in domain order.
    """
    in_splits, out_splits = [], []
    for env_index in range(len(dataset)):
        seed = split_seed(dataset, trial_seed, env_index)
        split_in, split_out = split_domain(dataset[env_index], holdout_fraction, seed)
        in_splits.append(split_in)
        out_splits.append(split_out)
    return in_splits, out_splits
