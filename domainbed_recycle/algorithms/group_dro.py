"""Group DRO (Sagawa et al. 2020, Algorithm 1) with domains as groups, as in DomainBed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from domainbed_recycle.algorithms.base import ALGORITHMS, Algorithm, Minibatches
from domainbed_recycle.hparams_spec import Define, Real, log_uniform


def group_dro_weights(q: torch.Tensor, losses: torch.Tensor, eta: float) -> torch.Tensor:
    """One exponentiated-gradient step on the group weights.

    Args:
        q: current weights [G] (positive, summing to 1).
        losses: per-group losses [G] (treated as constants).
        eta: step size (`groupdro_eta`).
    Returns:
        New weights [G]: q_i * exp(eta * loss_i), normalised to sum to 1.
    """
    q = q * torch.exp(eta * losses.detach())
    return q / q.sum()


@ALGORITHMS.register()
class GroupDRO(Algorithm):
    """Minimise sum_i q_i * loss_i, the q-weighted per-domain cross-entropies.

    q (buffer [num_domains], initially uniform) is updated with `group_dro_weights` using this
    step's losses *before* weighting them, as in DomainBed. Each domain's minibatch gets its own
    forward pass (DomainBed's structure).
    """

    @classmethod
    def define_hparams(cls, define: Define, profile: str) -> None:
        super().define_hparams(define, profile)
        define("groupdro_eta", 1e-2, log_uniform(-3, -1), Real(low=0))

    q: torch.Tensor

    def __init__(self, arch: dict, num_domains: int, hparams: dict) -> None:
        super().__init__(arch, num_domains, hparams)
        self.register_buffer("q", torch.full((num_domains,), 1.0 / num_domains))

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        losses = torch.stack([F.cross_entropy(self.network(x), y) for x, y in minibatches])
        self.q = group_dro_weights(self.q, losses, float(self.hparams["groupdro_eta"]))
        loss = torch.dot(losses, self.q)
        self.backward_step(loss)
        return {"loss": loss.item()}
