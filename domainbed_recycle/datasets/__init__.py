"""Multi-domain datasets, found by name: `get_dataset(name, data_dir, test_envs, hparams)` builds one.

Names are those registered in `DATASETS` (the built-in offline datasets, DomainBed's MNIST datasets
and its real ones, read from `data_dir`), or "folder:/path/to/root" for any
root/<domain>/<class>/<image> tree. Real-image datasets take options after a "?":
"folder:/data/mine?resolution=64", "PACS?resolution=96,cache=yes" (see `folder.ImageOptions`).

Floors: `base` (the contract and the registry) <- `builtin`, `domainbed_mnist`, `folder` (datasets
that register themselves), `loaders` <- this package (lookup by name).
"""

from __future__ import annotations

from domainbed_recycle.datasets import builtin, domainbed_mnist, folder  # noqa: F401  (importing registers them)
from domainbed_recycle.datasets.base import DATASETS, InMemoryDomain, MultipleDomainDataset
from domainbed_recycle.datasets.folder import FOLDER_PREFIX
from domainbed_recycle.registry import Registry

__all__ = [
    "DATASETS", "FOLDER_PREFIX", "InMemoryDomain", "MultipleDomainDataset", "get_dataset", "get_dataset_class",
    "load_all_datasets",
]

def load_all_datasets() -> Registry[type[MultipleDomainDataset]]:
    """The registry of every dataset (all dataset modules are imported with this package)."""
    return DATASETS


def get_dataset_class(name: str) -> type[MultipleDomainDataset]:
    """The class registered as `name`; "folder:/path/to/root" gives a class bound to that image tree
    (root/<domain>/<class>/<image>, domains discovered), so `ENVIRONMENTS` is known before building.
    Options after "?" ("...?resolution=64") give a subclass bound to them (real-image datasets only)."""
    base_name, options = folder.split_options(name)
    if base_name.startswith(FOLDER_PREFIX):
        cls: type[MultipleDomainDataset] = folder.folder_dataset_class(base_name[len(FOLDER_PREFIX):])
    else:
        cls = DATASETS.get(base_name)
    return folder.with_options(cls, options) if options else cls


def get_dataset(
    name: str, data_dir: str | None, test_envs: list[int] | None = None, hparams: dict | None = None,
    seed: int = 0,
) -> MultipleDomainDataset:
    """Build the dataset named `name` (DomainBed's signature: data_dir, test_envs, hparams).

    `seed` is the run's seed; only datasets whose domains depend on it (`SHUFFLED_BY_SEED`, DomainBed's
    MNIST datasets) read it.
    """
    cls = get_dataset_class(name)
    if getattr(cls, "SHUFFLED_BY_SEED", False):
        return cls(data_dir, list(test_envs or []), dict(hparams or {}), seed=seed)
    return cls(data_dir, list(test_envs or []), dict(hparams or {}))
