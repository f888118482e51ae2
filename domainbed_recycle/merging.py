"""Model merging operators on state dicts: WiSE-FT, task arithmetic, TIES, DARE, Fisher, Model Stock, SLERP.

Pure math, no I/O: state dicts in, a new state dict out, inputs never modified. Conventions are those
of `averaging` (read its module docstring): floating entries are combined in float64 and cast back to
the first state dict's dtype; non-floating entries (BatchNorm ``num_batches_tracked``) are copied from
the base ``theta0``, never combined; every state dict must have ``theta0``'s keys and shapes
(``ValueError`` names the first mismatching key and the 0-based index of the offending model).

Notation: ``theta0`` is the base (in the recycling pipeline, φ0 + the linear probe, the LP-FT init),
``theta_k`` the k-th fine-tuned model, ``tau_k = theta_k - theta0`` its task vector. Optional per-model
``weights`` w_k (mergekit's per-model ``weight``) scale each task vector; left at None, every w_k is 1 and
the arithmetic is the unweighted one, operation for operation.

Each operator is declared once, with its parameters, ranges and validation grid, in `merge_ops/`;
`results/merging_crosscheck/` compares these functions with mergekit's and FusionBench's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor

from domainbed_recycle.averaging import StateDict, _acc_dtype, _is_averaged, check_compatible, interpolate

__all__ = [
    "dare",
    "dare_masks",
    "drop_and_rescale",
    "fisher_weighted_average",
    "model_stock",
    "model_stock_ratio",
    "slerp",
    "task_arithmetic",
    "ties_merge",
    "wise_ft",
]


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _acc(t: Tensor) -> Tensor:
    """A float64 (complex128; float32 on MPS) copy of a floating entry."""
    return t.detach().to(_acc_dtype(t), copy=True)


def _out(theta0: StateDict, combined: dict[str, Tensor]) -> dict[str, Tensor]:
    """`combined` cast back to theta0's dtypes, theta0's non-floating entries copied, theta0's key order."""
    return {key: combined[key].to(t.dtype) if _is_averaged(t) else t.detach().clone() for key, t in theta0.items()}


def wise_ft(theta0: StateDict, theta_ft: StateDict, alpha: float) -> dict[str, Tensor]:
    """WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"): ``(1 - α) θ0 + α θ_ft``.

    α = 0 returns θ0, α = 1 returns θ_ft exactly; non-floating entries come from θ0.
    """
    return interpolate(theta0, theta_ft, _finite("alpha", alpha))


def task_arithmetic(
    theta0: StateDict, models: Iterable[StateDict], lam: float, weights: Sequence[float] | None = None
) -> dict[str, Tensor]:
    """Task arithmetic (Ilharco et al. 2023, "Editing models with task arithmetic"): ``θ0 + λ Σ_k w_k τ_k``.

    Streams over `models` (a generator may load them one by one): one float64 accumulator of Σ w_k τ_k.
    λ = 1/K (all w_k = 1) gives the uniform average of the K models.

    Raises:
        ValueError: no model, non-finite λ or weight, as many weights as models not given, or keys/shapes
            differing from θ0's.
    """
    lam = _finite("lambda", lam)
    w = None if weights is None else [_finite("weight", x) for x in weights]
    total = {key: torch.zeros_like(t, dtype=_acc_dtype(t)) for key, t in theta0.items() if _is_averaged(t)}
    count = 0
    with torch.no_grad():
        for index, model in enumerate(models):
            check_compatible(theta0, model, index + 1)
            if w is not None and index >= len(w):
                raise ValueError(f"got more models than weights ({len(w)})")
            for key, acc in total.items():
                tau = model[key].detach().to(acc.dtype) - theta0[key].detach().to(acc.dtype)
                if w is None:
                    acc.add_(tau)
                else:
                    acc.add_(tau, alpha=w[index])
            count += 1
        if count == 0:
            raise ValueError("task_arithmetic needs at least one model")
        if w is not None and count != len(w):
            raise ValueError(f"got {count} models but {len(w)} weights")
        return _out(theta0, {key: _acc(theta0[key]).add_(acc, alpha=lam) for key, acc in total.items()})


