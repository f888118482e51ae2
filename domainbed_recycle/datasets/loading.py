"""Batches of real-image domains for training and evaluation, built in DataLoader worker processes.

Decoding and augmenting images is per-image Python work; here it happens in worker processes (as many
as the run's loader settings say), whole batches at a time, so the training process only copies
finished batches to the device.

Keyed draws: training step k's minibatch of a domain is a pure function of (the domain's stream seed,
k): its indices are drawn by a generator seeded with `seed_hash(seed, k)`, its augmentation by torch's
RNG seeded with `seed_hash(seed, "augment", k)` (forked: the caller's RNG is left untouched). So a batch
does not depend on which worker built it, on how many workers there are, or on how far they read ahead:
the same seeds give the same run on any node, and a resumed run continues with exactly the batches the
uninterrupted one would have drawn. Evaluation batches are seeded the same way, by split and position.

Sampling is DomainBed's (`InfiniteDataLoader`: uniform indices with replacement, `batch_size` per domain
and step); augmentation is the domain's own (its transform, or `InMemoryDomain.batch(augment=True)`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from domainbed_recycle.datasets.base import InMemoryDomain
from domainbed_recycle.misc import seed_hash

EVAL_BATCH_IN_MEMORY = 512  # evaluation batch of an in-memory domain (gathered from tensors)
EVAL_BATCH_FILES = 64  # evaluation batch of a domain read from files (DomainBed's FastDataLoader batch)


@dataclass(frozen=True)
class LoaderSettings:
    """How batches are built: in `workers` processes (0: in the caller), pinned or not, workers kept
    between passes or not, `prefetch_factor` batches ready per worker (None: torch's default, 2)."""

    workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None

    def dataloader(self, dataset: Dataset, keys: Any) -> DataLoader:
        """A DataLoader yielding `dataset[key]` for each key of `keys`, in order (items are batches)."""
        extra: dict[str, Any] = {}
        if self.workers:
            extra = {"persistent_workers": self.persistent_workers, "prefetch_factor": self.prefetch_factor}
        # A private generator: each iterator draws its workers' base seed from it, never from torch's
        # global one, so an evaluation pass leaves the training's RNG stream (dropout masks) untouched.
        return DataLoader(dataset, batch_size=None, sampler=keys, num_workers=self.workers,
                          pin_memory=self.pin_memory, generator=torch.Generator().manual_seed(0), **extra)


def gather(split: Dataset, indices: torch.Tensor, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [B, C, H, W], y [B]) of items `indices` of `split`. An in-memory domain builds the batch from
    its tensors (`augment`: a training draw); any other dataset applies its own transform per item."""
    if isinstance(split, InMemoryDomain):
        return split.batch(indices, augment=augment)
    items = [split[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


def _seeded(seed: int, split: Dataset, indices: torch.Tensor, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`gather` with torch's RNG seeded by `seed` for its augmentation, the caller's RNG left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator only: a GPU's RNG is never touched
        return gather(split, indices, augment)


class StepBatches(Dataset):
    """Item k: the minibatches [(x [B, C, H, W], y [B]) per domain] of training step k (keyed draws).

    Args:
        splits: the training domains' `in` splits.
        batch_size: B, per domain.
        seeds: one stream seed per domain.
    """

    def __init__(self, splits: Sequence[Dataset], batch_size: int, seeds: Sequence[int]) -> None:
        self.splits, self.batch_size, self.seeds = list(splits), batch_size, list(seeds)

    def indices(self, domain: int, key: int) -> torch.Tensor:
        """The item indices [B] of domain `domain` at step `key`."""
        generator = torch.Generator().manual_seed(seed_hash(self.seeds[domain], key))
        return torch.randint(len(self.splits[domain]), (self.batch_size,), generator=generator)

    def __getitem__(self, key: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [_seeded(seed_hash(seed, "augment", key), split, self.indices(d, key), augment=True)
                for d, (split, seed) in enumerate(zip(self.splits, self.seeds, strict=True))]


class StepStream:
    """The training minibatches of steps k, k+1, ... (`StepBatches`), built by the loader's workers.

    `state()` is the next step's key; `load_state` continues from it exactly.
    """

    def __init__(self, batches: StepBatches, settings: LoaderSettings) -> None:
        self.batches, self.settings = batches, settings
        self.next_key = 0
        self._iterator: Iterator | None = None

    def __iter__(self) -> StepStream:
        return self

    def __next__(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._iterator is None:
            keys = range(self.next_key, 2**62)  # endless (a DataLoader sampler may be any iterable)
            self._iterator = iter(self.settings.dataloader(self.batches, keys))
        self.next_key += 1
        return next(self._iterator)

    def state(self) -> torch.Tensor:
        return torch.tensor(self.next_key)

    def load_state(self, state: torch.Tensor) -> None:
        self.next_key = int(state)
        self.close()

    def close(self) -> None:
        """Stop the workers (a later `next` starts new ones at `next_key`)."""
        self._iterator = None


class SplitBatches(Dataset):
    """Item (s, start, stop): items start..stop-1 of split s, in order, never augmented for an in-memory
    domain (a dataset reading files applies its own transform, seeded by (s, start)).

    Batches hold `EVAL_BATCH_IN_MEMORY` items of an in-memory domain, `EVAL_BATCH_FILES` of files, or
    at most `batch_size` when given.
    """

    def __init__(self, splits: Sequence[Dataset], batch_size: int | None = None) -> None:
        self.splits, self.batch_size = list(splits), batch_size

    def keys(self) -> list[tuple[int, int, int]]:
        """Every batch of every split, split by split, in order."""
        keys = []
        for s, split in enumerate(self.splits):
            size = EVAL_BATCH_IN_MEMORY if isinstance(split, InMemoryDomain) else EVAL_BATCH_FILES
            size = min(size, self.batch_size or size)
            keys += [(s, start, min(start + size, len(split))) for start in range(0, len(split), size)]
        return keys

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[int, torch.Tensor, torch.Tensor]:
        s, start, stop = key
        split, indices = self.splits[s], torch.arange(start, stop)
        if isinstance(split, InMemoryDomain):
            return (s, *split.batch(indices))
        return (s, *_seeded(seed_hash("evaluate", s, start), split, indices, augment=False))


class SplitStream:
    """One ordered pass over every batch of several splits per iteration: (split index, x, y).

    With workers and `persistent_workers`, the same workers serve every pass (every evaluation of a run).
    """

    def __init__(self, splits: Sequence[Dataset], settings: LoaderSettings = LoaderSettings(),
                 batch_size: int | None = None) -> None:
        batches = SplitBatches(splits, batch_size)
        self.loader: DataLoader | None = settings.dataloader(batches, batches.keys())

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        if self.loader is None:
            raise RuntimeError("SplitStream used after close()")
        return iter(self.loader)

    def close(self) -> None:
        """Stop the workers kept between passes (the DataLoader, and with it its iterator, is dropped)."""
        self.loader = None
