"""Weight averaging of state dicts: the one module behind MovingAverage, SWAD, soups, Fusing and ratatouille.

All functions work on ``Mapping[str, Tensor]`` (a ``module.state_dict()``, or a dict loaded from a
checkpoint) and return a new ``dict[str, Tensor]``; inputs are never modified.

Conventions shared by every function here
-----------------------------------------
- **Floating (and complex) entries** (weights, biases, BatchNorm ``running_mean``/``running_var``) are
  averaged. The arithmetic runs in float64 (complex128) accumulators and the result is cast back to the
  dtype of the first state dict, so averaging many float32/bfloat16 models does not pile up rounding
  error. On Apple MPS, which has no float64, the accumulators are float32.
- **Non-floating entries** (integer/bool buffers, e.g. BatchNorm ``num_batches_tracked``) are not
  averaged: they are copied from the *first* state dict (``RunningAverage`` keeps the *latest* one, see
  there). An average of step counters means nothing, and DomainBed networks never read it at inference.
  Note that the reference code (DiWA / ModelRatatouille ``algorithms_inference.WA``) averages
  ``network.parameters()`` only and keeps *all* buffers of the first network; we average floating
  buffers too. The two agree for DomainBed's ResNets, whose BatchNorm statistics are frozen (so equal
  across runs sharing an initialisation), and averaging is the sensible choice when they differ.
- **Compatibility**: every state dict must have the same keys and the same shapes as the first one;
  otherwise ``ValueError`` names the first mismatching key and the (0-based) index of the offending
  state dict in the input sequence. Dtypes may differ (the first one's wins).
- **Memory**: functions taking an iterable consume it lazily (pass a generator that loads checkpoints one
  by one) and hold at most one accumulator plus the state dict being read.

Why one module of ~480 lines: every way of averaging weights (uniform, weighted, prefix, greedy,
running, interpolation) shares the same accumulator rules (float64, integer buffers, key checks);
keeping them together keeps those rules in one place.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from domainbed_recycle.errors import UserError

StateDict = Mapping[str, Tensor]

__all__ = [
    "GreedySoupResult",
    "RunningAverage",
    "StateDict",
    "check_compatible",
    "fusing_weights",
    "check_finite",
    "first_nonfinite",
    "greedy_soup",
    "prefix_averages",
    "interpolate",
    "uniform_average",
    "weighted_average",
]


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def first_nonfinite(state: StateDict) -> str | None:
    """Name of the first floating entry of `state` holding a NaN or an infinity; None if all are finite."""
    return next((key for key, t in state.items() if _is_averaged(t) and not bool(torch.isfinite(t).all())), None)


def check_finite(state: StateDict, name: str) -> StateDict:
    """`state`, unchanged; UserError naming `name` (the run or file) if an entry is not finite, so a
    diverged model never joins an average or an interpolation."""
    key = first_nonfinite(state)
    if key is not None:
        raise UserError(f"{name}: its weights are not finite ('{key}' holds NaN or inf; the run diverged): "
                        f"leave it out")
    return state


def _is_averaged(t: Tensor) -> bool:
    """True for the entries that get averaged (floating or complex), False for integer/bool buffers."""
    return t.is_floating_point() or t.is_complex()


def _acc_dtype(t: Tensor) -> torch.dtype:
    """High-precision accumulator dtype for an averaged entry (float32/complex64 on MPS, no float64)."""
    if t.device.type == "mps":
        return torch.complex64 if t.is_complex() else torch.float32
    return torch.complex128 if t.is_complex() else torch.float64


def check_compatible(reference: StateDict, other: StateDict, index: int) -> None:
    """Raise ``ValueError`` unless ``other`` has exactly the keys and shapes of ``reference``.

    Args:
        reference: the first state dict (its key order defines "first mismatching key").
        other: the state dict to check.
        index: position of ``other`` in the caller's sequence, quoted in the message.

    Raises:
        ValueError: naming the first key (in ``reference``'s order) that is missing from ``other`` or
            has another shape, else the first key of ``other`` absent from ``reference``.
    """
    for key, ref in reference.items():
        if key not in other:
            raise ValueError(f"state dict #{index} does not match state dict #0: key '{key}' is missing")
        if tuple(other[key].shape) != tuple(ref.shape):
            raise ValueError(
                f"state dict #{index} does not match state dict #0: key '{key}' has shape "
                f"{tuple(other[key].shape)}, expected {tuple(ref.shape)}"
            )
    if len(other) != len(reference):
        extra = next(k for k in other if k not in reference)
        raise ValueError(f"state dict #{index} does not match state dict #0: unexpected key '{extra}'")


def _weighted_sum(state_dicts: Iterable[StateDict], weights: Sequence[float] | None) -> dict[str, Tensor]:
    """Stream ``sum_i w_i θ_i`` (``w_i = 1`` when ``weights`` is None, then divided by the count).

    Returns the average cast back to the first state dict's dtypes. See the module docstring for the
    handling of non-floating entries and for the error raised on mismatching keys/shapes.
    """
    acc: dict[str, Tensor] = {}
    first: StateDict | None = None
    dtypes: dict[str, torch.dtype] = {}
    count = 0
    with torch.no_grad():
        for i, sd in enumerate(state_dicts):
            if weights is not None and i >= len(weights):
                raise ValueError(f"got more state dicts than weights ({len(weights)})")
            w = 1.0 if weights is None else float(weights[i])
            if first is None:
                for key, t in sd.items():
                    t = t.detach()
                    dtypes[key] = t.dtype
                    if _is_averaged(t):
                        acc[key] = t.to(_acc_dtype(t), copy=True).mul_(w)
                    else:
                        acc[key] = t.clone()
                first = {k: acc[k] for k in sd}  # do not hold on to the caller's tensors
            else:
                check_compatible(first, sd, i)
                for key, a in acc.items():
                    if _is_averaged(a):
                        a.add_(sd[key].detach().to(device=a.device, dtype=a.dtype), alpha=w)
            count += 1
    if count == 0:
        raise ValueError("cannot average an empty sequence of state dicts")
    if weights is not None and count != len(weights):
        raise ValueError(f"got {count} state dicts but {len(weights)} weights")
    scale = 1.0 / count if weights is None else 1.0
    out: dict[str, Tensor] = {}
    for key, a in acc.items():
        if _is_averaged(a):
            out[key] = a.mul_(scale).to(dtypes[key])
        else:
            out[key] = a
    return out


# ----------------------------------------------------------------------------------------------------
# averages of a set of models
# ----------------------------------------------------------------------------------------------------


def uniform_average(state_dicts: Iterable[StateDict]) -> dict[str, Tensor]:
    """Uniform weight average ``(1/M) sum_i θ_i`` of M state dicts (soups, DiWA, ratatouille).

    Args:
        state_dicts: M >= 1 state dicts with identical keys and shapes; may be a generator that loads
            checkpoints lazily: only a float64 accumulator and the state dict being read are in memory.

    Returns:
        New dict, same keys (first state dict's order), shapes and dtypes as the first state dict.
        Floating entries are averaged (in float64); integer buffers such as BatchNorm
        ``num_batches_tracked`` are copied from the first state dict.

    Raises:
        ValueError: empty input, or a state dict whose keys/shapes differ (message names the key and
            the 0-based index of the state dict).
    """
    return _weighted_sum(state_dicts, None)


def prefix_averages(state_dicts: Iterable[StateDict], *, copies: bool = True) -> Iterator[dict[str, Tensor]]:
    """Yield the uniform average of the first k state dicts, for k = 1, 2, ..., M, in one pass.

    The k-th average is the running mean ``m_k = m_{k-1} + (θ_k − m_{k-1}) / k`` (one float64
    ``lerp`` per entry and per model), so the M averages cost M checkpoint reads and one accumulator
    instead of M(M+1)/2 reads: the accuracy-vs-number-of-models curves fold forward. It equals
    ``uniform_average(state_dicts[:k])`` up to float64 rounding (the two differ by at most one float32
    ulp after the cast; the tests check it).

    Args:
        state_dicts: as in ``uniform_average`` (consumed lazily).
        copies: True (default): each yielded dict is a new dict in the first state dict's dtypes.
            False: the yielded dict holds the float64 accumulators themselves, valid only until the
            next one is produced (do not keep or modify them). Loading it into a model
            (``load_state_dict`` casts while it copies) then costs no extra pass over the weights,
            which is what makes a curve cost about one average.
    """
    acc: dict[str, Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    first: StateDict | None = None
    with torch.no_grad():
        for k, sd in enumerate(state_dicts, start=1):
            if first is None:
                for key, t in sd.items():
                    t = t.detach()
                    dtypes[key] = t.dtype
                    acc[key] = t.to(_acc_dtype(t), copy=True) if _is_averaged(t) else t.clone()
                first = {key: acc[key] for key in sd}
            else:
                check_compatible(first, sd, k - 1)
                for key, a in acc.items():
                    if _is_averaged(a):
                        a.lerp_(sd[key].detach().to(device=a.device, dtype=a.dtype), 1.0 / k)
            if copies:
                yield {key: a.to(dtypes[key], copy=True) for key, a in acc.items()}
            else:
                yield dict(acc)


def weighted_average(state_dicts: Iterable[StateDict], weights: Sequence[float]) -> dict[str, Tensor]:
    """Weighted weight average ``sum_i (w_i / sum_j w_j) θ_i`` (Fusing's featurizer init).

    Args:
        state_dicts: M state dicts (iterable, consumed lazily as in ``uniform_average``).
        weights: M finite non-negative numbers with a positive sum; normalized here.

    Returns:
        New dict as in ``uniform_average``; integer buffers come from the first state dict.

    Raises:
        ValueError: bad weights, count mismatch between state dicts and weights, or mismatching
            keys/shapes.
    """
    w = [float(x) for x in weights]
    if not w:
        raise ValueError("weights is empty")
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise ValueError(f"weights must be finite and non-negative, got {w}")
    total = math.fsum(w)
    if total <= 0:
        raise ValueError(f"weights must have a positive sum, got {w}")
    return _weighted_sum(state_dicts, [x / total for x in w])


def fusing_weights(n: int, fusing_range: float, rng_seed: int) -> list[float]:
    """Random mixing coefficients of Fusing: ``κ_i ∝ exp(r · u_i)``, ``u_i ~ U(0, 1)``, normalized.

    As in the ModelRatatouille reference (``train.py``: ``math.exp(fusing_range * random.random())``
    per auxiliary featurizer, divided by their sum). ``r = 0`` gives uniform weights; a larger ``r``
    gives more uneven mixtures (the ratio of two weights is at most ``e^r``). The reference's
    ``fusing_range < 0`` ("pick a single auxiliary model") is a strategy choice, not a weighting, so it
    is rejected here.

    Args:
        n: number of models mixed (>= 1).
        fusing_range: r >= 0.
        rng_seed: seed of a private ``random.Random``; the same (n, r, seed) always gives the same list.

    Returns:
        n positive floats summing to 1 (up to float rounding).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not math.isfinite(fusing_range) or fusing_range < 0:
        raise ValueError(f"fusing_range must be finite and >= 0, got {fusing_range}")
    rng = random.Random(rng_seed)
    kappas = [math.exp(fusing_range * rng.random()) for _ in range(n)]
    total = math.fsum(kappas)
    return [k / total for k in kappas]


def interpolate(state_a: StateDict, state_b: StateDict, lam: float) -> dict[str, Tensor]:
    """Linear interpolation ``θ(λ) = (1 − λ) θ_a + λ θ_b`` of two state dicts (used by ``lmc``).

    Computed in float64 as ``(1 − λ)·a + λ·b`` so that ``λ = 0`` returns ``a`` and ``λ = 1`` returns ``b``
    exactly. ``λ`` outside [0, 1] extrapolates. Non-floating entries come from ``state_a``.

    Returns:
        New dict with ``state_a``'s keys, shapes and dtypes.
    """
    lam = float(lam)
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam}")
    check_compatible(state_a, state_b, 1)
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for key, a in state_a.items():
            a = a.detach()
            if _is_averaged(a):
                acc = _acc_dtype(a)
                b = state_b[key].detach().to(device=a.device, dtype=acc)
                out[key] = (a.to(acc) * (1.0 - lam) + b * lam).to(a.dtype)
            else:
                out[key] = a.clone()
    return out


# ----------------------------------------------------------------------------------------------------
# greedy soup
# ----------------------------------------------------------------------------------------------------


class GreedySoupResult(NamedTuple):
    """Outcome of ``greedy_soup``.

    Attributes:
        selected: candidate indices in the soup, in the order they were added (best first).
        state_dict: uniform average of the selected candidates.
        val_acc: ``evaluate(state_dict)``, the soup's validation accuracy.
        trials: one ``(candidate index, val acc of the soup with it, accepted)`` per candidate, in the
            order tried; ``trials[k][1]`` for accepted rows traces accuracy vs number of models.
    """

    selected: list[int]
    state_dict: dict[str, Tensor]
    val_acc: float
    trials: list[tuple[int, float, bool]]


def greedy_soup(
    load: Callable[[int], StateDict],
    val_accs: Sequence[float],
    evaluate: Callable[[StateDict], float],
    *,
    strict: bool = False,
    on_trial: Callable[[int, StateDict], None] | None = None,
) -> GreedySoupResult:
    """Greedy weight selection of model soups / DiWA ("restricted") / ratatouille ("greedy").

    Candidates are sorted by decreasing individual validation accuracy ``val_accs`` (ties keep index
    order). The soup starts with the best one; each next candidate is added if the *uniform* average of
    the soup plus it has a validation accuracy (``evaluate``) that does not decrease:
    ``acc_new >= best_so_far``. This is the comparison of the DiWA (``domainbed/scripts/diwa.py``) and
    ModelRatatouille (``domainbed/scripts/inference.py``) reference code, which start from
    ``best = -inf`` and evaluate the first soup (the best model alone) with the same routine, as done
    here. The original model-soups code (Wortsman et al. 2022) keeps a candidate only if accuracy
    strictly increases: pass ``strict=True`` for that.

    Memory: candidates are loaded one at a time by ``load``; the trial soup is the running mean
    ``(k·soup + θ)/(k + 1)`` (float64 arithmetic, k = current soup size), built tensor by tensor while
    each candidate tensor is released as soon as it has been folded in, so about two models (soup and
    trial) are alive at once. ``load``'s returned mapping and tensors are not modified.

    Args:
        load: index -> state dict, for indices ``0 .. len(val_accs) - 1`` (e.g. loads a checkpoint).
        val_accs: individual validation accuracy of each candidate (any unit, used only to sort).
        evaluate: state dict -> validation accuracy of that model (must be finite).
        strict: require a strict increase (model-soups) instead of ``>=`` (DiWA / ratatouille).
        on_trial: called after each candidate with (number of candidates tried, the soup kept so far),
            e.g. to draw the accuracy-vs-number-of-models curve without rebuilding any soup.

    Returns:
        ``GreedySoupResult(selected, state_dict, val_acc, trials)``.

    Raises:
        ValueError: no candidates, a NaN in ``val_accs``, a non-finite ``evaluate`` result, or
            mismatching keys/shapes (the index quoted is the candidate index).
    """
    n = len(val_accs)
    if n == 0:
        raise ValueError("greedy_soup needs at least one candidate")
    if any(math.isnan(float(a)) for a in val_accs):
        raise ValueError(f"val_accs contains NaN: {list(val_accs)}")
    order = sorted(range(n), key=lambda i: -float(val_accs[i]))  # stable: ties keep index order

    soup: dict[str, Tensor] | None = None
    selected: list[int] = []
    best = -math.inf
    trials: list[tuple[int, float, bool]] = []
    for idx in order:
        cand = dict(load(idx))  # shallow copy: popping entries below frees them without touching load's
        k = len(selected)
        with torch.no_grad():
            if soup is None:
                trial = {key: t.detach().clone() for key, t in cand.items()}
                cand.clear()
            else:
                check_compatible(soup, cand, idx)
                trial = {}
                for key, s in soup.items():
                    c = cand.pop(key).detach()
                    if _is_averaged(s):
                        acc = _acc_dtype(s)
                        mixed = (s.to(acc) * k + c.to(device=s.device, dtype=acc)) / (k + 1)
                        trial[key] = mixed.to(s.dtype)
                    else:
                        trial[key] = s
                    del c
        del cand
        acc_val = float(evaluate(trial))
        if not math.isfinite(acc_val):
            raise ValueError(f"evaluate returned {acc_val} for the soup with candidate {idx}")
        accept = acc_val > best if strict else acc_val >= best
        trials.append((idx, acc_val, accept))
        if accept:
            soup, best = trial, acc_val
            selected.append(idx)
        del trial
        if on_trial is not None:
            assert soup is not None
            on_trial(len(trials), soup)
    assert soup is not None  # the first candidate is always accepted (best starts at -inf)
    return GreedySoupResult(selected, soup, best, trials)


# ----------------------------------------------------------------------------------------------------
# online average over training iterates (MovingAverage, SWAD)
# ----------------------------------------------------------------------------------------------------


class RunningAverage:
    """Online uniform average of a module's state over iterates (MovingAverage over epochs, SWAD).

    Holds one state dict: float64 running means of the floating entries (``mean += (θ − mean)/count``)
    and, for non-floating buffers (e.g. ``num_batches_tracked``), the value of the *latest* update
    (for iterates of one run, the current counter). The accumulators live on the device of the
    tensors passed to ``update``.

    >>> avg = RunningAverage()
    >>> avg.update(model)  # every averaging step
    >>> avg.load_into(model_copy)  # or avg.average() -> dict
    """

    def __init__(self) -> None:
        self._mean: dict[str, Tensor] | None = None
        self._dtypes: dict[str, torch.dtype] = {}
        self._count = 0

    @property
    def count(self) -> int:
        """Number of iterates averaged since construction or the last ``reset``."""
        return self._count

    def reset(self) -> None:
        """Forget every iterate (e.g. SWAD restarting its averaging window)."""
        self._mean = None
        self._dtypes = {}
        self._count = 0

    def update(self, source: nn.Module | StateDict) -> None:
        """Fold one iterate into the average.

        Args:
            source: a module (its ``state_dict()``: parameters and buffers) or a state dict.

        Raises:
            ValueError: keys/shapes differ from the first iterate (index = number of the update).
        """
        sd = source.state_dict() if isinstance(source, nn.Module) else source
        with torch.no_grad():
            if self._mean is None:
                self._mean = {}
                for key, t in sd.items():
                    t = t.detach()
                    self._dtypes[key] = t.dtype
                    self._mean[key] = t.to(_acc_dtype(t), copy=True) if _is_averaged(t) else t.clone()
                self._count = 1
                return
            check_compatible(self._mean, sd, self._count)
            self._count += 1
            for key, m in self._mean.items():
                t = sd[key].detach()
                if _is_averaged(m):
                    m.add_((t.to(device=m.device, dtype=m.dtype) - m) / self._count)
                else:
                    m.copy_(t)

    def state(self) -> dict[str, object]:
        """The accumulators (tensors, dtype names and count), for a resume state."""
        return {"mean": self._mean, "dtypes": {k: str(d).removeprefix("torch.") for k, d in self._dtypes.items()},
                "count": self._count}

    def load_state(self, state: dict) -> None:
        """Continue from `state()`'s output."""
        self._mean = state["mean"]
        self._dtypes = {k: getattr(torch, name) for k, name in state["dtypes"].items()}
        self._count = int(state["count"])

    def average(self) -> dict[str, Tensor]:
        """The current average as a new state dict (original dtypes; integer buffers: latest).

        Raises:
            RuntimeError: before the first ``update``.
        """
        if self._mean is None:
            raise RuntimeError("RunningAverage.average() called before any update()")
        return {key: m.to(self._dtypes[key], copy=True) for key, m in self._mean.items()}

    def load_into(self, module: nn.Module, strict: bool = True) -> nn.Module:
        """Copy the average into ``module`` (``load_state_dict``) and return the module."""
        module.load_state_dict(self.average(), strict=strict)
        return module
