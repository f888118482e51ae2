"""V-REx (Krueger et al. 2021): penalise the variance of the per-domain risks (DomainBed's version)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from domainbed_recycle.algorithms.base import ALGORITHMS, Algorithm, Minibatches, make_optimizer
from domainbed_recycle.hparams_spec import Define, Integer, Real, log_uniform


def variance_penalty(losses: torch.Tensor) -> torch.Tensor:
    """Population variance mean_i (loss_i - mean(loss))^2 of per-domain losses [G] -> scalar."""
    return (losses - losses.mean()).pow(2).mean()


@ALGORITHMS.register()
class VREx(Algorithm):
    """mean_i loss_i + w * variance_penalty(losses), one cross-entropy per training domain.

    w = 1 for the first `vrex_penalty_anneal_iters` steps, then `vrex_lambda`; the optimiser is
    rebuilt (its moments reset) at the step where w jumps, as DomainBed does for Adam. The forward
    pass runs on the concatenated minibatches. Logged: `loss`, `nll` (mean cross-entropy; DomainBed
    logs the last domain's) and `penalty`.
    """

    @classmethod
    def define_hparams(cls, define: Define, profile: str) -> None:
        super().define_hparams(define, profile)
        define("vrex_lambda", 1e1, log_uniform(-1, 5), Real(low=0))
        # DomainBed's default is 500 steps (of 5000); built-in runs last 300 steps, so 100 there.
        anneal_default = 500 if profile == "resnet" else 100
        define("vrex_penalty_anneal_iters", anneal_default, lambda rng: int(10 ** rng.uniform(0, 4)), Integer(low=0))

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        anneal = int(self.hparams["vrex_penalty_anneal_iters"])
        weight = float(self.hparams["vrex_lambda"]) if self.update_count >= anneal else 1.0
        logits = self.network(torch.cat([x for x, _ in minibatches]))
        losses = torch.stack([
            F.cross_entropy(chunk, y)
            for chunk, (_, y) in zip(logits.split([len(x) for x, _ in minibatches]), minibatches, strict=True)
        ])
        nll = losses.mean()
        penalty = variance_penalty(losses)
        loss = nll + weight * penalty
        if self.update_count == anneal:
            self.optimizer = make_optimizer(self.network.parameters(), self.hparams)
        self.backward_step(loss)
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}
