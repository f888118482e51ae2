"""PNG plots of the analysis: accuracy vs number of averaged models, diversity vs accuracy, LMC curves.

Every function takes plain numbers and an output path, writes one PNG (creating parent folders) and
returns the path. Accuracies are passed as fractions in [0, 1] (the unit of DomainBed's records) and
drawn in percent.

Figures are drawn with matplotlib's object API on an Agg canvas (no ``pyplot``), so importing or
calling this module never changes the process-wide matplotlib backend and works without a display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["linear_fit", "plot_acc_vs_num_models", "plot_claims", "plot_diversity_vs_accuracy", "plot_lmc_curves",
           "plot_within_cells"]

_DPI = 120


def _percent(values: Sequence[float], what: str, signed: bool = False) -> np.ndarray:
    """Fractions in [0, 1] ([-1, 1] if `signed`: accuracy differences) -> percent; ValueError otherwise
    (catches data already in percent)."""
    arr = np.asarray(values, dtype=np.float64)
    low = -1.0 if signed else 0.0
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < low or arr.max() > 1.0):
        raise ValueError(f"{what} must be finite fractions in [{low:g}, 1] (not percent), got {arr.tolist()}")
    return 100.0 * arr


def _new_figure() -> Figure:
    fig = Figure(figsize=(6.0, 4.5), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out


def linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float, float]:
    """Least-squares line ``y ≈ slope·x + intercept`` and Pearson correlation.

    Args:
        x, y: n >= 2 paired finite values.

    Returns:
        ``(slope, intercept, r, p)``; ``p`` is the two-sided p-value of ``scipy.stats.pearsonr`` (1.0
        for n = 2). If x is constant, slope/intercept/r/p are nan; if only y is constant, the line is
        flat and r/p are nan.
    """
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {xa.shape} and {ya.shape}")
    if len(xa) < 2:
        raise ValueError(f"a linear fit needs at least 2 points, got {len(xa)}")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        raise ValueError("x and y must be finite")
    nan = float("nan")
    dx, dy = xa - xa.mean(), ya - ya.mean()
    sxx, syy = float(dx @ dx), float(dy @ dy)
    if sxx == 0.0:
        return nan, nan, nan, nan
    slope = float(dx @ dy) / sxx
    intercept = float(ya.mean() - slope * xa.mean())
    if syy == 0.0:
        return slope, intercept, nan, nan
    from scipy import stats  # imported here: scipy is slow to import

    res = stats.pearsonr(xa, ya)
    return slope, intercept, float(res.statistic), float(res.pvalue)


def plot_acc_vs_num_models(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    path: str | os.PathLike[str],
    title: str = "Accuracy vs number of averaged models",
) -> Path:
    """One line per selection rule (e.g. "uniform", "greedy"): accuracy (%) against M.

    Args:
        curves: name -> ``[(number of averaged models, accuracy in [0, 1]), ...]``, or
            ``[(M, accuracy, low, high), ...]`` to draw an interval around each point as an error bar.
        path: output PNG.
        title: figure title.

    Returns:
        ``Path(path)``.
    """
    return _plot_curves(curves, path, "number of averaged models M", title, integer_x=True)


def plot_diversity_vs_accuracy(
    x_div: Sequence[float],
    y_acc: Sequence[float],
    labels: Sequence[str] | None,
    path: str | os.PathLike[str],
    xlabel: str = "diversity (ratio-error)",
    title: str = "Diversity vs OOD accuracy",
    ylabel: str = "accuracy (%)",
    signed: bool = False,
) -> tuple[Path, float, float, float]:
    """Scatter of accuracy (%) against a diversity measure, with its least-squares line.

    The legend reports the line's slope, Pearson r and its p-value (``scipy.stats.pearsonr``).

    Args:
        x_div: diversity of each point (unit of the measure; name it with ``xlabel``).
        y_acc: accuracy of each point, fractions in [0, 1]; with `signed`, accuracy differences in
            [-1, 1] (e.g. a weight average's gain over its members), drawn with a zero line.
        labels: optional text drawn next to each point (same length), or None.
        path: output PNG.

    Returns:
        ``(path, slope, r, p)`` with ``slope`` in accuracy percentage points per unit of diversity
        (the plotted units); nan where undefined (see ``linear_fit``).
    """
    x = np.asarray(x_div, dtype=np.float64)
    y = _percent(y_acc, "y_acc", signed)
    if labels is not None and len(labels) != len(x):
        raise ValueError(f"labels has {len(labels)} entries for {len(x)} points")
    slope, intercept, r, p = linear_fit(x, y)
    fig = _new_figure()
    ax = fig.add_subplot()
    if signed:
        ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.scatter(x, y, s=25, alpha=0.8, label="models")
    if labels is not None:
        for xi, yi, text in zip(x, y, labels, strict=True):
            ax.annotate(str(text), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if math.isfinite(slope):
        xs = np.array([x.min(), x.max()])
        ax.plot(
            xs,
            slope * xs + intercept,
            color="C3",
            label=f"fit: slope={slope:.3g} %/unit, r={r:.3f}, p={p:.2g}",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path), slope, r, p


def plot_lmc_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike[str],
    title: str = "Linear mode connectivity",
) -> Path:
    """One accuracy (%) curve per pair of models along ``θ(λ) = (1 − λ)θ_a + λθ_b``.

    Args:
        curves: name -> ``[(λ, accuracy in [0, 1]), ...]`` (e.g. from ``lmc.lmc_curve``), or
            ``[(λ, accuracy, low, high), ...]`` with an interval drawn as an error bar.
        path: output PNG.

    Returns:
        ``Path(path)``.
    """
    return _plot_curves(curves, path, "interpolation coefficient λ (0 = model a, 1 = model b)", title)


def _plot_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike[str],
    xlabel: str,
    title: str,
    integer_x: bool = False,
) -> Path:
    """One accuracy (%) line per named curve of (x, accuracy in [0, 1]) or (x, accuracy, low, high)
    points, sorted by x; the (low, high) interval of a point is drawn as its error bar."""
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, points in curves.items():
        pts = sorted(tuple(float(v) for v in point) for point in points)
        xs = [p[0] for p in pts]
        ys = _percent([p[1] for p in pts], f"accuracies of '{name}'")
        if pts and all(len(p) == 4 for p in pts):
            low = _percent([p[2] for p in pts], f"lower bounds of '{name}'")
            high = _percent([p[3] for p in pts], f"upper bounds of '{name}'")
            ax.errorbar(xs, ys, yerr=[ys - low, high - ys], marker="o", capsize=3, label=name)
        else:
            ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    if integer_x:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    return _save(fig, path)


def plot_within_cells(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    fits: Mapping[str, str],
    path: str | os.PathLike[str],
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """Scatter of (x, y) deviations from their cell's means, one colour per series, each with its
    least-squares line through the origin of the deviations and `fits[name]` in the legend.

    Args:
        series: name -> (x [n], y [n]); y are accuracy differences in [-1, 1], drawn in points.
        fits: name -> legend text (e.g. the within-cell r with its interval).
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.axvline(0.0, color="0.6", linewidth=0.8)
    for k, (name, (x_dev, y_dev)) in enumerate(series.items()):
        x = np.asarray(x_dev, dtype=np.float64)
        y = _percent(y_dev, f"y of '{name}'", signed=True)
        color = f"C{k}"
        ax.scatter(x, y, s=14, alpha=0.6, color=color, label=f"{name}: {fits.get(name, '')}".rstrip(": "))
        sxx = float(x @ x)
        if sxx > 0:
            xs = np.array([x.min(), x.max()])
            ax.plot(xs, float(x @ y) / sxx * xs, color=color)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    return _save(fig, path)


_VERDICT_COLORS = {"supported": "C2", "contradicted": "C3", "inconclusive": "0.45"}


def plot_claims(claims: Sequence[Mapping[str, object]], path: str | os.PathLike[str], title: str = "Claims") -> Path:
    """Forest plot: each claim's estimate and interval against its threshold, one panel per unit.

    Args:
        claims: dicts with "claim", "estimate", "low", "high", "threshold", "unit" and "verdict"
            (supported / contradicted / inconclusive, which colours the point); a claim without an
            interval is drawn as a point alone.
    """
    units = list(dict.fromkeys(str(c["unit"]) for c in claims))
    heights = [max(1, sum(1 for c in claims if c["unit"] == unit)) for unit in units]
    fig = Figure(figsize=(11.0, 1.2 + 0.32 * sum(heights) + 0.6 * len(units)), dpi=_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(units), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, unit in zip(axes, units, strict=True):
        rows = [c for c in claims if c["unit"] == unit]
        for y, claim in enumerate(reversed(rows)):
            color = _VERDICT_COLORS.get(str(claim["verdict"]), "k")
            est, low, high = (float(claim[key]) if claim[key] is not None else math.nan  # type: ignore[arg-type]
                              for key in ("estimate", "low", "high"))
            if math.isfinite(low) and math.isfinite(high):
                ax.plot([low, high], [y, y], color=color, linewidth=2)
            ax.plot([est], [y], marker="o", color=color)
        for threshold in dict.fromkeys(float(c["threshold"]) for c in rows):  # type: ignore[arg-type]
            ax.axvline(threshold, color="0.5", linestyle="--", linewidth=0.8)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([str(c["claim"]) for c in reversed(rows)], fontsize=7)
        ax.set_xlabel(unit, fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"{title}\n(green supported, red contradicted, grey inconclusive; dashed: threshold)", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")  # long claim names: let the canvas grow to fit them
    return out
