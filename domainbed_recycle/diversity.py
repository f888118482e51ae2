"""Diversity between classifiers, from their predictions on one domain (pure numpy).

Pairwise measures take ``preds_a [N]``, ``preds_b [N]`` (predicted labels, ints) and ``labels [N]``
(true labels). They are built on the 2×2 "oracle" table of the pair (Kuncheva & Whitaker 2003):

=========  ==================  ==================
           b right             b wrong
=========  ==================  ==================
a right    ``N11``             ``N10``
a wrong    ``N01``             ``N00``
=========  ==================  ==================

with ``N = N11 + N10 + N01 + N00``. Higher disagreement / ratio-error and lower Q / double-fault mean
*more* diverse models.

Ratio-error follows DiWA (Ramé et al., NeurIPS 2022, after Aksela 2003): the number of *different*
errors (samples that exactly one of the two models gets wrong, ``N01 + N10``) over the number of
*simultaneous* errors (both wrong, ``N00``). The same formula is in the authors' own code
(``alexrame/mixmo-pytorch``, ``mixmo/core/metrics_ensemble.py::ratio_errors``) and in DESlib. Aksela's
original paper splits simultaneous errors further by whether the two wrong labels coincide; DiWA does
not, and neither do we.

Undefined values: a measure whose denominator is 0 returns ``nan`` (ratio-error when the two models
never err together, Q-statistic when ``N11·N00 + N01·N10 = 0``); the reference code's ad-hoc fallback
for ratio-error (``2·(N01 + N10)/N``) is not used. Empty inputs raise ``ValueError``.

Ensemble measures take probabilities ``probs [M, N, C]`` (M models, N samples, C classes).
Accuracies are fractions in [0, 1], as in DomainBed's records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "METRICS",
    "PairwiseMetric",
    "accuracy",
    "disagreement",
    "double_fault",
    "ensemble_accuracy",
    "mean_individual_accuracy",
    "mean_pairwise",
    "oracle_counts",
    "pairwise_matrix",
    "q_statistic",
    "ratio_error",
]

PairwiseMetric = Callable[[ArrayLike, ArrayLike, ArrayLike], float]


def _as_labels(x: ArrayLike, name: str) -> np.ndarray:
    """1-D integer array, or ValueError."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D [N], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    return arr


def _pair(preds_a: ArrayLike, preds_b: ArrayLike, labels: ArrayLike | None) -> tuple[np.ndarray, ...]:
    """Validate a pair of prediction vectors (and labels) of the same non-zero length N."""
    a = _as_labels(preds_a, "preds_a")
    b = _as_labels(preds_b, "preds_b")
    arrays = [a, b]
    if labels is not None:
        arrays.append(_as_labels(labels, "labels"))
    lengths = {len(x) for x in arrays}
    if len(lengths) != 1:
        raise ValueError(f"predictions and labels must have the same length, got {[len(x) for x in arrays]}")
    if len(a) == 0:
        raise ValueError("cannot compare predictions on zero samples")
    return tuple(arrays)


def _safe_div(num: float, den: float) -> float:
    """num / den, or nan when den == 0."""
    return float(num) / float(den) if den != 0 else float("nan")


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of ``preds [N]`` equal to ``labels [N]``, in [0, 1]."""
    p, _, y = _pair(preds, preds, labels)
    return float(np.mean(p == y))


def oracle_counts(preds_a: ArrayLike, preds_b: ArrayLike, labels: ArrayLike) -> tuple[int, int, int, int]:
    """The pair's oracle table ``(N11, N10, N01, N00)``.

    ``N11``: both right; ``N10``: a right, b wrong; ``N01``: a wrong, b right; ``N00``: both wrong.
    """
    a, b, y = _pair(preds_a, preds_b, labels)
    ra, rb = a == y, b == y
    return (
        int(np.sum(ra & rb)),
        int(np.sum(ra & ~rb)),
        int(np.sum(~ra & rb)),
        int(np.sum(~ra & ~rb)),
    )


def disagreement(preds_a: ArrayLike, preds_b: ArrayLike, labels: ArrayLike | None = None) -> float:
    """Fraction of samples on which the two models predict different labels, in [0, 1].

    Counts every differing prediction, including both-wrong samples with different wrong labels (so it
    is not ``(N01 + N10)/N`` in multi-class problems). ``labels`` is accepted for a uniform signature
    and only checked for length.
    """
    a, b = _pair(preds_a, preds_b, labels)[:2]
    return float(np.mean(a != b))


def ratio_error(preds_a: ArrayLike, preds_b: ArrayLike, labels: ArrayLike) -> float:
    """DiWA's ratio-error ``(N01 + N10) / N00``: different errors over simultaneous errors, in [0, inf).

    ``nan`` when the models are never wrong together (``N00 = 0``). See the module docstring.
    """
    _, n10, n01, n00 = oracle_counts(preds_a, preds_b, labels)
    return _safe_div(n01 + n10, n00)


def q_statistic(preds_a: ArrayLike, preds_b: ArrayLike, labels: ArrayLike) -> float:
    """Yule's Q ``(N11·N00 − N01·N10) / (N11·N00 + N01·N10)``, in [−1, 1] (1 = same right/wrong pattern).

    ``nan`` when the denominator is 0 (e.g. a model that is always right or always wrong).
    """
    n11, n10, n01, n00 = oracle_counts(preds_a, preds_b, labels)
    return _safe_div(n11 * n00 - n01 * n10, n11 * n00 + n01 * n10)


def double_fault(preds_a: ArrayLike, preds_b: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of samples both models get wrong, ``N00 / N``, in [0, 1]."""
    n11, n10, n01, n00 = oracle_counts(preds_a, preds_b, labels)
    return n00 / (n11 + n10 + n01 + n00)


