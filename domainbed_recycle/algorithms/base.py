"""The Algorithm contract: `update(minibatches) -> dict of floats` and `predict(x) -> logits`.

A new algorithm is one subclass registered with `@ALGORITHMS.register()`; it declares its own
hyper-parameters in `define_hparams` (inherited and extended by its subclasses). The trainer calls
`train_step`, which handles the linear-probe and LP-warm-up logic (featurizer frozen) and the
precision (forward passes under autocast) around the subclass's `update`; `update` ends with
`self.backward_step(loss)` (zero_grad, backward, step: with fp16's gradient scaler when the run has one,
so no algorithm handles precision itself).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch
from torch import nn

from domainbed_recycle.hparams_spec import Define
from domainbed_recycle.networks import Model, autocast, build_model
from domainbed_recycle.registry import Registry

Minibatches = list[tuple[torch.Tensor, torch.Tensor]]

ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm")
OPTIMIZERS = ("adam", "sgd")  # what `make_optimizer` builds
LP_STEPS = 0  # default LP warm-up of a run (steps training the head alone first): none


def make_optimizer(params: Any, hparams: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimiser named by hparams['optimizer'] (Adam as DomainBed, or SGD with momentum 0.9)."""
    name = hparams.get("optimizer", OPTIMIZERS[0])
    if name == "adam":
        return torch.optim.Adam(params, lr=hparams["lr"], weight_decay=hparams["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(params, lr=hparams["lr"], weight_decay=hparams["weight_decay"], momentum=0.9)
    raise ValueError(f"unknown optimizer '{name}'")


class Algorithm(nn.Module):
    """Base class. Subclasses implement `update`; they may override `predict` and `eval_state_dict`.

    Args:
        arch: architecture dict (see `networks.architecture`); gives input shape and num_classes.
        num_domains: number of training domains (len(minibatches) in `update`).
        hparams: hyper-parameters (see `hparams_registry` and `define_hparams`).
    Attributes:
        network: the `Model` being trained (featurizer -> dropout -> classifier).
        update_count: number of `train_step` calls so far.
        linear_probe: when True the featurizer is never trained (set by the trainer).
        device_type, precision: where `update` runs and in which precision (`set_precision`).
        scaler: fp16's gradient scaler (None otherwise).
    """

    def __init__(self, arch: dict[str, Any], num_domains: int, hparams: dict[str, Any]) -> None:
        super().__init__()
        self.arch = arch
        self.num_domains = num_domains
        self.hparams = hparams
        self.network: Model = build_model(arch, dropout=hparams.get("dropout", 0.0))
        self.optimizer = make_optimizer(self.network.parameters(), hparams)
        self.update_count = 0
        self.linear_probe = False
        self.device_type = "cpu"
        self.precision = "fp32"
        self.scaler: torch.amp.GradScaler | None = None

    def set_precision(self, device_type: str, precision: str) -> None:
        """Run `update`'s forward passes under autocast to `precision` ("fp32": none; "bf16"; "fp16",
        which also scales the loss: see `backward_step`) on `device_type` ("cpu" or "cuda")."""
        self.device_type, self.precision = device_type, precision
        self.scaler = torch.amp.GradScaler(device_type) if precision == "fp16" else None

    @classmethod
    def define_hparams(cls, define: Define, profile: str) -> None:
        """Declare this algorithm's own hyper-parameters (on top of `hparams_registry`'s common ones)
        with `define(name, default, sampler, kind)`; a subclass calls `super().define_hparams` first
        to keep its parent's. `profile` is one of `hparams_registry.PROFILES`. Default: none."""

    def featurizer_frozen(self) -> bool:
        """True during a linear probe and during the first `lp_steps` steps (LP warm-up): one of every run's
        hyper-parameters, whose default `LP_STEPS` `hparams_registry` declares too."""
        return self.linear_probe or self.update_count < int(self.hparams.get("lp_steps", LP_STEPS))

    def train_step(self, minibatches: Minibatches, unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
        """One optimisation step: [(x [B, C, H, W], y [B]) per training domain] -> logged floats.

        `unlabeled`: with DomainBed's `--task domain_adaptation`, one batch x [B, C, H, W] per test
        domain's unlabeled split; passed on to an `update` that takes an `unlabeled` argument (as in
        DomainBed, algorithms that do not use it ignore it).

        When an LP warm-up ends (step `lp_steps`), the optimiser is made anew over every parameter, as the
        reference's `_init_optimizer` after its warm-up: no Adam moments of the head-only phase carry over.
        (The reference trains the head alone for lp_steps + 1 updates, as it re-creates the optimiser
        after update `lp_steps`; here the head trains alone for exactly `lp_steps` updates.)
        """
        lp_steps = int(self.hparams.get("lp_steps", LP_STEPS))
        if lp_steps and not self.linear_probe and self.update_count == lp_steps:
            self.optimizer = make_optimizer(self.network.parameters(), self.hparams)
        frozen = self.featurizer_frozen()
        for param in self.network.featurizer.parameters():
            param.requires_grad_(not frozen)
        self.train()
        with autocast(self.device_type, self.precision):
            if unlabeled is not None and "unlabeled" in inspect.signature(self.update).parameters:
                out = self.update(minibatches, unlabeled=unlabeled)  # type: ignore[call-arg]
            else:
                out = self.update(minibatches)
        self.update_count += 1
        return out

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        raise NotImplementedError

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """One optimiser step on scalar `loss`: zero_grad, backward, step (of `self.optimizer` by default).

        Outside autocast (backward passes take the forward's dtypes anyway). With fp16 the loss is scaled
        and the step skipped when a gradient overflowed (`torch.amp.GradScaler`); in fp32 and bf16 this
        is exactly `zero_grad(); loss.backward(); step()`.
        """
        optimizer = optimizer or self.optimizer
        outside = (torch.autocast(self.device_type, enabled=False) if self.precision != "fp32"
                   else contextlib.nullcontext())
        with outside:
            optimizer.zero_grad()
            if self.scaler is None:
                loss.backward()
                optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.step(optimizer)
                self.scaler.update()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] of the model to evaluate."""
        return self.network(x)

    def eval_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the model that `predict` uses (what checkpoints store)."""
        return self.network.state_dict()

    def end_of_evaluation(self, record: dict[str, Any]) -> None:
        """Hook called after each evaluation with its record (SWAD uses it to pick its window)."""

    # ------------------------------------------------------------------ resume (see `resume`)
    def resume_state(self) -> dict[str, Any]:
        """Everything later steps depend on, besides the constructor's arguments: weights and buffers
        of every submodule, the optimiser's state, `update_count`, and `extra_resume_state()`.
        Tensors, numbers, strings, None, lists and dicts only (read back with weights_only)."""
        state = {"module": self.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "update_count": self.update_count, "extra": self.extra_resume_state()}
        if self.scaler is not None:  # fp16: the loss scale and its growth tracker
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Continue from `resume_state()`'s output (on a freshly built algorithm with the same args)."""
        self.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.update_count = int(state["update_count"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.load_extra_resume_state(state["extra"])

    def extra_resume_state(self) -> dict[str, Any]:
        """State kept outside modules and the optimiser (running averages, own RNGs); a subclass
        holding such state extends both this and `load_extra_resume_state`."""
        return {}

    def load_extra_resume_state(self, extra: dict[str, Any]) -> None:
        """Inverse of `extra_resume_state`."""
