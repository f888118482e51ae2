"""Deep CORAL (Sun & Saenko 2016) as defined in DomainBed: align feature means and covariances."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from domainbed_recycle.algorithms.base import ALGORITHMS, Algorithm, Minibatches
from domainbed_recycle.hparams_spec import Define, Real, log_uniform


def mean_cov_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """DomainBed's "mean_cov" kernel between two feature batches.

    Args:
        a: features [Na, D] of one domain (Na >= 2).
        b: features [Nb, D] of another domain (Nb >= 2).
    Returns:
        Scalar: mean over the D entries of (mean_a - mean_b)^2, plus mean over the D x D entries of
        (cov_a - cov_b)^2, with unbiased covariances (divided by N - 1).
    """
    mean_a, mean_b = a.mean(0), b.mean(0)
    centred_a, centred_b = a - mean_a, b - mean_b
    cov_a = centred_a.t() @ centred_a / (len(a) - 1)
    cov_b = centred_b.t() @ centred_b / (len(b) - 1)
    return (mean_a - mean_b).pow(2).mean() + (cov_a - cov_b).pow(2).mean()


def coral_penalty(features: list[torch.Tensor]) -> torch.Tensor:
    """Average of `mean_cov_distance` over the unordered pairs of domains.

    Args:
        features: one tensor [N_i, D] per domain.
    Returns:
        Scalar tensor; 0 when there is a single domain (no pair).
    """
    pairs = [(i, j) for i in range(len(features)) for j in range(i + 1, len(features))]
    if not pairs:
        return features[0].new_zeros(())
    return torch.stack([mean_cov_distance(features[i], features[j]) for i, j in pairs]).mean()


@ALGORITHMS.register()
class CORAL(Algorithm):
    """Mean per-domain cross-entropy + `mmd_gamma` * `coral_penalty` of the featurizer's outputs.

    Each domain's minibatch is passed through the featurizer separately (as DomainBed does);
    logits are `classifier(dropout(features))`. Logged: `loss` (the cross-entropy term, as DomainBed
    logs it) and `penalty`.
    """

    @classmethod
    def define_hparams(cls, define: Define, profile: str) -> None:
        super().define_hparams(define, profile)
        define("mmd_gamma", 1.0, log_uniform(-1, 1), Real(low=0))

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        features = [self.network.featurizer(x) for x, _ in minibatches]
        ce = torch.stack([
            F.cross_entropy(self.network.classifier(self.network.dropout(f)), y)
            for f, (_, y) in zip(features, minibatches, strict=True)
        ]).mean()
        penalty = coral_penalty(features)
        self.backward_step(ce + self.hparams["mmd_gamma"] * penalty)
        return {"loss": ce.item(), "penalty": penalty.item()}
