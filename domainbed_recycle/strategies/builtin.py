"""The strategies of the model-recycling family (DESIGN.md's table), one small class each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domainbed_recycle.strategies.base import (
    PHI0,
    STRATEGIES,
    Cell,
    Inits,
    ModelOutcome,
    RunRef,
    RunsOutcome,
    Strategy,
    TargetSettings,
    target_run,
)
from domainbed_recycle.strategies.evaluator import Evaluator, ensemble_record


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
    from domainbed_recycle.averaging import uniform_average
    from domainbed_recycle.checkpoints import load_checkpoint

    load = lambda run: load_checkpoint(run.checkpoint)[0]  # noqa: E731
    curve = []
    for k in range(1, len(runs)):  # prefixes; the full average is evaluated below
        curve.append((k, evaluator.test_acc(uniform_average(load(r) for r in runs[:k]), cell.test_env)))
    state = uniform_average(load(run) for run in runs)
    accs = evaluator.record(state)
    curve.append((len(runs), accs[f"env{cell.test_env}_in_acc"]))
    return ModelOutcome(variant, accs, {"members": [r.run_id for r in runs], "curve": curve})


def _greedy(variant: str, cell: Cell, runs: list[RunRef], evaluator: Evaluator) -> ModelOutcome:
    """Greedy soup: add runs by decreasing validation accuracy while the soup's validation does not drop."""
    from domainbed_recycle.averaging import greedy_soup, uniform_average
    from domainbed_recycle.checkpoints import load_checkpoint

    load = lambda index: load_checkpoint(runs[index].checkpoint)[0]  # noqa: E731
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
    from domainbed_recycle.checkpoints import load_checkpoint

    members = [evaluator.split_probs(load_checkpoint(run.checkpoint)[0]) for run in runs]
    return ModelOutcome(variant, ensemble_record(members), {"members": [r.run_id for r in runs]})


@STRATEGIES.register("ERM")
class ERM(Strategy):
    """Vanilla fine-tuning from phi_0 with a random head; one run picked by model selection."""

    name = "ERM"
    variants = ("ERM",)

    def plan(self, cell: Cell, inits: Inits, settings: TargetSettings) -> list[dict[str, Any]]:
        return [target_run(cell, settings, h, f"{PHI0}/random-head", inits.foundation, None)
                for h in range(settings.n_runs)]

    def combine(self, cell, runs, evaluator):
        return [RunsOutcome("ERM", runs)]


@STRATEGIES.register("LP-FT")
class LPFT(Strategy):
    """Fine-tuning from phi_0 + the linear probe (LP-FT); one run picked by model selection."""

    name = "LP-FT"
    variants = ("LP-FT",)

    def plan(self, cell, inits, settings):
        return lpft_pool(cell, inits, settings)

    def combine(self, cell, runs, evaluator):
        return [RunsOutcome("LP-FT", runs)]


@STRATEGIES.register("MovingAverage")
class MovingAverage(Strategy):
    """Weight averaging over the iterates of one run (from phi_0 + probe); one run picked by selection."""

    name = "MovingAverage"
    variants = ("MovingAverage",)
    algorithm = "MovingAverage"

    def plan(self, cell, inits, settings):
        return [target_run(cell, settings, h, PHI0, inits.foundation, inits.probe, algorithm=self.algorithm)
                for h in range(settings.n_runs_small)]

    def combine(self, cell, runs, evaluator):
        return [RunsOutcome("MovingAverage", runs)]


@STRATEGIES.register("Soup")
class Soup(Strategy):
    """Model soups / DiWA: weight average of the M LP-FT runs, uniform and greedy."""

    name = "Soup"
    variants = ("Soup-uniform", "Soup-greedy")

    def plan(self, cell, inits, settings):
        return lpft_pool(cell, inits, settings)

    def combine(self, cell, runs, evaluator):
        return [_uniform("Soup-uniform", cell, runs, evaluator), _greedy("Soup-greedy", cell, runs, evaluator)]


