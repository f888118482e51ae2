"""Merging strategies: every merging operator a recycler would try, as rows of the same tables.

Each reuses runs other strategies already plan (no extra target training): the LP-FT pool (WiSE-FT),
the auxiliary pool (the recycling variants: task arithmetic, TIES, DARE, Fisher, Model Stock, gated
ratatouille) or the MovingAverage runs (EoA). The base θ0 of every operator is φ0 + the linear probe
(the LP-FT init), rebuilt from the checkpoints the runs started from. Every merge hyper-parameter is
chosen on training-domain validation only (`Evaluator.val_acc` with the cell's test domain held out)
from a small grid; the grid curve is kept in the outcome's info under "grid" (the key "curve" is
taken: the figures read it as accuracy vs number of averaged models). README's "Merging strategies"
table lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from domainbed_recycle.averaging import check_compatible, interpolate, uniform_average
from domainbed_recycle.checkpoints import load_checkpoint, split_state
from domainbed_recycle.errors import UserError
from domainbed_recycle.evaluation import Evaluator, iterate_batches
from domainbed_recycle.fisher import diagonal_fisher
from domainbed_recycle.gate import DEFAULT_MAX_BARRIER, DEFAULT_MAX_DISTANCE, foundation_gate, merge_gate
from domainbed_recycle.merging import dare, fisher_weighted_average, model_stock, task_arithmetic, ties_merge
from domainbed_recycle.misc import seed_hash
from domainbed_recycle.strategies.base import PHI0, RUNS, STRATEGIES, Cell, ModelOutcome, RunRef, Strategy
from domainbed_recycle.strategies.builtin import MovingAverage, auxiliary_pool, lpft_pool, prediction_ensemble

State = dict[str, Tensor]

WISE_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
TA_SCALES = (0.5, 1.0, 1.5, 2.0, 3.0)  # λ = s / K; s = 1 is the uniform soup
TIES_KEEPS = (0.2, 0.5, 1.0)
TIES_LAMBDAS = (0.5, 1.0, 1.5)
DARE_DROPS = (0.3, 0.6, 0.9)
DARE_SCALES = (0.5, 1.0, 2.0)  # task arithmetic after DARE, λ = s / K
FISHER_EXAMPLES = 256  # training-domain examples per model


def lpft_init(runs: Sequence[RunRef]) -> State:
    """θ0 = φ0 (the foundation's featurizer) + the linear probe's classifier: the LP-FT init.

    Read from the checkpoints the runs started from: the probe is every run's `init_classifier`, φ0 the
    `init_featurizer` of a run started from the foundation (the LP-FT pool's runs, the auxiliary
    pool's φ0 runs). Checked key for key against the first run.
    """
    probes = {run.config.get("init_classifier") for run in runs}
    foundations = {run.config.get("init_featurizer") for run in runs if run.init_label == PHI0}
    if len(probes) != 1 or None in probes or len(foundations) != 1:
        raise UserError(f"cannot rebuild θ0 = φ0 + probe from runs {[r.run_id for r in runs]}: they need one "
                        f"linear probe (got {sorted(map(str, probes))}) and one run from φ0 (got "
                        f"{sorted(map(str, foundations))})")
    featurizer, _ = split_state(load_checkpoint(foundations.pop())[0])
    _, classifier = split_state(load_checkpoint(probes.pop())[0])
    theta0 = {**{f"featurizer.{k}": v for k, v in featurizer.items()},
              **{f"classifier.{k}": v for k, v in classifier.items()}}
    first = runs[0].weights()
    try:
        check_compatible(first, theta0, 1)
    except ValueError as error:
        raise UserError(f"θ0 = φ0 + probe does not match run {runs[0].run_id}: {error}") from None
    return {key: theta0[key] for key in first}  # the runs' key order


def _phi0(theta0: State) -> State:
    return {key: value for key, value in theta0.items() if key.startswith("featurizer.")}


def _select(
    grid: Sequence[dict[str, Any]], build: Callable[[dict[str, Any]], State], val: Callable[[State], float]
) -> tuple[State, dict[str, Any], list[dict[str, Any]]]:
    """The grid point with the best validation accuracy (first on ties): (its state, its point, curve)."""
    best: tuple[float, State, dict[str, Any]] | None = None
    curve = []
    for point in grid:
        state = build(point)
        acc = val(state)
        curve.append({**point, "val_acc": acc})
        if best is None or acc > best[0]:
            best = (acc, state, point)
    assert best is not None
    return best[1], best[2], curve


def _validation(cell: Cell, evaluator: Evaluator) -> Callable[[State], float]:
    return lambda state: evaluator.val_acc(state, [cell.test_env])


def _outcome(variant: str, cell: Cell, runs: list[RunRef], state: State, evaluator: Evaluator,
             **info: Any) -> ModelOutcome:
    return ModelOutcome(variant, evaluator.record(state), {"members": [r.run_id for r in runs], **info})


class _AuxiliaryMerge(Strategy):
    """A merge of the auxiliary pool (the recycling runs; the LP-FT pool when the spec has no auxiliary)."""

    def pools(self, cell, inits, settings):
        return {RUNS: auxiliary_pool(cell, inits, settings)}


@STRATEGIES.register("WiSE-FT")
class WiSEFT(Strategy):
    """WiSE-FT: (1 − α) θ0 + α θ_ft, θ_ft the LP-FT run with the best validation accuracy; α on validation."""

    name = "WiSE-FT"
    variants = ("WiSE-FT",)

    def pools(self, cell, inits, settings):
        return {RUNS: lpft_pool(cell, inits, settings)}

    def combine(self, cell, pools, evaluator):
        runs = pools[RUNS]
        theta0 = lpft_init(runs)
        best_run = max(runs, key=lambda r: r.val_acc)  # max keeps the first on ties
        theta_ft = best_run.weights()
        val = _validation(cell, evaluator)
        curve = []
        best: tuple[float, float] | None = None
        for alpha in WISE_ALPHAS:  # the α curve: validation and test accuracy
            state = interpolate(theta0, theta_ft, alpha)
            acc = val(state)
            curve.append({"alpha": alpha, "val_acc": acc, "test_acc": evaluator.test_acc(state, cell.test_env)})
            if best is None or acc > best[0]:
                best = (acc, alpha)
        assert best is not None
        state = interpolate(theta0, theta_ft, best[1])
        return [_outcome("WiSE-FT", cell, runs, state, evaluator, fine_tuned=best_run.run_id, alpha=best[1],
                         grid=curve)]


@STRATEGIES.register("TaskArithmetic")
class TaskArithmetic(_AuxiliaryMerge):
    """Task arithmetic: θ0 + λ Σ_k τ_k over the auxiliary pool; λ = s/K, s on validation."""

    name = "TaskArithmetic"
    variants = ("TaskArithmetic",)

    def combine(self, cell, pools, evaluator):
        runs = pools[RUNS]
        theta0 = lpft_init(runs)
        unit = task_arithmetic(theta0, (r.weights() for r in runs), 1.0 / len(runs))  # s = 1: the uniform soup
        state, point, curve = _select([{"s": s, "lambda": s / len(runs)} for s in TA_SCALES],
                                      lambda p: interpolate(theta0, unit, p["s"]), _validation(cell, evaluator))
        return [_outcome("TaskArithmetic", cell, runs, state, evaluator, chosen=point, grid=curve)]


@STRATEGIES.register("TIES")
class TIES(_AuxiliaryMerge):
    """TIES-merging of the auxiliary pool: trim to the top-k fraction, elect signs, disjoint mean; k, λ on
    validation."""

    name = "TIES"
    variants = ("TIES",)

    def combine(self, cell, pools, evaluator):
        runs = pools[RUNS]
        theta0 = lpft_init(runs)
        models = [r.weights() for r in runs]
        units = {keep: ties_merge(theta0, models, 1.0, keep) for keep in TIES_KEEPS}  # λ only scales
        grid = [{"keep": keep, "lambda": lam} for keep in TIES_KEEPS for lam in TIES_LAMBDAS]
        state, point, curve = _select(grid, lambda p: interpolate(theta0, units[p["keep"]], p["lambda"]),
                                      _validation(cell, evaluator))
        return [_outcome("TIES", cell, runs, state, evaluator, chosen=point, grid=curve)]


@STRATEGIES.register("DARE")
class DARE(_AuxiliaryMerge):
    """DARE + task arithmetic over the auxiliary pool: drop rate p and λ = s/K on validation; the masks
    are seeded by the cell."""

    name = "DARE"
    variants = ("DARE",)

    def combine(self, cell, pools, evaluator):
        runs = pools[RUNS]
        theta0 = lpft_init(runs)
        models = [r.weights() for r in runs]
        seed = seed_hash("DARE", cell.dataset, cell.test_env, cell.trial_seed)
        units = {p: task_arithmetic(theta0, dare(theta0, models, p, seed), 1.0 / len(runs)) for p in DARE_DROPS}
        grid = [{"p": p, "s": s, "lambda": s / len(runs)} for p in DARE_DROPS for s in DARE_SCALES]
        state, point, curve = _select(grid, lambda q: interpolate(theta0, units[q["p"]], q["s"]),
                                      _validation(cell, evaluator))
        return [_outcome("DARE", cell, runs, state, evaluator, chosen=point, grid=curve, seed=seed)]


def training_examples(evaluator: Evaluator, test_env: int, n: int) -> Tensor:
    """About `n` inputs from the training domains' `in` splits (the first n/E of each of the E domains)."""
    envs = [i for i in range(evaluator.n_envs) if i != test_env]
    per_env = max(1, n // len(envs))
    xs = [next(iterate_batches(evaluator.in_splits[i], batch_size=per_env, device=evaluator.device))[0]
          for i in envs if len(evaluator.in_splits[i])]
    return torch.cat(xs)


@STRATEGIES.register("Fisher")
class Fisher(_AuxiliaryMerge):
    """Fisher-weighted average of the auxiliary pool (diagonal Fisher, labels sampled from each model, on
    256 training-domain examples); no hyper-parameter."""

    name = "Fisher"
    variants = ("Fisher",)

    def combine(self, cell, pools, evaluator):
        runs = pools[RUNS]
        x = training_examples(evaluator, cell.test_env, FISHER_EXAMPLES)
        seed = seed_hash("Fisher", cell.dataset, cell.test_env, cell.trial_seed)

        def fishers():
            for run in runs:
                model = evaluator.load(run.weights())
                yield diagonal_fisher(model, x, torch.Generator().manual_seed(seed))

        state = fisher_weighted_average((r.weights() for r in runs), fishers())
        return [_outcome("Fisher", cell, runs, state, evaluator, n_examples=len(x), labels="sampled", seed=seed)]


@STRATEGIES.register("ModelStock")
class ModelStock(_AuxiliaryMerge):
    """Model Stock over the auxiliary pool: per layer, toward the mean by the ratio the deltas' angle gives."""

    name = "ModelStock"
    variants = ("ModelStock",)

    def combine(self, cell, pools, evaluator):
        runs = pools[RUNS]
        theta0 = lpft_init(runs)
        state, ratios = model_stock(theta0, [r.weights() for r in runs])
        t = list(ratios.values())
        return [_outcome("ModelStock", cell, runs, state, evaluator, ratio_mean=sum(t) / len(t),
                         ratio_min=min(t), ratio_max=max(t))]


@STRATEGIES.register("EoA")
class EoA(Strategy):
    """Ensemble of moving averages (Arpit et al. 2022): predictions of the MovingAverage runs, averaged."""

    name = "EoA"
    variants = ("EoA",)
    algorithm = MovingAverage.algorithm

    def pools(self, cell, inits, settings):
        return MovingAverage().pools(cell, inits, settings)  # the same runs, trained once

    def combine(self, cell, pools, evaluator):
        return [prediction_ensemble("EoA", pools[RUNS], evaluator)]


def gated_soup(
    runs: list[RunRef], theta0: State, evaluator: Evaluator, cell: Cell, *,
    max_distance: float = DEFAULT_MAX_DISTANCE, max_barrier: float = DEFAULT_MAX_BARRIER,
) -> tuple[State, list[RunRef], dict[str, str]]:
    """Uniform soup of the runs the merge gate lets in: by decreasing validation accuracy, each run must
    share the foundation and have no validation barrier above `max_barrier` on its path to the soup.

    Returns (soup, accepted runs, {refused run id: one-line reason}).
    """
    val = _validation(cell, evaluator)
    phi0 = _phi0(theta0)
    ordered = sorted(runs, key=lambda r: -r.val_acc)
    accepted: list[RunRef] = []
    refused: dict[str, str] = {}
    soup: State | None = None
    soup_acc = 0.0
    for run in ordered:
        candidate = run.weights()
        if soup is None:  # the first run has no soup to join yet: the foundation check only
            verdict = foundation_gate(candidate, phi0, max_distance)
        else:
            verdict = merge_gate(candidate, soup, phi0, val, soup_acc=soup_acc, max_distance=max_distance,
                                 max_barrier=max_barrier)
        if not verdict.accepted:
            refused[run.run_id] = verdict.reason
            continue
        accepted.append(run)
        soup = uniform_average(r.weights() for r in accepted)
        soup_acc = val(soup)
    if soup is None:
        raise UserError(f"the merge gate refused every run of {cell}: {refused}")
    return soup, accepted, refused


@STRATEGIES.register("Ratatouille-gated")
class RatatouilleGated(_AuxiliaryMerge):
    """Ratatouille's uniform soup of the auxiliary pool, restricted to the runs the merge gate accepts."""

    name = "Ratatouille-gated"
    variants = ("Ratatouille-gated",)

    def combine(self, cell, pools, evaluator):
        runs = pools[RUNS]
        soup, accepted, refused = gated_soup(runs, lpft_init(runs), evaluator, cell)
        return [_outcome("Ratatouille-gated", cell, runs, soup, evaluator,
                         selected=[r.run_id for r in accepted], refused=refused)]
