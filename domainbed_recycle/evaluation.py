"""Accuracy and predictions of models on a dataset's DomainBed splits: the one evaluation room.

- `Inference`: how models are evaluated (device, precision, memory format, batch loading);
- `SplitEvaluator`: accuracies of several models on named splits in one pass over each split, under
  `torch.inference_mode()`, with batches built by loader workers kept between calls (training's
  evaluations use it);
- `accuracy`, `predict_probs`, `evaluate_splits`: any callable `x -> logits` on splits;
- `Evaluator`: state dicts (or ensembles of them) on every split of one (dataset, trial seed), for
  combined models and for the analysis;
- `EvaluatorCache`: one evaluator per (dataset, trial seed), one dataset in memory at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from domainbed_recycle.datasets import get_dataset, get_dataset_class
from domainbed_recycle.datasets.loading import LoaderSettings, SplitStream
from domainbed_recycle.datasets.splits import make_splits
from domainbed_recycle.errors import UserError
from domainbed_recycle.networks import Model, autocast, build_model

Predict = Callable[[torch.Tensor], torch.Tensor]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Inference:
    """How models are evaluated: on `device`, under autocast to `precision` ("fp32": none), inputs in
    channels-last memory format or not, batches built as `loader` says."""

    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    loader: LoaderSettings = field(default_factory=LoaderSettings)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """`x` on the device (asynchronously from pinned memory), channels-last if asked for images."""
        x = x.to(self.device, non_blocking=self.loader.pin_memory)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


class SplitEvaluator:
    """Accuracies of one or more models on named splits, in one pass over each split.

    Args:
        splits: {name: split} (e.g. 'env0_in', 'env0_out', ...), evaluated in this order.
        inference: device, precision and loader (with persistent workers, each `accuracies` call reuses
            the same worker processes).
    """

    def __init__(self, splits: Mapping[str, Dataset], inference: Inference | None = None) -> None:
        self.names = list(splits)
        self.inference = inference or Inference()
        self.stream = SplitStream(list(splits.values()), self.inference.loader)

    def accuracies(self, models: Mapping[str, Predict],
                   only: Mapping[str, Collection[str]] | None = None) -> dict[str, dict[str, float]]:
        """{model name: {split name: fraction of correct argmax predictions (0..1)}}; `only[model]`, if
        given, restricts a model to those splits. Call with the models in eval mode."""
        only = only or {}
        wanted = {model: set(only.get(model, self.names)) for model in models}
        correct: dict[str, dict[str, Any]] = {model: dict.fromkeys(wanted[model], 0) for model in models}
        totals = dict.fromkeys(self.names, 0)
        run = self.inference
        with torch.inference_mode(), autocast(torch.device(run.device).type, run.precision):
            for s, x, y in self.stream:
                name = self.names[s]
                users = [model for model in models if name in wanted[model]]
                if not users:
                    continue
                x, y = run.to_device(x), y.to(run.device, non_blocking=run.loader.pin_memory)
                totals[name] += len(y)
                for model in users:  # counts stay on the device: no synchronisation per batch
                    correct[model][name] = correct[model][name] + (models[model](x).argmax(1) == y).sum()
        return {model: {name: int(count) / max(totals[name], 1) for name, count in correct[model].items()}
                for model in models}

    def close(self) -> None:
        """Stop the loader's workers (the evaluator cannot be used after)."""
        self.stream.close()