@STRATEGIES.register("Ensemble")
class Ensemble(Strategy):
    """Average of predicted probabilities: of the LP-FT runs, and of the auxiliary-init runs."""

    name = "Ensemble"
    variants = ("Ensemble", "Ensemble-aux")

    def plan(self, cell, inits, settings):
        return lpft_pool(cell, inits, settings) + auxiliary_pool(cell, inits, settings)

    def combine(self, cell, runs, evaluator):
        n = len(runs) // 2
        return [_ensemble("Ensemble", runs[:n], evaluator), _ensemble("Ensemble-aux", runs[n:], evaluator)]


@STRATEGIES.register("InterTraining")
class InterTraining(Strategy):
    """Inter-training: one run from an auxiliary featurizer + probe, picked by model selection."""

    name = "InterTraining"
    variants = ("InterTraining",)

    def plan(self, cell, inits, settings):
        return auxiliary_pool(cell, inits, settings)

    def combine(self, cell, runs, evaluator):
        return [RunsOutcome("InterTraining", [run for run in runs if run.init_label != PHI0])]


@STRATEGIES.register("Fusing")
class Fusing(Strategy):
    """Fusing: start from the (kappa-weighted) average of the auxiliary featurizers + probe.

    Reported as one run picked by model selection ("Fusing") and as the uniform average of its runs
    ("Fusing-uniform"). kappa_i ~ exp(r U(0,1)) with r = `fusing_range`, drawn per trial seed.
    """

    name = "Fusing"
    variants = ("Fusing", "Fusing-uniform")

    @staticmethod
    def fused_path(work_dir: Path, cell: Cell) -> Path:
        return work_dir / f"fused_trial{cell.trial_seed}.safetensors"

    def prepare(self, cell, inits, settings, work_dir):
        from domainbed_recycle.averaging import fusing_weights, weighted_average
        from domainbed_recycle.checkpoints import load_checkpoint, read_metadata, save_checkpoint, split_state
        from domainbed_recycle.errors import UserError

        path = self.fused_path(work_dir, cell)
        inits.fused = str(path)
        if path.exists():
            return
        if not inits.auxiliary:
            raise UserError("Fusing needs at least one auxiliary fine-tuning")
        weights = fusing_weights(len(inits.auxiliary), settings.fusing_range, cell.trial_seed)
        featurizers = (
            {f"featurizer.{k}": v for k, v in split_state(load_checkpoint(p)[0])[0].items()}
            for _, p in inits.auxiliary
        )
        meta = read_metadata(inits.auxiliary[0][1])
        fused = weighted_average(featurizers, weights)
        save_checkpoint(path, fused, {"arch": meta.get("arch"), "fused_from": [label for label, _ in inits.auxiliary],
                                      "weights": weights})

    def plan(self, cell, inits, settings):
        if inits.fused is None:
            raise RuntimeError("Fusing.prepare must run before Fusing.plan")
        return [target_run(cell, settings, h, "fused", inits.fused, inits.probe)
                for h in range(settings.n_runs_small)]

    def combine(self, cell, runs, evaluator):
        return [RunsOutcome("Fusing", runs), _uniform("Fusing-uniform", cell, runs, evaluator)]


@STRATEGIES.register("Ratatouille")
class Ratatouille(Strategy):
    """Model ratatouille: M runs spread over the auxiliary featurizers and phi_0, all from the target
    probe, weight-averaged (uniform and greedy). The pipeline adds the variant pooled over trial seeds."""

    name = "Ratatouille"
    variants = ("Ratatouille-uniform", "Ratatouille-greedy")

    def plan(self, cell, inits, settings):
        return auxiliary_pool(cell, inits, settings)

    def combine(self, cell, runs, evaluator):
        return [_uniform("Ratatouille-uniform", cell, runs, evaluator),
                _greedy("Ratatouille-greedy", cell, runs, evaluator)]
