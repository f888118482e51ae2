"""No test-domain image in pre-training or auxiliary data: the check a recycling spec passes before it runs.

Built-in datasets declare, per domain, the ids of the source images they are made from
(`BuiltinDataset.domain_sources`); two datasets leak when a domain of one that a model trains on shares
an id with a test domain of the other. `tests/test_datasets_leakage.py` proves the shipped specs clean
(by id and by content); this module refuses a user's spec that combines built-ins that overlap (e.g.
RotatedDigits as an auxiliary task of TextureMNIST: both are drawn from the same MNIST digits).
Datasets that declare no sources (DomainBed's real ones, `folder:` trees) cannot be checked here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence

from domainbed_recycle.datasets import get_dataset_class
from domainbed_recycle.errors import UserError


def declared_sources(name: str, data_dir: str | os.PathLike | None) -> dict[str, frozenset[str]] | None:
    """{domain: source ids} of dataset `name`, or None when it declares none (real and folder datasets)."""
    cls = get_dataset_class(name)
    domain_sources = getattr(cls, "domain_sources", None)
    if domain_sources is None:
        return None
    try:
        return domain_sources(data_dir)
    except NotImplementedError:
        return None


def shared_sources(trained: Mapping[str, frozenset[str]], held_out: Mapping[str, frozenset[str]]
                   ) -> Iterator[tuple[str, str, frozenset[str]]]:
    """(trained domain, held-out domain, the source ids they share) for every pair of domains sharing any."""
    for domain, ids in trained.items():
        for other, other_ids in held_out.items():
            if ids & other_ids:
                yield domain, other, ids & other_ids


def check_no_leakage(seen: Iterable[tuple[str, str]], test_domains: Mapping[str, Sequence[int]],
                     data_dir: str | os.PathLike | None, unused: Iterable[tuple[str, str]] = ()) -> None:
    """UserError (one line) naming the first overlap between data a model trains on and a test domain.

    Args:
        seen: (role, dataset) pairs whose every domain is trained on, e.g. ("pre-training", "FashionPretrain"),
            ("auxiliary", "Glyphs").
        test_domains: target dataset -> indices of its domains held out for testing.
        data_dir: where real data (and torchvision's MNIST files, when used) live.
        unused: (seen dataset, target) pairs never combined, so not compared (a target is never its own
            auxiliary task, unless the spec says otherwise).
    """
    skip = set(unused)
    cache: dict[str, dict[str, frozenset[str]] | None] = {}

    def sources(name: str) -> dict[str, frozenset[str]] | None:
        if name not in cache:
            cache[name] = declared_sources(name, data_dir)
        return cache[name]

    for role, name in seen:
        trained = sources(name)
        if not trained:
            continue
        for target, envs in test_domains.items():
            declared = sources(target)
            if (name, target) in skip or not declared:
                continue
            environments = list(get_dataset_class(target).ENVIRONMENTS)
            held_out = {environments[env]: declared[environments[env]] for env in envs}
            for domain, test_domain, shared in shared_sources(trained, held_out):
                raise UserError(
                    f"leakage: {role} dataset {name} (domain {domain!r}) shares {len(shared)} source "
                    f"image(s) with test domain {test_domain!r} of target {target} (e.g. "
                    f"{sorted(shared)[0]}): pre-training and auxiliary data must not come from a test "
                    f"domain; `drecycle data list` shows each dataset's sources")