def _task_vectors(theta0: StateDict, models: Sequence[StateDict]) -> list[dict[str, Tensor]]:
    taus = []
    for index, model in enumerate(models):
        check_compatible(theta0, model, index + 1)
        taus.append({key: _acc(model[key]) - _acc(t) for key, t in theta0.items() if _is_averaged(t)})
    return taus


TRIM_SCOPES = ("model", "tensor")


def _top_fraction(values: Tensor, keep: float) -> Tensor:
    """The magnitude threshold keeping the ceil(keep · n) largest of `values` (at least one; ties at the
    threshold are all kept)."""
    n_keep = max(1, math.ceil(keep * values.numel()))
    return torch.topk(values, n_keep, sorted=True).values[-1]


def _trim(tau: dict[str, Tensor], keep: float, scope: str = "model") -> dict[str, Tensor]:
    """Keep the `keep` fraction of largest-magnitude entries of one task vector: ranked over all its
    entries together (scope "model", the TIES reference code) or within each tensor ("tensor", mergekit)."""
    if keep >= 1.0:
        return tau
    if scope == "tensor":
        return {key: torch.where(t.abs() >= _top_fraction(t.abs().flatten(), keep), t, torch.zeros_like(t))
                for key, t in tau.items()}
    threshold = _top_fraction(torch.cat([t.abs().flatten() for t in tau.values()]), keep)
    return {key: torch.where(t.abs() >= threshold, t, torch.zeros_like(t)) for key, t in tau.items()}


def _per_model(name: str, value: float | Sequence[float], k: int) -> list[float]:
    """One value per model: `value` repeated, or checked to have K entries."""
    if isinstance(value, (int, float)):
        return [float(value)] * k
    values = [float(v) for v in value]
    if len(values) != k:
        raise ValueError(f"{name}: got {len(values)} values for {k} models")
    return values


def ties_merge(
    theta0: StateDict, models: Sequence[StateDict], lam: float = 1.0, keep: float | Sequence[float] = 0.2,
    weights: Sequence[float] | None = None, trim: str = "model",
) -> dict[str, Tensor]:
    """TIES-merging (Yadav et al. 2023, "Resolving interference when merging models").

    1. trim: each τ_k keeps its top-`keep` fraction of entries by magnitude, over the whole task vector
       (`trim="model"`, as the reference code, which ranks every parameter of a model together) or
       within each tensor (`trim="tensor"`, as mergekit); the rest become 0;
    2. elect: per entry, the sign of Σ_k w_k trimmed τ_k (the sign carrying the larger total mass);
    3. disjoint mean: per entry, the mean of the trimmed τ_k that are non-zero and have the elected
       sign (0 where none does), weighted by w_k when weights are given (mergekit's definition);
    ``θ = θ0 + λ · merged τ``.

    All K task vectors are held at once (the trim needs each one's global ranking).

    Args:
        keep: fraction in (0, 1] of each task vector kept (the paper's k%/100; k = 20% by default), one
            for all models or one per model.
        weights: w_k > 0 per model, or None (all 1).
        trim: "model" or "tensor".
    """
    lam = _finite("lambda", lam)
    if not models:
        raise ValueError("ties_merge needs at least one model")
    keeps = _per_model("keep", keep, len(models))
    for value in keeps:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {value}")
    if trim not in TRIM_SCOPES:
        raise ValueError(f"trim must be one of {', '.join(TRIM_SCOPES)}, got {trim!r}")
    w = None if weights is None else _per_model("weight", weights, len(models))
    if w is not None and any(not math.isfinite(x) or x <= 0 for x in w):
        raise ValueError(f"weights must be finite and > 0, got {w}")
    with torch.no_grad():
        taus = [_trim(tau, k, trim) for tau, k in zip(_task_vectors(theta0, models), keeps, strict=True)]
        merged = {}
        for key in taus[0]:
            stack = torch.stack([tau[key] for tau in taus])
            if w is None:
                sign = torch.sign(stack.sum(0))
                agree = (torch.sign(stack) == sign) & (stack != 0)
                count = agree.sum(0).clamp(min=1)
                merged[key] = _acc(theta0[key]) + lam * (stack * agree).sum(0) / count
                continue
            scale = torch.tensor(w, dtype=stack.dtype).reshape(-1, *([1] * (stack.dim() - 1)))
            weighted = stack * scale
            sign = torch.sign(weighted.sum(0))
            agree = (torch.sign(stack) == sign) & (stack != 0)
            mass = (scale * agree).sum(0)
            merged[key] = _acc(theta0[key]) + lam * (weighted * agree).sum(0) / torch.where(mass > 0, mass, 1.0)
        return _out(theta0, merged)


