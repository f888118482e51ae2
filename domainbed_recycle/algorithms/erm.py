"""Empirical risk minimisation, and its moving average over iterates."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from domainbed_recycle.algorithms.base import ALGORITHMS, Algorithm, Minibatches
from domainbed_recycle.averaging import RunningAverage
from domainbed_recycle.hparams_spec import Define, Integer


@ALGORITHMS.register()
class ERM(Algorithm):
    """Minimise the cross-entropy on the pooled minibatches of all training domains."""

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        loss = F.cross_entropy(self.network(x), y)
        self.backward_step(loss)
        return {"loss": loss.item()}


@ALGORITHMS.register()
class MovingAverage(ERM):
    """ERM whose evaluated model is the uniform average of its iterates from `ma_start_step` on.

    This is weight averaging over the epochs of one run (DiWA's "MA"); before the start step the
    current network is evaluated.
    """

    @classmethod
    def define_hparams(cls, define: Define, profile: str) -> None:
        super().define_hparams(define, profile)
        define("ma_start_step", 100, None, Integer(low=0))  # iterates averaged from this step on (DiWA's MA)

    def __init__(self, arch: dict[str, Any], num_domains: int, hparams: dict[str, Any]) -> None:
        super().__init__(arch, num_domains, hparams)
        self.running = RunningAverage()
        self.network_average = copy.deepcopy(self.network)
        self._average_stale = True

    def train_step(self, minibatches: Minibatches, unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
        out = super().train_step(minibatches, unlabeled)
        if self.update_count >= int(self.hparams["ma_start_step"]):
            self.running.update(self.network)
            self._average_stale = True
        return out

    def extra_resume_state(self) -> dict[str, Any]:
        return super().extra_resume_state() | {"running": self.running.state()}

    def load_extra_resume_state(self, extra: dict[str, Any]) -> None:
        super().load_extra_resume_state(extra)
        self.running.load_state(extra["running"])
        self._average_stale = True

    def _averaged(self) -> torch.nn.Module:
        if self.running.count == 0:
            return self.network
        if self._average_stale:
            self.running.load_into(self.network_average)
            self._average_stale = False
        return self.network_average

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self._averaged()(x)

    def eval_state_dict(self) -> dict[str, torch.Tensor]:
        return self._averaged().state_dict()
