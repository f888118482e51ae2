"""Evaluates combined models (soups, ensembles) on a dataset's DomainBed splits.

One `Evaluator` per (dataset, trial seed): the `in`/`out` split of each domain depends only on the
trial seed, so it serves every test domain of that trial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from domainbed_recycle.networks import Model, build_model
from domainbed_recycle.training import evaluate_splits, make_splits


class Evaluator:
    """Accuracy of state dicts (or of ensembles of them) on every split of one dataset and trial.

    Args:
        dataset: a built `MultipleDomainDataset`.
        trial_seed, holdout_fraction: as in the runs, so the splits are the runs' splits.
        arch: architecture of the models to evaluate (from a run checkpoint's metadata).
    """

    def __init__(self, dataset: Any, trial_seed: int, holdout_fraction: float, arch: dict[str, Any]) -> None:
        self.dataset = dataset
        self.arch = arch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
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
        from domainbed_recycle.evaluation import accuracy

        model = self.load(state)
        envs = [i for i in range(self.n_envs) if i not in test_envs]
        return float(np.mean([accuracy(model, self.out_splits[i], self.device) for i in envs]))

    def test_acc(self, state: Mapping[str, torch.Tensor], test_env: int) -> float:
        """Accuracy on the test domain's `in` split (DomainBed's reported test accuracy)."""
        from domainbed_recycle.evaluation import accuracy

        return accuracy(self.load(state), self.in_splits[test_env], self.device)

    def split_probs(self, state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{'env{i}_in' / 'env{i}_out': (probabilities [N, C], labels [N])} of one model."""
        from domainbed_recycle.evaluation import predict_probs

        model = self.load(state)
        out = {}
        for i in range(self.n_envs):
            out[f"env{i}_in"] = predict_probs(model, self.in_splits[i], self.device)
            out[f"env{i}_out"] = predict_probs(model, self.out_splits[i], self.device)
        return out


def ensemble_record(members: Sequence[dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, float]:
    """Accuracies of the ensemble that averages the members' predicted probabilities, per split."""
    record = {}
    for split in members[0]:
        probs = torch.stack([member[split][0] for member in members]).mean(0)
        labels = members[0][split][1]
        record[f"{split}_acc"] = float((probs.argmax(1) == labels).float().mean()) if len(labels) else 0.0
    return record
