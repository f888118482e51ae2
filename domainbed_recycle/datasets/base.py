"""The dataset contract shared by every dataset: DomainBed's `MultipleDomainDataset`."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch.utils.data import Dataset

from domainbed_recycle.registry import Registry

DATASETS: Registry[type[MultipleDomainDataset]] = Registry("dataset")

# Modules whose import registers datasets (kept here so `get_dataset` sees them all).
_DATASET_MODULES = ("domainbed_recycle.datasets.builtin", "domainbed_recycle.datasets.folder")


def load_all_datasets() -> Registry[type[MultipleDomainDataset]]:
    """Import every dataset module so that `DATASETS` is complete; returns the registry."""
    for module in _DATASET_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
    return DATASETS


class InMemoryDomain(Dataset):
    """One domain held in memory as tensors, so a CPU run never waits on data loading.

    Args:
        images: uint8 tensor [N, C, H, W] (0..255) or float tensor [N, C, H, W] already scaled.
        labels: int64 tensor [N].
    Items are (float32 image [C, H, W] in [0, 1] for uint8 storage, int label).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.batch(torch.as_tensor([index]))[0][0], int(self.labels[index])

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, H, W] float32 and labels [B] for a 1-D tensor of indices."""
        x = self.images[indices]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return x, self.labels[indices]

    def subset(self, indices: torch.Tensor) -> InMemoryDomain:
        """A new InMemoryDomain holding only `indices` (shares no storage with this one)."""
        return InMemoryDomain(self.images[indices], self.labels[indices])


class MultipleDomainDataset:
    """A dataset made of several domains ("environments") sharing one label space.

    Attributes:
        ENVIRONMENTS: domain names, one per domain, in index order.
        N_STEPS, CHECKPOINT_FREQ: default training length and evaluation period (steps).
        HPARAMS_PROFILE: "small" (built-in 28x28 images, small CNN) or "resnet" (real images).
        ROLE: "target" (a benchmark), "pretrain" (the foundation model's corpus) or "auxiliary".
        input_shape: (C, H, W) of one image.
        num_classes: number of classes; `classes` holds their names.
        datasets: one torch Dataset per domain (InMemoryDomain for the built-ins).
    """

    ENVIRONMENTS: list[str] = []
    N_STEPS = 5001
    CHECKPOINT_FREQ = 100
    HPARAMS_PROFILE = "small"
    N_WORKERS = 0
    ROLE = "target"  # "target", "pretrain" (foundation model corpus) or "auxiliary" (other label spaces)

    input_shape: tuple[int, int, int]
    num_classes: int
    classes: list[str]
    datasets: list[Dataset]

    def __getitem__(self, index: int) -> Dataset:
        return self.datasets[index]

    def __len__(self) -> int:
        return len(self.datasets)

    def describe(self) -> dict[str, Any]:
        """Name, domains with sizes, classes and input shape (for `drecycle data list`)."""
        return {
            "name": type(self).__name__,
            "domains": {env: len(ds) for env, ds in zip(self.ENVIRONMENTS, self.datasets, strict=True)},
            "classes": list(self.classes),
            "input_shape": list(self.input_shape),
        }


FOLDER_PREFIX = "folder:"


def get_dataset_class(name: str) -> type[MultipleDomainDataset]:
    """The class registered as `name`; "folder:/path/to/root" gives a class bound to that image tree
    (root/<domain>/<class>/<image>, domains discovered), so `ENVIRONMENTS` is known before building."""
    if name.startswith(FOLDER_PREFIX):
        from domainbed_recycle.datasets.folder import folder_dataset_class

        return folder_dataset_class(name[len(FOLDER_PREFIX) :])
    return load_all_datasets().get(name)


def get_dataset(
    name: str, data_dir: str | None, test_envs: list[int] | None = None, hparams: dict | None = None
) -> MultipleDomainDataset:
    """Build the dataset registered as `name` (DomainBed's signature: data_dir, test_envs, hparams).

    `name` may also be "folder:/path/to/root" for any root/<domain>/<class>/<image> tree.
    """
    cls = get_dataset_class(name)
    return cls(data_dir, list(test_envs or []), dict(hparams or {}))
