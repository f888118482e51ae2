"""Accuracy and predictions of a model over a dataset split (in memory or on disk)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from domainbed_recycle.datasets.base import InMemoryDomain

Predict = Callable[[torch.Tensor], torch.Tensor]


def iterate_batches(
    split: Dataset, batch_size: int = 512, device: str = "cpu", num_workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x [B, C, H, W], y [B]) over `split` in order, on `device`."""
    if isinstance(split, InMemoryDomain):
        for start in range(0, len(split), batch_size):
            x, y = split.batch(torch.arange(start, min(start + batch_size, len(split))))
            yield x.to(device), y.to(device)
        return
    loader = DataLoader(split, batch_size=min(batch_size, 64), shuffle=False, num_workers=num_workers)
    for x, y in loader:
        yield x.to(device), y.to(device)


@torch.no_grad()
def predict_probs(predict: Predict, split: Dataset, device: str = "cpu", num_workers: int = 0) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """(softmax probabilities [N, C], labels [N]) of `predict` on `split` (call in eval mode)."""
    probs, labels = [], []
    for x, y in iterate_batches(split, device=device, num_workers=num_workers):
        probs.append(torch.softmax(predict(x), dim=1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


@torch.no_grad()
def accuracy(predict: Predict, split: Dataset, device: str = "cpu", num_workers: int = 0) -> float:
    """Fraction of correctly classified examples of `split` (0..1)."""
    correct, total = 0, 0
    for x, y in iterate_batches(split, device=device, num_workers=num_workers):
        correct += (predict(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / max(total, 1)
