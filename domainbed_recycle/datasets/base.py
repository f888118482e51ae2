"""The dataset contract: DomainBed's `MultipleDomainDataset`, the in-memory domain, the `DATASETS` registry.

Finding and building a dataset by name is `domainbed_recycle.datasets.get_dataset` (the package), which
imports every dataset module; this module imports none of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from domainbed_recycle.registry import Registry

DATASETS: Registry[type[MultipleDomainDataset]] = Registry("dataset")


class InMemoryDomain(Dataset):
    """One domain held in memory as tensors, so a CPU run never waits on data loading.

    Args:
        images: uint8 tensor [N, C, H, W] (0..255) or float tensor [N, C, H, W] already scaled.
        labels: int64 tensor [N].
    Items are (float32 image [C, H, W] in [0, 1] for uint8 storage, int label).

    HEAVY_BATCHES: whether building a batch costs enough (large images gathered, normalised and
    augmented one by one) to be done by loader workers (`datasets.loading`) rather than by the training
    process; the built-ins' 28x28 tensors are not (their batches come straight from memory).
    """

    HEAVY_BATCHES = False

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.batch(torch.as_tensor([index]))[0][0], int(self.labels[index])

    def batch(self, indices: torch.Tensor, augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, H, W] float32 and labels [B] for a 1-D tensor of indices.

        `augment=True` marks a training draw: a domain with a training augmentation (a subclass)
        applies it then; this one has none. Evaluation never passes it.
        """
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
        DOMAINBED_PROTOCOL: True (DomainBed's datasets, MNIST or real, and folder trees): a run follows
            DomainBed's train.py: its seeds (DomainBed's `seed_hash`, for the in/out splits), its
            evaluation steps (after the updates at loop indices 0, CHECKPOINT_FREQ, 2 * CHECKPOINT_FREQ,
            ... and the last one; a record's `step` is that loop index) and, for in-memory domains,
            its loaders' sampling and evaluation batches (`loaders.DomainBedLoader`).
            False (the built-in CPU benchmark): records after every CHECKPOINT_FREQ updates and after
            the last (`step` = updates done), the harness's own seeds and batch generators.
        SHUFFLED_BY_SEED: the domains depend on the run's seed (DomainBed's MNIST datasets); the
            constructor then takes `seed=`.
        HPARAMS_PROFILE: "small" (built-in 28x28 images, small CNN), "mnist" (DomainBed's MNIST
            datasets, MNIST_CNN) or "resnet" (real images).
        ROLE: "target" (a benchmark), "pretrain" (the foundation model's corpus) or "auxiliary".
        input_shape: (C, H, W) of one image.
        num_classes: number of classes; `classes` holds their names.
        datasets: one torch Dataset per domain (InMemoryDomain for the built-ins).
    """

    ENVIRONMENTS: list[str] = []
    N_STEPS = 5001
    CHECKPOINT_FREQ = 100
    HPARAMS_PROFILE = "small"
    DOMAINBED_PROTOCOL = True
    SHUFFLED_BY_SEED = False
    N_WORKERS = 0
    ROLE = "target"  # "target", "pretrain" (foundation model corpus) or "auxiliary" (other label spaces)

    input_shape: tuple[int, int, int]
    num_classes: int
    classes: list[str]
    datasets: list[Dataset]

    @classmethod
    def check_available(cls, data_dir: str | None) -> None:
        """Raise UserError (one line: what is missing, where) when the files this dataset reads are not
        there, without reading them (cheap: a run calls it before anything else). Default: nothing to check."""

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

