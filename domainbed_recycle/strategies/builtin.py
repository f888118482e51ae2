"""The strategies of the model-recycling family, one small class each (README's strategy table)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainbed_recycle.averaging import check_finite, fusing_weights, greedy_soup, uniform_average, weighted_average
from domainbed_recycle.checkpoints import load_checkpoint, read_metadata, save_checkpoint, split_state
from domainbed_recycle.errors import UserError
from domainbed_recycle.evaluation import Evaluator, ensemble_record
from domainbed_recycle.strategies.base import (
    PHI0,
    RUNS,
    STRATEGIES,
    Cell,
    DerivedInit,
    Inits,
    ModelOutcome,
    RunRef,
    RunsOutcome,
    Strategy,
    TargetSettings,
    target_run,
)


def lpft_pool(cell: Cell, inits: Inits, settings: TargetSettings) -> list[dict[str, Any]]:
    """M runs from phi_0 + the linear probe, one per hparams seed (shared by LP-FT, Soup, Ensemble)."""
    return [target_run(cell, settings, h, PHI0, inits.foundation, inits.probe) for h in range(settings.n_runs)]


def auxiliary_pool(cell: Cell, inits: Inits, settings: TargetSettings) -> list[dict[str, Any]]:
    """M runs spread over [phi_0, aux_1, ..., aux_K] by hparams seed, all from the same probe.

    As in the reference code, the hparams seed also picks the init (h mod (K+1)); the phi_0 runs are
    the LP-FT pool's runs with the same seed, so they are trained once.
    """
    featurizers = [(PHI0, inits.foundation), *inits.auxiliary]
    runs = []
    for h in range(settings.n_runs):
        label, path = featurizers[h % len(featurizers)]
        runs.append(target_run(cell, settings, h, label, path, inits.probe))
    return runs


def _uniform(variant: str, cell: Cell, runs: list[RunRef], evaluator: Evaluator) -> ModelOutcome:
    """Uniform weight average of the runs' best checkpoints, plus the accuracy-vs-#models curve."""
    load = lambda run: check_finite(load_checkpoint(run.checkpoint)[0], str(run.checkpoint))  # noqa: E731
    curve = []
    for k in range(1, len(runs)):  # prefixes; the full average is evaluated below
        curve.append((k, evaluator.test_acc(uniform_average(load(r) for r in runs[:k]), cell.test_env)))
    state = uniform_average(load(run) for run in runs)
    accs = evaluator.record(state)
    curve.append((len(runs), accs[f"env{cell.test_env}_in_acc"]))
    return ModelOutcome(variant, accs, {"members": [r.run_id for r in runs], "curve": curve})


def _greedy(variant: str, cell: Cell, runs: list[RunRef], evaluator: Evaluator) -> ModelOutcome:
    """Greedy soup: add runs by decreasing validation accuracy while the soup's validation does not drop."""
    load = lambda index: check_finite(load_checkpoint(runs[index].checkpoint)[0], str(runs[index].checkpoint))  # noqa: E731
    result = greedy_soup(load, [run.val_acc for run in runs], lambda s: evaluator.val_acc(s, [cell.test_env]))
    curve, accepted = [], []
    for k, (index, _, was_accepted) in enumerate(result.trials, start=1):
        if was_accepted:
            accepted.append(index)
        if k < len(result.trials):
            curve.append((k, evaluator.test_acc(uniform_average(load(i) for i in accepted), cell.test_env)))
    accs = evaluator.record(result.state_dict)
    curve.append((len(result.trials), accs[f"env{cell.test_env}_in_acc"]))
    info = {"members": [r.run_id for r in runs], "selected": [runs[i].run_id for i in result.selected],
            "curve": curve}
    return ModelOutcome(variant, accs, info)


def _ensemble(variant: str, runs: list[RunRef], evaluator: Evaluator) -> ModelOutcome:
    members = [evaluator.split_probs(check_finite(load_checkpoint(run.checkpoint)[0], str(run.checkpoint)))
               for run in runs]
    return ModelOutcome(variant, ensemble_record(members), {"members": [r.run_id for r in runs]})


@STRATEGIES.register("ERM")
class ERM(Strategy):
    """Vanilla fine-tuning from phi_0 with a random head; one run picked by model selection."""

    name = "ERM"
    variants = ("ERM",)

    def pools(self, cell, inits, settings):
        return {RUNS: [target_run(cell, settings, h, f"{PHI0}/random-head", inits.foundation, None)
                       for h in range(settings.n_runs)]}

    def combine(self, cell, pools, evaluator):
        return [RunsOutcome("ERM", pools[RUNS])]


@STRATEGIES.register("LP-FT")
class LPFT(Strategy):
    """Fine-tuning from phi_0 + the linear probe (LP-FT); one run picked by model selection."""

    name = "LP-FT"
    variants = ("LP-FT",)

    def pools(self, cell, inits, settings):
        return {RUNS: lpft_pool(cell, inits, settings)}

    def combine(self, cell, pools, evaluator):
        return [RunsOutcome("LP-FT", pools[RUNS])]


@STRATEGIES.register("MovingAverage")
class MovingAverage(Strategy):
    """Weight averaging over the iterates of one run (from phi_0 + probe); one run picked by selection."""

    name = "MovingAverage"
    variants = ("MovingAverage",)
    algorithm = "MovingAverage"

    def pools(self, cell, inits, settings):
        return {RUNS: [target_run(cell, settings, h, PHI0, inits.foundation, inits.probe, algorithm=self.algorithm)
                       for h in range(settings.n_runs_small)]}

    def combine(self, cell, pools, evaluator):
        return [RunsOutcome("MovingAverage", pools[RUNS])]


