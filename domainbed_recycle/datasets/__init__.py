"""Multi-domain datasets, found by name in `DATASETS`.

`get_dataset(name, data_dir, test_envs, hparams)` builds one; the built-in offline datasets and the
real DomainBed ones (read from `data_dir`) register themselves when their modules are imported.
"""

from __future__ import annotations

from domainbed_recycle.datasets.base import (
    DATASETS,
    InMemoryDomain,
    MultipleDomainDataset,
    get_dataset,
    get_dataset_class,
    load_all_datasets,
)

__all__ = [
    "DATASETS", "InMemoryDomain", "MultipleDomainDataset", "get_dataset", "get_dataset_class", "load_all_datasets",
]