def iterate_batches(
    split: Dataset, batch_size: int = 512, device: str = "cpu", num_workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x [B, C, H, W], y [B]) over `split` in order, on `device` (batches of `batch_size` for an
    in-memory domain, DomainBed's 64 for files)."""
    from domainbed_recycle.datasets.base import InMemoryDomain

    if isinstance(split, InMemoryDomain):
        for start in range(0, len(split), batch_size):
            x, y = split.batch(torch.arange(start, min(start + batch_size, len(split))))
            yield x.to(device), y.to(device)
        return
    for _, x, y in SplitStream([split], LoaderSettings(workers=num_workers), batch_size):
        yield x.to(device), y.to(device)


@torch.no_grad()  # not inference_mode: callers keep and update the probabilities in place
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
def accuracy_of_batches(predict: Predict, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                        device: str = "cpu") -> float:
    """Fraction of correctly classified examples (0..1) over `batches` of (x [B, ...], y [B])."""
    correct, total = 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        correct += (predict(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / max(total, 1)


def accuracy(predict: Predict, split: Dataset, device: str = "cpu", num_workers: int = 0) -> float:
    """Fraction of correctly classified examples of `split` (0..1)."""
    inference = Inference(device, loader=LoaderSettings(workers=num_workers))
    return SplitEvaluator({"split": split}, inference).accuracies({"": predict})[""]["split"]


def evaluate_splits(
    predict: Predict, in_splits: Sequence[Dataset], out_splits: Sequence[Dataset], device: str = "cpu",
    num_workers: int = 0,
) -> dict[str, float]:
    """`env{i}_in_acc` and `env{i}_out_acc` of `predict` for every domain i (DomainBed's record keys)."""
    splits = {}
    for env_index, (split_in, split_out) in enumerate(zip(in_splits, out_splits, strict=True)):
        splits[f"env{env_index}_in"], splits[f"env{env_index}_out"] = split_in, split_out
    inference = Inference(device, loader=LoaderSettings(workers=num_workers))
    accs = SplitEvaluator(splits, inference).accuracies({"": predict})[""]
    return {f"{name}_acc": acc for name, acc in accs.items()}


class Evaluator:
    """Accuracy of state dicts (or of ensembles of them) on every split of one dataset and trial.

    The `in`/`out` split of each domain depends only on the trial seed, so one evaluator serves every
    test domain of that trial.

    Args:
        dataset: a built `MultipleDomainDataset`.
        trial_seed, holdout_fraction: as in the runs, so the splits are the runs' splits.
        arch: architecture of the models to evaluate (from a run checkpoint's metadata).
    """

    def __init__(self, dataset: Any, trial_seed: int, holdout_fraction: float, arch: dict[str, Any]) -> None:
        self.dataset = dataset
        self.arch = arch
        self.device = default_device()
        self.in_splits, self.out_splits = make_splits(dataset, holdout_fraction, trial_seed)
        self._model: Model = build_model(arch).to(self.device).eval()

    @property
    def n_envs(self) -> int:
        return len(self.in_splits)

    def load(self, state: Mapping[str, torch.Tensor]) -> Model:
        self._model.load_state_dict(state)
        return self._model.eval()

    def record(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """`env{i}_in_acc` / `env{i}_out_acc` of the model with weights `state`."""
        model = self.load(state)
        return evaluate_splits(model, self.in_splits, self.out_splits, self.device, self.dataset.N_WORKERS)

    def val_acc(self, state: Mapping[str, torch.Tensor], test_envs: Sequence[int]) -> float:
        """Training-domain validation accuracy: mean `out` accuracy over the training domains."""
        model = self.load(state)
        envs = [i for i in range(self.n_envs) if i not in test_envs]
        return float(np.mean([accuracy(model, self.out_splits[i], self.device) for i in envs]))

    def test_acc(self, state: Mapping[str, torch.Tensor], test_env: int) -> float:
        """Accuracy on the test domain's `in` split (DomainBed's reported test accuracy)."""
        return accuracy(self.load(state), self.in_splits[test_env], self.device)

    def domain_acc(self, state: Mapping[str, torch.Tensor], env: int) -> float:
        """Accuracy on the whole domain `env` (its `in` and `out` splits together): the reference's
        pooled evaluation, made once, independent of any trial's split."""
        return accuracy(self.load(state), self.dataset[env], self.device, self.dataset.N_WORKERS)

    def test_probs(self, state: Mapping[str, torch.Tensor], test_env: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities [N, C], labels [N]) of one model on the test domain's `in` split."""
        return predict_probs(self.load(state), self.in_splits[test_env], self.device, self.dataset.N_WORKERS)

    def split_probs(self, state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{'env{i}_in' / 'env{i}_out': (probabilities [N, C], labels [N])} of one model."""
        model = self.load(state)
        out = {}
        for i in range(self.n_envs):
            out[f"env{i}_in"] = predict_probs(model, self.in_splits[i], self.device)
            out[f"env{i}_out"] = predict_probs(model, self.out_splits[i], self.device)
        return out


class ProbabilityEnsemble:
    """Prediction ensemble accumulated one member at a time: a running sum of probabilities per split,
    so memory is that of one member whatever the ensemble size.

    >>> ensemble = ProbabilityEnsemble()
    >>> for state in states: ensemble.add(evaluator.split_probs(state))
    >>> ensemble.record()  # {'env0_in_acc': ..., ...}
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._labels: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, member: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fold in one member's {split: (probabilities [N, C], labels [N])}."""
        for split, (probs, labels) in member.items():
            if split in self._sums:
                self._sums[split] += probs
            else:
                self._sums[split], self._labels[split] = probs.clone(), labels
        self.count += 1

    def record(self) -> dict[str, float]:
        """`{split}_acc` of the ensemble (argmax of the summed probabilities, the mean's argmax)."""
        if not self.count:
            raise ValueError("an ensemble needs at least one member")
        return {f"{split}_acc": float((total.argmax(1) == self._labels[split]).float().mean())
                if len(self._labels[split]) else 0.0 for split, total in self._sums.items()}


class EvaluatorCache:
    """Evaluators by (dataset, trial seed), built on first use; one dataset's data in memory at a time.

    Args:
        data_dir: where real datasets live (None for the built-ins).
        holdout_fraction: of every run evaluated through this cache.
    """

    def __init__(self, data_dir: str | None, holdout_fraction: float) -> None:
        self.data_dir = data_dir
        self.holdout_fraction = holdout_fraction
        self._dataset_name: str | None = None
        self._dataset: Any = None
        self._evaluators: dict[int, Evaluator] = {}

    def get(self, dataset: str, trial_seed: int, arch: dict[str, Any]) -> Evaluator:
        """The evaluator of (dataset, trial seed) for models of architecture `arch`."""
        if dataset != self._dataset_name:
            if getattr(get_dataset_class(dataset), "SHUFFLED_BY_SEED", False):
                raise UserError(f"{dataset} deals its digits into domains by each run's seed (DomainBed's protocol): "
                                f"runs of one (dataset, trial seed) cannot share an evaluation")
            self._evaluators.clear()
            self._dataset = get_dataset(dataset, self.data_dir, [], {"data_augmentation": False})
            self._dataset_name = dataset
        if trial_seed not in self._evaluators:
            self._evaluators[trial_seed] = Evaluator(self._dataset, trial_seed, self.holdout_fraction, arch)
        return self._evaluators[trial_seed]