@STRATEGIES.register("Soup")
class Soup(Strategy):
    """Model soups / DiWA: weight average of the M LP-FT runs, uniform and greedy."""

    name = "Soup"
    variants = ("Soup-uniform", "Soup-greedy")
    analysis_pool = ("LP-FT pool", "lp")

    def pools(self, cell, inits, settings):
        return {RUNS: lpft_pool(cell, inits, settings)}

    def combine(self, cell, pools, evaluator):
        runs = pools[RUNS]
        return [_uniform("Soup-uniform", cell, runs, evaluator), _greedy("Soup-greedy", cell, runs, evaluator)]


@STRATEGIES.register("Ensemble")
class Ensemble(Strategy):
    """Average of predicted probabilities: of the LP-FT runs, and of the auxiliary-init runs."""

    name = "Ensemble"
    variants = ("Ensemble", "Ensemble-aux")

    def pools(self, cell, inits, settings):
        return {"LP-FT": lpft_pool(cell, inits, settings), "auxiliary": auxiliary_pool(cell, inits, settings)}

    def combine(self, cell, pools, evaluator):
        return [_ensemble("Ensemble", pools["LP-FT"], evaluator),
                _ensemble("Ensemble-aux", pools["auxiliary"], evaluator)]


@STRATEGIES.register("InterTraining")
class InterTraining(Strategy):
    """Inter-training: one run from an auxiliary featurizer + probe, picked by model selection."""

    name = "InterTraining"
    variants = ("InterTraining",)
    needs_auxiliary = True

    def pools(self, cell, inits, settings):
        return {RUNS: auxiliary_pool(cell, inits, settings)}

    def combine(self, cell, pools, evaluator):
        return [RunsOutcome("InterTraining", [run for run in pools[RUNS] if run.init_label != PHI0])]


@dataclass(frozen=True)
class FusedInit:
    """A featurizer that is the kappa-weighted average of auxiliary featurizers (Fusing's init).

    sources: (label, checkpoint) of the averaged featurizers; weights: their kappas (sum to 1).
    """

    path: Path
    sources: tuple[tuple[str, str], ...]
    weights: tuple[float, ...]

    def build(self) -> None:
        if self.path.exists():
            return
        featurizers = ({f"featurizer.{k}": v
                        for k, v in split_state(check_finite(load_checkpoint(p)[0], str(p)))[0].items()}
                       for _, p in self.sources)
        meta = read_metadata(self.sources[0][1])
        fused = weighted_average(featurizers, list(self.weights))
        save_checkpoint(self.path, fused, {"arch": meta.get("arch"), "fused_from": [label for label, _ in self.sources],
                                           "weights": list(self.weights)})


@STRATEGIES.register("Fusing")
class Fusing(Strategy):
    """Fusing: start from the (kappa-weighted) average of the auxiliary featurizers + probe.

    Reported as one run picked by model selection ("Fusing") and as the uniform average of its runs
    ("Fusing-uniform"). kappa_i ~ exp(r U(0,1)) with r = `fusing_range`, drawn per trial seed.
    """

    name = "Fusing"
    variants = ("Fusing", "Fusing-uniform")
    needs_auxiliary = True

    def fused_init(self, cell: Cell, inits: Inits, settings: TargetSettings) -> FusedInit:
        if not inits.auxiliary:
            raise UserError("Fusing needs at least one auxiliary fine-tuning")
        weights = fusing_weights(len(inits.auxiliary), settings.fusing_range, cell.trial_seed)
        return FusedInit(inits.work_dir / f"fused_trial{cell.trial_seed}.safetensors", tuple(inits.auxiliary),
                         tuple(weights))

    def derived_inits(self, cell: Cell, inits: Inits, settings: TargetSettings) -> list[DerivedInit]:
        return [self.fused_init(cell, inits, settings)]

    def pools(self, cell, inits, settings):
        fused = str(self.fused_init(cell, inits, settings).path)
        return {RUNS: [target_run(cell, settings, h, "fused", fused, inits.probe)
                       for h in range(settings.n_runs_small)]}

    def combine(self, cell, pools, evaluator):
        runs = pools[RUNS]
        return [RunsOutcome("Fusing", runs), _uniform("Fusing-uniform", cell, runs, evaluator)]


@STRATEGIES.register("Ratatouille")
class Ratatouille(Strategy):
    """Model ratatouille: M runs spread over the auxiliary featurizers and phi_0, all from the target
    probe, weight-averaged (uniform and greedy); † = uniform over every trial seed's runs."""

    name = "Ratatouille"
    variants = ("Ratatouille-uniform", "Ratatouille-greedy")
    needs_auxiliary = True
    analysis_pool = ("auxiliary pool", "aux")
    lmc_across_inits = True
    pooled = {"Ratatouille-uniform†": "Ratatouille-uniform"}

    def pools(self, cell, inits, settings):
        return {RUNS: auxiliary_pool(cell, inits, settings)}

    def combine(self, cell, pools, evaluator):
        runs = pools[RUNS]
        return [_uniform("Ratatouille-uniform", cell, runs, evaluator),
                _greedy("Ratatouille-greedy", cell, runs, evaluator)]
