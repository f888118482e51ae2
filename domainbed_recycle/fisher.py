"""Diagonal Fisher information of a model on a few examples (the input of Fisher-weighted averaging).

The edge of `merging.fisher_weighted_average`: it needs a model and data, the weighting itself is pure.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap


def diagonal_fisher(model: nn.Module, x: Tensor, generator: torch.Generator, batch_size: int = 16) -> dict[str, Tensor]:
    """Diagonal Fisher ``F = mean_n (∂ log p(ŷ_n | x_n) / ∂θ)²`` of every parameter of `model`.

    As Matena & Raffel (2022): per-example squared gradients of the log-likelihood, averaged over the
    N examples, with the label ŷ_n *sampled* from the model's own predictive distribution p(· | x_n)
    (the Fisher of the model, not the empirical Fisher of the true labels). Labels are drawn on the CPU
    from `generator`, so the result is reproducible. The model is used in eval mode (no dropout, frozen
    BatchNorm statistics) and is not modified.

    Args:
        model: maps x [B, ...] to logits [B, C].
        x: N inputs [N, ...] on the model's device.
        generator: CPU generator for the sampled labels.
        batch_size: examples per vmapped step; per-example gradients take batch_size x the model's
            parameter memory (16 x 100 MB for a ResNet-50).

    Returns:
        {parameter name (as in ``model.state_dict()``): Fisher, same shape, float32}; buffers have none.
    """
    was_training = model.training
    model.eval()
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def log_likelihood(theta: dict[str, Tensor], x1: Tensor, y1: Tensor) -> Tensor:
        logits = functional_call(model, (theta, buffers), (x1.unsqueeze(0),))
        return torch.log_softmax(logits, dim=1)[0].gather(0, y1.unsqueeze(0)).sum()  # vmap-safe indexing

    per_example = vmap(grad(log_likelihood), in_dims=(None, 0, 0))
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            with torch.no_grad():
                probs = torch.softmax(model(xb), dim=1).float().cpu()
            yb = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(xb.device)
            grads = per_example(params, xb, yb)
            for name, g in grads.items():
                fisher[name] += g.float().pow(2).sum(0)
    finally:
        model.train(was_training)
    return {name: f / max(len(x), 1) for name, f in fisher.items()}
