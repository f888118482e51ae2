"""DomainBed's data loaders, without their worker processes: the same index batches, drawn at the same
moments from torch's global generator.

DomainBed's train.py reads each training domain through an `InfiniteDataLoader` (a `RandomSampler`
with replacement, `BatchSampler(drop_last=True)`, repeated forever) and evaluates through
`FastDataLoader`s (`RandomSampler` without replacement, `BatchSampler` of 64 keeping the last partial
batch, repeated forever; one evaluation reads one full pass). Each is a torch `DataLoader` iterator
with `N_WORKERS` worker processes, which touches torch's *global* generator:
- creating the iterator draws one int64 (the workers' base seed), even with no worker;
- every pass of its sampler starts by drawing one int64, the seed of that pass's own generator;
- with W > 0 workers the iterator asks the sampler for 2 * W batches at creation and for one more
  each time it hands a batch out (its prefetching), so passes start, and draw, ahead of use.
Those draws are interleaved with the network's initialisation (after the loaders are made) and with
each other, so a run reproduces DomainBed's numbers only if it makes the same draws in the same order.
`DomainBedLoader` does exactly that for an in-memory domain, with torch's own samplers, in this
process: 136 worker processes for RotatedMNIST in DomainBed, none here.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch.utils.data import BatchSampler, RandomSampler

from domainbed_recycle.datasets.base import InMemoryDomain
from domainbed_recycle.errors import UserError

PREFETCH_FACTOR = 2  # torch DataLoader's default, which DomainBed keeps
EVAL_BATCH_SIZE = 64  # DomainBed's FastDataLoader batch size for evaluation


class DomainBedLoader:
    """Batches of one in-memory domain split, as DomainBed's loader of it would hand them out.

    Args:
        split: the domain's split (its items are indexed 0..len-1 as DomainBed's `_SplitDataset`).
        batch_size: images per batch.
        num_workers: DomainBed's `N_WORKERS` of the dataset (sets the prefetch depth only).
        training: True for an `InfiniteDataLoader` (with replacement, full batches only), False for a
            `FastDataLoader` (each pass a permutation, the last batch possibly smaller).
    Creating one draws from torch's global generator as DomainBed's loader creation does.
    """

    def __init__(self, split: InMemoryDomain, batch_size: int, num_workers: int, training: bool) -> None:
        self.split = split
        self.batch_size = batch_size
        self.training = training
        self.prefetch = PREFETCH_FACTOR * num_workers
        batches = len(split) // batch_size if training else -(-len(split) // batch_size)
        if batches == 0:  # DomainBed's sampler would loop forever drawing seeds
            raise UserError(f"a domain split of {len(split)} images is smaller than the batch size {batch_size}: "
                            f"lower batch_size (--hparams '{{\"batch_size\": {len(split)}}}') or hold out less")
        self.batches_per_pass = batches
        self._pass: deque[list[int]] = deque()  # what is left of the sampler's current pass
        self._queue: deque[list[int]] = deque()  # batches asked of the sampler, not handed out yet
        torch.empty((), dtype=torch.int64).random_()  # the DataLoader iterator's base seed
        for _ in range(self.prefetch):
            self._queue.append(self._pull())

    def _pull(self) -> list[int]:
        """The sampler's next batch of indices (a new pass draws its seed from the global generator)."""
        if not self._pass:
            sampler = RandomSampler(self.split, replacement=self.training)
            self._pass.extend(BatchSampler(sampler, self.batch_size, drop_last=self.training))
        return self._pass.popleft()

    def next_indices(self) -> list[int]:
        """The indices of the next batch handed out (and the prefetch it triggers)."""
        if not self.prefetch:
            return self._pull()
        self._queue.append(self._pull())
        return self._queue.popleft()

    def __iter__(self) -> DomainBedLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [B, C, H, W] float32, y [B]) of the next batch."""
        return self.split.batch(torch.as_tensor(self.next_indices(), dtype=torch.long), augment=self.training)

    def one_pass(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """An evaluation's batches: one pass over the split (DomainBed's `FastDataLoader`)."""
        return [next(self) for _ in range(self.batches_per_pass)]

    # --- resume ----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The loader's position (lists of ints): the rest of the current pass and the prefetched batches."""
        return {"pass": [list(b) for b in self._pass], "queue": [list(b) for b in self._queue]}

    def load_state(self, state: dict[str, Any], step: int = 0) -> None:
        """Continue from `state()` (exactly; the global generator is restored by the caller)."""
        self._pass = deque(list(b) for b in state["pass"])
        self._queue = deque(list(b) for b in state["queue"])

    def close(self) -> None:
        """Nothing to stop: batches are drawn in this process (same interface as `StepStream`)."""
