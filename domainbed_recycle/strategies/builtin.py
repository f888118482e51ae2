"""The strategies of the model-recycling family, one small class each (README's strategy table)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainbed_recycle.averaging import check_finite, fusing_weights, greedy_soup, prefix_averages, weighted_average
from domainbed_recycle.checkpoints import load_checkpoint, read_metadata, save_checkpoint, split_state
from domainbed_recycle.errors import UserError
from domainbed_recycle.evaluation import Evaluator, ProbabilityEnsemble
from domainbed_recycle.misc import args_hash
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
    run_seed,
    target_run,
)


def lpft_pool(cell: Cell, inits: Inits, settings: TargetSettings) -> list[dict[str, Any]]:
    """M runs from phi_0 + the linear probe, one per hparams seed (shared by LP-FT, Soup, Ensemble)."""
    return [target_run(cell, settings, h, PHI0, inits.foundation, inits.probe) for h in range(settings.n_runs)]


def auxiliary_pool(cell: Cell, inits: Inits, settings: TargetSettings) -> list[dict[str, Any]]:
    """M runs spread over [phi_0, aux_1, ..., aux_K] by hparams seed, all from the same probe.

    As in the reference code, the hparams seed also picks the init (`Inits.featurizer_for`); the phi_0
    runs are the LP-FT pool's runs with the same seed, so they are trained once.
    """
    return [target_run(cell, settings, h, *inits.featurizer_for(h), inits.probe) for h in range(settings.n_runs)]


def _uniform(variant: str, cell: Cell, runs: list[RunRef], evaluator: Evaluator) -> ModelOutcome:
    """Uniform weight average of the runs' best checkpoints, plus the accuracy-vs-#models curve (its
    prefix averages folded forward: one checkpoint read per run, each prefix evaluated in place)."""
    curve = []
    for k, state in enumerate(prefix_averages((run.weights() for run in runs), copies=False), start=1):
        if k < len(runs):
            curve.append((k, evaluator.test_acc(state, cell.test_env)))
    accs = evaluator.record(state)
    curve.append((len(runs), accs[f"env{cell.test_env}_in_acc"]))
    return ModelOutcome(variant, accs, {"members": [r.run_id for r in runs], "curve": curve})


def _greedy(variant: str, cell: Cell, runs: list[RunRef], evaluator: Evaluator) -> ModelOutcome:
    """Greedy soup: add runs by decreasing validation accuracy while the soup's validation does not drop;
    the curve is the test accuracy of the soup kept after each candidate (no soup rebuilt)."""
    curve: list[tuple[int, float]] = []

    def on_trial(k: int, soup: dict) -> None:
        if k < len(runs):
            curve.append((k, evaluator.test_acc(soup, cell.test_env)))

    result = greedy_soup(lambda index: runs[index].weights(), [run.val_acc for run in runs],
                         lambda s: evaluator.val_acc(s, [cell.test_env]), on_trial=on_trial)
    accs = evaluator.record(result.state_dict)
    curve.append((len(result.trials), accs[f"env{cell.test_env}_in_acc"]))
    info = {"members": [r.run_id for r in runs], "selected": [runs[i].run_id for i in result.selected],
            "curve": curve}
    return ModelOutcome(variant, accs, info)


def prediction_ensemble(variant: str, runs: list[RunRef], evaluator: Evaluator) -> ModelOutcome:
    """Average of the members' predicted probabilities, accumulated one member at a time."""
    ensemble = ProbabilityEnsemble()
    for run in runs:
        ensemble.add(evaluator.split_probs(run.weights()))
    return ModelOutcome(variant, ensemble.record(), {"members": [r.run_id for r in runs]})


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
    pooled = {"Soup-uniform†": "Soup-uniform"}  # DiWA's pooled row

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
        return [prediction_ensemble("Ensemble", pools["LP-FT"], evaluator),
                prediction_ensemble("Ensemble-aux", pools["auxiliary"], evaluator)]


@STRATEGIES.register("InterTraining")
class InterTraining(Strategy):
    """Inter-training: one run from an auxiliary featurizer + probe, picked by model selection."""

    name = "InterTraining"
    variants = ("InterTraining",)
    needs_auxiliary = True

    def pools(self, cell, inits, settings):
        return {RUNS: auxiliary_pool(cell, inits, settings)}

    def combine(self, cell, pools, evaluator):
        # Model selection over the whole auxiliary pool, phi_0 runs included, as the reference collects
        # its with-aux sweep.
        return [RunsOutcome("InterTraining", pools[RUNS])]


@dataclass(frozen=True)
class FusedInit:
    """A featurizer that is the kappa-weighted average of featurizers (Fusing's init).

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
        # phi_0 may be a file without our metadata (a torchvision .pth, named weights): the architecture
        # is that of the first source that records one (the auxiliary runs do)
        arch = next((meta["arch"] for meta in (read_metadata(p) for _, p in self.sources) if meta.get("arch")), None)
        fused = weighted_average(featurizers, list(self.weights))
        save_checkpoint(self.path, fused, {"arch": arch, "fused_from": [label for label, _ in self.sources],
                                           "weights": list(self.weights)})


@STRATEGIES.register("Fusing")
class Fusing(Strategy):
    """Fusing: each run starts from its own kappa-weighted average of phi_0 and the auxiliary featurizers
    (run h mod n of each auxiliary task), plus the target probe, as the reference does.

    Reported as one run picked by model selection ("Fusing") and as the uniform average of its runs
    ("Fusing-uniform"). kappa_i ~ exp(r U(0,1)) with r = `fusing_range`, drawn per run from its seed.
    M runs (`n_runs`), as many as the other pools: the reference fuses over its whole target sweep.
    """

    name = "Fusing"
    variants = ("Fusing", "Fusing-uniform")
    needs_auxiliary = True
    init_label = "fused"

    def fused_init(self, cell: Cell, inits: Inits, settings: TargetSettings, hparams_seed: int) -> FusedInit:
        if not inits.auxiliary:
            raise UserError("Fusing needs at least one auxiliary fine-tuning")
        sources = ((PHI0, inits.foundation), *((a.label, a.pick(hparams_seed)) for a in inits.auxiliary))
        seed = run_seed(cell, settings.algorithm, hparams_seed, self.init_label)
        weights = tuple(fusing_weights(len(sources), settings.fusing_range, seed))
        name = args_hash({"sources": [path for _, path in sources], "weights": weights})
        return FusedInit(inits.work_dir / f"fused_{name}.safetensors", sources, weights)

    def derived_inits(self, cell: Cell, inits: Inits, settings: TargetSettings) -> list[DerivedInit]:
        return [self.fused_init(cell, inits, settings, h) for h in range(settings.n_runs)]

    def pools(self, cell, inits, settings):
        fused = [str(self.fused_init(cell, inits, settings, h).path) for h in range(settings.n_runs)]
        return {RUNS: [target_run(cell, settings, h, self.init_label, path, inits.probe)
                       for h, path in enumerate(fused)]}

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
