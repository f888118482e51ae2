"""Merging strategies: every merging operator a recycler would try, as rows of the same tables.

Each reuses runs other strategies already plan (no extra target training): the LP-FT pool (operators that
take one fine-tuned model: WiSE-FT, SLERP), the auxiliary pool (the recycling variants: task arithmetic,
TIES, DARE, Model Stock, Fisher, gated ratatouille) or the MovingAverage runs (EoA). The base θ0 of every
operator is φ0 + the linear probe (the LP-FT init), rebuilt from the checkpoints the runs started from.

The strategies of the operators in `merge_ops` are made here from their declarations (`OperatorStrategy`,
one per operator naming a `row`): each hyper-parameter with a grid is chosen on training-domain
validation only (`Evaluator.val_acc` with the cell's test domain held out); the grid curve, with each
point's validation and test accuracy, is kept in the outcome's info under "grid" (the key "curve" is
taken: the figures read it as accuracy vs number of averaged models). Fisher, EoA and Ratatouille-gated
need data or predictions, so they are classes of their own below. README's "Merging strategies" lists them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from domainbed_recycle import merge_ops
from domainbed_recycle.averaging import check_compatible, interpolate, uniform_average
from domainbed_recycle.checkpoints import load_checkpoint, split_state
from domainbed_recycle.errors import UserError
from domainbed_recycle.evaluation import Evaluator, iterate_batches
from domainbed_recycle.fisher import diagonal_fisher
from domainbed_recycle.gate import DEFAULT_MAX_BARRIER, DEFAULT_MAX_DISTANCE, foundation_gate, merge_gate
from domainbed_recycle.merge_ops import MergeOp
from domainbed_recycle.merging import fisher_weighted_average
from domainbed_recycle.misc import seed_hash
from domainbed_recycle.strategies.base import PHI0, RUNS, STRATEGIES, Cell, ModelOutcome, RunRef, Strategy
from domainbed_recycle.strategies.builtin import MovingAverage, auxiliary_pool, lpft_pool, prediction_ensemble

State = dict[str, Tensor]

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
    grid: Sequence[dict[str, Any]], build: Callable[[dict[str, Any]], State], cell: Cell, evaluator: Evaluator
) -> tuple[State, dict[str, Any], list[dict[str, Any]]]:
    """The grid point with the best validation accuracy (first on ties): (its state, its point, curve).

    The curve holds each point's validation accuracy (what chooses) and test accuracy (only reported)."""
    val = _validation(cell, evaluator)
    best: tuple[float, State, dict[str, Any]] | None = None
    curve = []
    for point in grid:
        state = build(point)
        acc = val(state)
        curve.append({**point, "val_acc": acc, "test_acc": evaluator.test_acc(state, cell.test_env)})
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


class OperatorStrategy(Strategy):
    """The merging strategy of one registered operator (`op`): its members, θ0 = φ0 + probe, its grid.

    Members: an operator taking one fine-tuned model gets the LP-FT run with the best validation accuracy
    (WiSE-FT's setting); the others merge the auxiliary pool. A parameter named `seed` (DARE's masks) is
    seeded by the strategy and the cell. With a scale parameter (linear around θ0) each combination of the
    other grid values is merged once, at the unit scale, and the grid's scales are interpolations of it.
    """

    op: ClassVar[MergeOp]

    def pools(self, cell, inits, settings):
        pool = lpft_pool if self.op.max_models == 1 else auxiliary_pool
        return {RUNS: pool(cell, inits, settings)}

    def combine(self, cell, pools, evaluator):
        op, runs = self.op, pools[RUNS]
        theta0 = lpft_init(runs) if op.needs_base else None
        info: dict[str, Any] = {}
        if op.max_models == 1:
            chosen_run = max(runs, key=lambda r: r.val_acc)  # max keeps the first on ties
            models, info["fine_tuned"] = [chosen_run.weights()], chosen_run.run_id
        else:
            models = [r.weights() for r in runs]
        k = len(models)
        fixed = {merge_ops.SEED: seed_hash(self.name, cell.dataset, cell.test_env, cell.trial_seed)} \
            if merge_ops.SEED in op.param_names else {}
        grid = merge_ops.strategy_grid(op)
        if not grid:
            state, reported = op(theta0, models, **op.arguments(k, fixed))
            return [_outcome(self.name, cell, runs, state, evaluator, **info, **fixed, **reported)]
        scale = op.scale_param
        units: dict[tuple, State] = {}

        def build(point: dict[str, Any]) -> State:
            given = {**fixed, **{n: v / k if op.param(n).per_k else v for n, v in point.items()}}
            if scale is None:
                return op(theta0, models, **op.arguments(k, given))[0]
            rest = tuple((n, v) for n, v in point.items() if n != scale.name)
            if rest not in units:  # merged once at the unit scale (1, or 1/K), then interpolated
                unit = {**given, scale.name: 1.0 / k if scale.per_k else 1.0}
                units[rest] = op(theta0, models, **op.arguments(k, unit))[0]
            return interpolate(theta0, units[rest], point[scale.name])

        state, point, curve = _select(grid, build, cell, evaluator)
        curve = [{**merge_ops.record_point(op, p, k), "val_acc": c["val_acc"], "test_acc": c["test_acc"]}
                 for p, c in zip(grid, curve, strict=True)]
        return [_outcome(self.name, cell, runs, state, evaluator, **info,
                         chosen=merge_ops.record_point(op, point, k), grid=curve, **fixed)]


def operator_strategy(op: MergeOp) -> type[OperatorStrategy]:
    """A new OperatorStrategy class for `op` (named after its row)."""
    doc = f"{op.row}: {op.summary} ({op.reference}); grid hyper-parameters chosen on validation."
    return type(re.sub(r"\W", "", op.row or op.name), (OperatorStrategy,),
                {"op": op, "name": op.row, "variants": (op.row,), "__doc__": doc})


for _op in merge_ops.operators():  # one strategy per operator that names a row
    if _op.row:
        STRATEGIES.register(_op.row)(operator_strategy(_op))


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