METRICS: dict[str, PairwiseMetric] = {
    "disagreement": disagreement,
    "ratio_error": ratio_error,
    "q_statistic": q_statistic,
    "double_fault": double_fault,
}


def _metric(metric: str | PairwiseMetric) -> PairwiseMetric:
    if callable(metric):
        return metric
    try:
        return METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown diversity metric '{metric}'; known: {sorted(METRICS)}") from None


def pairwise_matrix(
    preds_list: Sequence[ArrayLike], labels: ArrayLike, metric: str | PairwiseMetric
) -> np.ndarray:
    """Symmetric [M, M] matrix of ``metric(preds_i, preds_j, labels)`` for all pairs i != j.

    Args:
        preds_list: M prediction vectors [N].
        labels: true labels [N].
        metric: a name in ``METRICS`` or a callable ``(preds_a, preds_b, labels) -> float``.

    Returns:
        float64 [M, M]; the diagonal is ``nan`` (a model is not paired with itself); undefined pairs
        are ``nan`` too.
    """
    fn = _metric(metric)
    m = len(preds_list)
    out = np.full((m, m), np.nan)
    for i in range(m):
        for j in range(i + 1, m):
            out[i, j] = out[j, i] = fn(preds_list[i], preds_list[j], labels)
    return out


def mean_pairwise(preds_list: Sequence[ArrayLike], labels: ArrayLike, metric: str | PairwiseMetric) -> float:
    """Mean of ``metric`` over the M(M−1)/2 pairs of models (M >= 2).

    Pairs where the metric is undefined (``nan``) are skipped; ``nan`` if every pair is undefined.
    """
    if len(preds_list) < 2:
        raise ValueError(f"mean_pairwise needs at least 2 models, got {len(preds_list)}")
    mat = pairwise_matrix(preds_list, labels, metric)
    vals = mat[np.triu_indices(len(preds_list), k=1)]
    vals = vals[~np.isnan(vals)]
    return float(vals.mean()) if vals.size else float("nan")


def _probs(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``probs [M, N, C]`` against ``labels [N]``."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"probs must be [M, N, C], got shape {p.shape}")
    y = _as_labels(labels, "labels")
    if p.shape[1] != len(y):
        raise ValueError(f"probs has N={p.shape[1]} samples but labels has {len(y)}")
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must hold at least one model and one sample, got shape {p.shape}")
    return p, y


def ensemble_accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Accuracy of the functional ensemble: argmax of the mean of the M models' probabilities.

    Args:
        probs: [M, N, C] predicted probabilities (softmax outputs).
        labels: [N] true labels.

    Returns:
        Fraction in [0, 1]. Ties in the argmax go to the lowest class index (``np.argmax``).
    """
    p, y = _probs(probs, labels)
    return float(np.mean(p.mean(axis=0).argmax(axis=1) == y))


def mean_individual_accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean over the M models of each model's own accuracy (argmax of its probabilities), in [0, 1]."""
    p, y = _probs(probs, labels)
    return float(np.mean(p.argmax(axis=2) == y[None, :]))