def dare_masks(theta0: StateDict, p: float, generator: torch.Generator) -> dict[str, Tensor]:
    """DARE's keep-masks for one model: per floating entry of θ0, in θ0's key order, ``u >= p`` with u
    uniform in [0, 1) drawn by `generator` (so each entry is kept with probability 1 − p)."""
    return {key: torch.rand(t.shape, generator=generator) >= p for key, t in theta0.items() if _is_averaged(t)}


def drop_and_rescale(theta0: StateDict, model: StateDict, masks: StateDict, p: float) -> dict[str, Tensor]:
    """``θ0 + mask ⊙ τ / (1 − p)`` per floating entry (DARE's step for one model, with given masks);
    non-floating entries come from θ0."""
    out = {}
    with torch.no_grad():
        for key, t in theta0.items():
            if not _is_averaged(t):
                out[key] = t.detach().clone()
                continue
            base = _acc(t)
            tau = _acc(model[key]) - base
            keep = masks[key].to(tau.device)
            out[key] = (base + torch.where(keep, tau / (1.0 - p), torch.zeros_like(tau))).to(t.dtype)
    return out


def dare(
    theta0: StateDict, models: Iterable[StateDict], p: float | Sequence[float], seed: int
) -> Iterator[dict[str, Tensor]]:
    """DARE (Yu et al. 2024, "Language models are Super Mario"): drop and rescale each task vector.

    Each entry of τ_k is dropped (set to 0) with probability p and the survivors are rescaled by
    1/(1 − p), so E[dropped τ_k] = τ_k. Yields ``θ0 + DARE(τ_k)`` per model, lazily, to be passed to
    `task_arithmetic` or `ties_merge`. The masks (`dare_masks`) come from one ``torch.Generator`` seeded
    with `seed`, drawn model by model in θ0's key order: the same (θ0, models, p, seed) always gives the
    same output. Non-floating entries come from θ0.

    Args:
        p: drop rate in [0, 1), one for all models or one per model.
    """
    rates = [p] if isinstance(p, (int, float)) else list(p)
    for rate in rates:
        rate = _finite("p", rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"p must be in [0, 1), got {rate}")
    generator = torch.Generator().manual_seed(int(seed))
    for index, model in enumerate(models):
        check_compatible(theta0, model, index + 1)
        if len(rates) > 1 and index >= len(rates):
            raise ValueError(f"p: got {len(rates)} values for more models")
        rate = float(rates[index] if len(rates) > 1 else rates[0])
        yield drop_and_rescale(theta0, model, dare_masks(theta0, rate, generator), rate)


SLERP_DOT_THRESHOLD = 0.9995  # |cos| above this: the tensors are nearly colinear, interpolate linearly
SLERP_EPS = 1e-8  # a tensor with a smaller norm is not normalized


