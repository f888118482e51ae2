"""IGA (Koyama & Yamaguchi 2020, inter-environmental gradient alignment), as DomainBed implements it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from domainbed_recycle.algorithms.base import ALGORITHMS, Algorithm, Minibatches
from domainbed_recycle.hparams_spec import Define, Real, log_uniform


@ALGORITHMS.register()
class IGA(Algorithm):
    """mean_e loss_e + penalty * sum_e ||grad loss_e - grad mean_e loss_e||^2.

    One forward pass per training domain; the gradients are taken with respect to every trainable
    parameter, each domain's with a graph (so the penalty trains them), the mean's as a constant.
    Logged: `loss` (the mean cross-entropy, as DomainBed) and `penalty`.
    """

    @classmethod
    def define_hparams(cls, define: Define, profile: str) -> None:
        super().define_hparams(define, profile)
        define("penalty", 1000.0, log_uniform(1, 5), Real(low=0))  # DomainBed's default and range

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        params = [p for p in self.network.parameters() if p.requires_grad]
        total = torch.zeros(())
        env_grads = []
        for x, y in minibatches:
            loss = F.cross_entropy(self.network(x), y)
            total = total + loss
            env_grads.append(torch.autograd.grad(loss, params, create_graph=True))
        mean_loss = total / len(minibatches)
        mean_grads = torch.autograd.grad(mean_loss, params, retain_graph=True)
        penalty = sum((g - m).pow(2).sum() for grads in env_grads for g, m in zip(grads, mean_grads, strict=True))
        objective = mean_loss + float(self.hparams["penalty"]) * penalty
        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer.step()
        return {"loss": mean_loss.item(), "penalty": penalty.item()}
