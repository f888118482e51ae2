"""Inter-domain Mixup (Yan et al. 2020; Wang et al. 2020), DomainBed's "Mixup"."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from domainbed_recycle.algorithms.base import ALGORITHMS, Algorithm, Minibatches
from domainbed_recycle.hparams_spec import Define, Real, log_uniform
from domainbed_recycle.resume import numpy_rng_state, set_numpy_rng_state

Pair = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def random_domain_pairs(minibatches: Minibatches, rng: np.random.RandomState) -> list[Pair]:
    """Pairs (domain p_k, domain p_{k+1 mod n}) along a random permutation p of the n domains.

    n pairs in all (one domain pairs with itself when n == 1); both batches of a pair are cut to
    the smaller of their sizes.
    """
    order = rng.permutation(len(minibatches)).tolist()
    pairs = []
    for k, i in enumerate(order):
        (xi, yi), (xj, yj) = minibatches[i], minibatches[order[(k + 1) % len(order)]]
        n = min(len(yi), len(yj))
        pairs.append(((xi[:n], yi[:n]), (xj[:n], yj[:n])))
    return pairs


def mixup_loss(logits: torch.Tensor, yi: torch.Tensor, yj: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * CE(logits, yi) + (1 - lam) * CE(logits, yj) for logits [B, C] and labels [B] -> scalar."""
    return lam * F.cross_entropy(logits, yi) + (1.0 - lam) * F.cross_entropy(logits, yj)


@ALGORITHMS.register()
class Mixup(Algorithm):
    """For each random pair of domains, mix the inputs x = lam*xi + (1-lam)*xj with
    lam ~ Beta(mixup_alpha, mixup_alpha) and train on `mixup_loss`; the objective is the mean over pairs.

    Randomness (pairing and lam) comes from a private numpy RandomState seeded, at construction,
    with one draw from torch's global generator, so a run seeded by the trainer is reproducible.
    """

    @classmethod
    def define_hparams(cls, define: Define, profile: str) -> None:
        super().define_hparams(define, profile)
        define("mixup_alpha", 0.2, log_uniform(-1, 1), Real(low=0, low_open=True))  # Beta(a, a) needs a > 0

    def __init__(self, arch: dict[str, Any], num_domains: int, hparams: dict[str, Any]) -> None:
        super().__init__(arch, num_domains, hparams)
        self.rng = np.random.RandomState(int(torch.randint(0, 2**31 - 1, ()).item()))

    def extra_resume_state(self) -> dict[str, Any]:
        return super().extra_resume_state() | {"rng": numpy_rng_state(self.rng)}

    def load_extra_resume_state(self, extra: dict[str, Any]) -> None:
        super().load_extra_resume_state(extra)
        set_numpy_rng_state(extra["rng"], self.rng)

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        alpha = float(self.hparams["mixup_alpha"])
        pairs = random_domain_pairs(minibatches, self.rng)
        objective = minibatches[0][0].new_zeros(())
        for (xi, yi), (xj, yj) in pairs:
            lam = float(self.rng.beta(alpha, alpha))
            objective = objective + mixup_loss(self.network(lam * xi + (1.0 - lam) * xj), yi, yj, lam)
        objective = objective / len(pairs)
        self.backward_step(objective)
        return {"loss": objective.item()}