def slerp(theta0: StateDict, theta1: StateDict, t: float) -> dict[str, Tensor]:
    """Spherical linear interpolation (Shoemake 1985), entry by entry, from θ0 (t = 0) to θ1 (t = 1).

    For each floating entry, with a, b its two tensors flattened and â = a/‖a‖, b̂ = b/‖b‖ (a tensor of
    norm ≤ 1e-8 is left as it is): ω = arccos(â·b̂) and ``sin((1 − t)ω)/sin ω · a + sin(tω)/sin ω · b``;
    where |â·b̂| > 0.9995 (nearly colinear) it is ``(1 − t) a + t b``. This is the definition of
    mergekit's and FusionBench's `slerp` (computed here in float64). Non-floating entries come from θ0.
    """
    t = _finite("t", t)
    check_compatible(theta0, theta1, 1)
    out = {}
    with torch.no_grad():
        for key, x in theta0.items():
            if not _is_averaged(x):
                out[key] = x.detach().clone()
                continue
            a, b = _acc(x), _acc(theta1[key])
            na, nb = float(a.norm()), float(b.norm())
            dot = float(((a / na if na > SLERP_EPS else a) * (b / nb if nb > SLERP_EPS else b)).sum())
            if abs(dot) > SLERP_DOT_THRESHOLD:
                merged = (1.0 - t) * a + t * b
            else:
                omega = math.acos(dot)
                merged = (math.sin((1.0 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)
            out[key] = merged.to(x.dtype)
    return out


def fisher_weighted_average(
    models: Iterable[StateDict], fishers: Iterable[StateDict], floor: float = 1e-6
) -> dict[str, Tensor]:
    """Fisher-weighted averaging (Matena & Raffel 2022, "Merging models with Fisher-weighted averaging").

    Per entry, ``θ = Σ_k F_k θ_k / Σ_k F_k`` with ``F_k`` the diagonal Fisher of model k (same keys as
    the model's floating entries; missing keys, e.g. frozen buffers, get F = 1, i.e. a uniform
    average). ``floor`` is added to every F_k (the reference code's fisher floor), so entries with no
    Fisher mass anywhere fall back to the uniform average. Streams over (model, Fisher) pairs.
    Non-floating entries come from the first model.
    """
    floor = _finite("floor", floor)
    if floor <= 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    num: dict[str, Tensor] = {}
    den: dict[str, Tensor] = {}
    first: StateDict | None = None
    with torch.no_grad():
        for index, (model, fisher) in enumerate(zip(models, fishers, strict=True)):
            if first is None:
                first = model
            else:
                check_compatible(first, model, index)
            for key, t in first.items():
                if not _is_averaged(t):
                    continue
                theta = _acc(model[key])
                f = fisher[key].detach().to(theta.dtype) if key in fisher else torch.ones_like(theta)
                if f.shape != theta.shape:
                    raise ValueError(f"Fisher #{index}: '{key}' has shape {tuple(f.shape)}, "
                                     f"expected {tuple(theta.shape)}")
                f = f + floor
                num[key] = num[key].add_(f * theta) if key in num else f * theta
                den[key] = den[key].add_(f) if key in den else f.clone()
    if first is None:
        raise ValueError("fisher_weighted_average needs at least one model")
    return _out(first, {key: num[key] / den[key] for key in num})


def model_stock_ratio(deltas: Sequence[Tensor]) -> float:
    """Model Stock's interpolation ratio ``t = N cos / (1 + (N − 1) cos)`` for one layer.

    ``cos`` = mean pairwise cosine similarity between the N ≥ 2 fine-tuned deltas ``τ_k`` of the
    layer, clipped at 0 (orthogonal or opposed deltas: t = 0, stay at θ0). A layer whose deltas are all
    zero gives t = 0 (the mean then equals θ0 anyway).
    """
    n = len(deltas)
    if n < 2:
        raise ValueError(f"Model Stock needs at least 2 fine-tuned models, got {n}")
    flat = [d.flatten().to(torch.float64) for d in deltas]
    norms = [float(f.norm()) for f in flat]
    cosines = []
    for i in range(n):
        for j in range(i + 1, n):
            if norms[i] == 0 or norms[j] == 0:
                cosines.append(0.0)
            else:
                cosines.append(float(flat[i] @ flat[j]) / (norms[i] * norms[j]))
    cos = max(0.0, sum(cosines) / len(cosines))
    return n * cos / (1.0 + (n - 1) * cos)


def model_stock(theta0: StateDict, models: Sequence[StateDict]) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Model Stock (Jang et al. 2024, "Model Stock: all we need is just a few fine-tuned models").

    Per layer (state-dict entry), ``θ = t · mean_k θ_k + (1 − t) · θ0`` with t from `model_stock_ratio`
    (mean pairwise cosine of the deltas ``τ_k``). No hyper-parameter.

    Returns:
        (merged state dict, {key: t} for every floating entry).
    """
    if len(models) < 2:
        raise ValueError(f"Model Stock needs at least 2 fine-tuned models, got {len(models)}")
    with torch.no_grad():
        taus = _task_vectors(theta0, models)
        merged, ratios = {}, {}
        for key in taus[0]:
            deltas = [tau[key] for tau in taus]
            t = model_stock_ratio(deltas)
            ratios[key] = t
            merged[key] = _acc(theta0[key]) + t * torch.stack(deltas).mean(0)
        return _out(theta0, merged), ratios
