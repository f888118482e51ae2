"""Diversity and linear mode connectivity of finished runs: run folders in, numbers out.

The glue between run folders (``training.train``), the test-domain predictions of their best checkpoints
(``evaluation.Evaluator``) and the pure measures of ``diversity``, ``lmc`` and ``averaging``.
Used by ``drecycle diversity`` / ``drecycle lmc`` and by the recycling pipeline's analyses.

Conventions:

- A *run* is a finished run folder (with ``done``); its model is ``model_best.safetensors`` (best
  training-domain validation accuracy, what averaging uses), or ``model.safetensors`` when the run kept
  no best checkpoint. Functions taking runs accept ``RunInfo`` objects, run folders (``str`` / ``Path``)
  ``RunDir`` objects or anything holding one as ``.run`` (``strategies.base.RunRef``).
- Every number is measured on the test domain's ``in`` split (DomainBed's reported test accuracy),
  except the LMC validation curve (mean ``out`` accuracy over the training domains).
- Accuracies are fractions in [0, 1]; undefined measures are ``nan`` (see ``diversity``);
  ``jsonable`` turns a report into strict JSON (``nan`` -> ``null``).

Why one module of ~470 lines: it is the single room where finished runs meet the measures (load a
run, predict, diversity, pairwise averages, LMC, init paths); each function is short and they share
`RunInfo` and the evaluator checks, which a split would only pass around.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainbed_recycle import diversity
from domainbed_recycle.averaging import StateDict, check_finite, uniform_average
from domainbed_recycle.checkpoints import load_checkpoint, read_metadata
from domainbed_recycle.datasets import get_dataset, get_dataset_class
from domainbed_recycle.errors import UserError
from domainbed_recycle.evaluation import Evaluator
from domainbed_recycle.lmc import DEFAULT_LAMBDAS, barrier_height, lmc_curve
from domainbed_recycle.rundir import RunDir

__all__ = [
    "RunInfo",
    "RunLike",
    "common_test_env",
    "diversity_report",
    "init_paths",
    "evaluator_for",
    "jsonable",
    "lmc_between",
    "load_run",
    "pairwise_wa_gains",
    "relative_distance",
    "test_predictions",
]

DIVERSITY_METRICS = ("disagreement", "ratio_error", "q_statistic", "double_fault")


@dataclass
class RunInfo:
    """A finished run: where it is, what it was trained on, and (loaded on first use) its weights.

    Attributes:
        run_dir: the run folder.
        checkpoint: the model file used (``model_best.safetensors``, else ``model.safetensors``).
        arch: architecture description from the checkpoint (``networks.architecture`` + classes).
        dataset: dataset name the run was trained on.
        test_envs: held-out domain indices of the run.
        trial_seed: seed of the in/out splits.
        holdout_fraction: fraction of each domain in its ``out`` split.
        data_dir: the run's ``--data_dir`` (None for built-in datasets).
        init_label: short name of the initialisation (``random``, ``phi0``, ``aux:...``).
        metadata: the checkpoint's full metadata (step, val_acc, hparams, init, ...).
    """

    run_dir: Path
    checkpoint: Path
    arch: dict[str, Any]
    dataset: str
    test_envs: list[int]
    trial_seed: int
    holdout_fraction: float
    data_dir: str | None
    init_label: str
    metadata: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        """The run folder's name (its id in a sweep)."""
        return self.run_dir.name

    @property
    def val_acc(self) -> float:
        """Training-domain validation accuracy of the checkpoint, as logged when it was saved."""
        return float(self.metadata.get("val_acc", math.nan))

    @cached_property
    def state(self) -> dict[str, torch.Tensor]:
        """The checkpoint's state dict (read on first access, then kept); UserError if not finite."""
        return check_finite(load_checkpoint(self.checkpoint)[0], str(self.checkpoint))


RunLike = RunInfo | str | Path


def load_run(run_dir: str | Path) -> RunInfo:
    """Describe a finished run folder (its weights are read lazily, see ``RunInfo.state``).

    Raises:
        UserError: the folder is missing, is not a run folder, is unfinished (no ``done``), has no model
            checkpoint, or its checkpoint / ``args.json`` lacks what is needed.
    """
    run = RunDir(run_dir)
    path = run.path
    if not path.exists():
        raise UserError(f"{path}: no such run folder")
    if not path.is_dir():
        raise UserError(f"{path}: not a folder (expected a run folder written by `drecycle train`)")
    if not run.is_done:
        if not run.results_file.is_file():
            raise UserError(f"{path}: not a run folder (no {RunDir.RESULTS} nor done; see `drecycle train`)")
        raise UserError(f"{path}: unfinished run (no `done` file); wait for it to end or relaunch it")
    checkpoint = run.model_checkpoint
    if checkpoint is None:
        raise UserError(f"{path}: the run saved no model (no {RunDir.BEST}; --skip_model_save?)")
    metadata = read_metadata(checkpoint)
    missing = [key for key in ("arch", "dataset", "test_envs", "trial_seed") if key not in metadata]
    if missing:
        raise UserError(f"{checkpoint}: not a drecycle run checkpoint (its metadata lacks '{missing[0]}')")
    args = run.args
    init = metadata.get("init") or {}
    label = (init.get("label") if isinstance(init, dict) else None) or args.get("init_label") or "random"
    return RunInfo(
        run_dir=path,
        checkpoint=checkpoint,
        arch=dict(metadata["arch"]),
        dataset=str(metadata["dataset"]),
        test_envs=[int(e) for e in metadata["test_envs"]],
        trial_seed=int(metadata["trial_seed"]),
        holdout_fraction=float(args.get("holdout_fraction", 0.2)),
        data_dir=args.get("data_dir"),
        init_label=str(label),
        metadata=metadata,
    )


def _as_run(run: Any) -> RunInfo:
    if isinstance(run, RunInfo):
        return run
    if isinstance(run, str | Path):
        return load_run(run)
    if isinstance(run, RunDir):
        return load_run(run.path)
    if isinstance(getattr(run, "run", None), RunDir):  # strategies.base.RunRef
        return load_run(run.run.path)
    raise TypeError(f"expected a RunInfo, a run folder or a RunRef, got {type(run).__name__}")


def _as_runs(runs: Iterable[Any]) -> list[RunInfo]:
    return [_as_run(run) for run in runs]


def _comparable_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """What must match for two runs' weights to be interchangeable (and averaged)."""
    return {key: value for key, value in arch.items() if key != "classes"}


def evaluator_for(runs: Sequence[RunLike], dataset: Any = None) -> Evaluator:
    """One ``Evaluator`` serving every run: same dataset, trial seed, holdout fraction and architecture.

    The dataset is built once, from the first run's ``data_dir``, unless the caller passes the
    ``MultipleDomainDataset`` it already holds (it must be the runs' dataset). Test domains may differ
    between runs (each function takes the domain to measure on).

    Raises:
        UserError: no runs, or a run whose dataset / trial_seed / holdout_fraction / architecture / class
            names differ from the first run's (the message names the run and the field).
    """
    infos = _as_runs(runs)
    if not infos:
        raise UserError("no runs given")
    ref = infos[0]
    # DomainBed's MNIST datasets deal their digits into domains by the run's seed: one deal for all runs
    dealt = getattr(get_dataset_class(ref.dataset), "SHUFFLED_BY_SEED", False)
    for info in infos[1:]:
        checks = (
            ("dataset", ref.dataset, info.dataset),
            ("trial_seed", ref.trial_seed, info.trial_seed),
            ("holdout_fraction", ref.holdout_fraction, info.holdout_fraction),
            ("architecture", _comparable_arch(ref.arch), _comparable_arch(info.arch)),
            *((("seed (it deals the digits into domains)", ref.metadata.get("seed"), info.metadata.get("seed")),)
              if dealt else ()),
        )
        for name, expected, found in checks:
            if expected != found:
                raise UserError(
                    f"{info.run_dir}: {name} {found} differs from {expected} of {ref.run_dir}; "
                    "runs can be compared only on the same dataset splits and architecture"
                )
        classes = ref.arch.get("classes"), info.arch.get("classes")
        if all(classes) and classes[0] != classes[1]:
            raise UserError(f"{info.run_dir}: class names differ from those of {ref.run_dir}")
    if dataset is None:
        dataset = get_dataset(ref.dataset, ref.data_dir, ref.test_envs, {"data_augmentation": False},
                              seed=int(ref.metadata.get("seed", 0)))
    return Evaluator(dataset, ref.trial_seed, ref.holdout_fraction, ref.arch)


def common_test_env(runs: Sequence[RunLike]) -> int:
    """The test domain shared by every run (each run must hold out that one domain only).

    Raises:
        UserError: runs with several or different test domains (pass the domain explicitly).
    """
    infos = _as_runs(runs)
    envs = {tuple(info.test_envs) for info in infos}
    if len(envs) != 1 or len(next(iter(envs))) != 1:
        found = ", ".join(f"{info.name}: {info.test_envs}" for info in infos)
        raise UserError(f"the runs do not share one test domain ({found}); choose one with --test_env")
    return next(iter(envs))[0]


def _check_env(evaluator: Evaluator, test_env: int) -> int:
    test_env = int(test_env)
    if not 0 <= test_env < evaluator.n_envs:
        raise UserError(f"test domain {test_env} out of range: the dataset has {evaluator.n_envs} domains")
    return test_env


def _state_probs(evaluator: Evaluator, state: Any, test_env: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, C], labels [N]) of one state dict on the test domain's ``in`` split."""
    probs, labels = evaluator.test_probs(state, test_env)
    return probs.numpy(), labels.numpy().astype(np.int64)


def test_predictions(
    runs: Sequence[RunLike], evaluator: Evaluator, test_env: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each run's softmax probabilities on the test domain's ``in`` split.

    Returns:
        ``(probs [M, N, C] float32, labels [N] int64)``, runs in the given order.
    """
    infos = _as_runs(runs)
    if not infos:
        raise UserError("no runs given")
    test_env = _check_env(evaluator, test_env)
    all_probs, labels = [], None
    for info in infos:
        probs, labels = _state_probs(evaluator, info.state, test_env)
        all_probs.append(probs)
    return np.stack(all_probs), labels


test_predictions.__test__ = False  # not a pytest test, despite its name


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=-1) == labels)) if len(labels) else math.nan


def _matrix(mat: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in row] for row in mat]


def diversity_report(
    runs: Sequence[RunLike],
    evaluator: Evaluator,
    test_env: int,
    predictions: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Diversity of M >= 2 runs on the test domain, and what their functional ensemble gains.

    Args:
        runs: the runs (a run may appear twice: it is then compared with itself).
        evaluator: from ``evaluator_for(runs)``.
        test_env: domain index measured on (its ``in`` split).
        predictions: ``test_predictions(runs, evaluator, test_env)`` if already computed.

    Returns:
        ``{"test_env", "n_samples", "runs" (folders), "init_labels", "accuracies" [M],
        "mean_accuracy", "ensemble_accuracy", "ensemble_gain" (ensemble − mean), "mean": {metric: mean
        over pairs}, "matrices": {metric: [M][M] nested lists, diagonal nan}}`` for the metrics
        disagreement, ratio_error, q_statistic, double_fault (see ``diversity``).
    """
    infos = _as_runs(runs)
    if len(infos) < 2:
        raise UserError(f"diversity needs at least 2 runs, got {len(infos)}")
    test_env = _check_env(evaluator, test_env)
    probs, labels = predictions if predictions is not None else test_predictions(infos, evaluator, test_env)
    if len(probs) != len(infos):
        raise ValueError(f"predictions hold {len(probs)} models for {len(infos)} runs")
    preds = list(probs.argmax(axis=2))
    accs = [_accuracy(p, labels) for p in probs]
    ensemble = diversity.ensemble_accuracy(probs, labels)
    mean_acc = diversity.mean_individual_accuracy(probs, labels)
    return {
        "test_env": test_env,
        "n_samples": int(len(labels)),
        "runs": [str(info.run_dir) for info in infos],
        "init_labels": [info.init_label for info in infos],
        "accuracies": accs,
        "mean_accuracy": mean_acc,
        "ensemble_accuracy": ensemble,
        "ensemble_gain": ensemble - mean_acc,
        "mean": {name: diversity.mean_pairwise(preds, labels, name) for name in DIVERSITY_METRICS},
        "matrices": {
            name: _matrix(diversity.pairwise_matrix(preds, labels, name)) for name in DIVERSITY_METRICS
        },
    }


def pairwise_wa_gains(
    runs: Sequence[RunLike],
    evaluator: Evaluator,
    test_env: int,
    predictions: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Diversity of each pair of runs vs what their weight average gains (DiWA / ratatouille's Hyp. 1).

    For every pair i < j: the pair's ratio-error, disagreement and Q-statistic, the accuracy of the
    uniform weight average ``(θ_i + θ_j) / 2`` (``averaging.uniform_average``), of the pair's functional
    ensemble, the mean of the two individual accuracies and ``gain = wa_acc − mean_acc``. All
    accuracies come from the argmax of predicted probabilities on the test domain's ``in`` split, so a
    run paired with itself has gain exactly 0.

    Args:
        runs, evaluator, test_env, predictions: as in ``diversity_report``.

    Returns:
        One dict per pair, in (i, j) order: ``{"i", "j", "run_a", "run_b", "ratio_error",
        "disagreement", "q_statistic", "acc_a", "acc_b", "mean_acc", "wa_acc", "gain",
        "ensemble_acc"}``.
    """
    infos = _as_runs(runs)
    if len(infos) < 2:
        raise UserError(f"pairwise weight averages need at least 2 runs, got {len(infos)}")
    test_env = _check_env(evaluator, test_env)
    probs, labels = predictions if predictions is not None else test_predictions(infos, evaluator, test_env)
    preds = probs.argmax(axis=2)
    accs = [_accuracy(p, labels) for p in probs]
    rows = []
    for i in range(len(infos)):
        for j in range(i + 1, len(infos)):
            average = uniform_average([infos[i].state, infos[j].state])
            wa_probs, _ = _state_probs(evaluator, average, test_env)
            wa_acc = _accuracy(wa_probs, labels)
            mean_acc = (accs[i] + accs[j]) / 2
            rows.append({
                "i": i,
                "j": j,
                "run_a": str(infos[i].run_dir),
                "run_b": str(infos[j].run_dir),
                "ratio_error": diversity.ratio_error(preds[i], preds[j], labels),
                "disagreement": diversity.disagreement(preds[i], preds[j], labels),
                "q_statistic": diversity.q_statistic(preds[i], preds[j], labels),
                "acc_a": accs[i],
                "acc_b": accs[j],
                "mean_acc": mean_acc,
                "wa_acc": wa_acc,
                "gain": wa_acc - mean_acc,
                "ensemble_acc": diversity.ensemble_accuracy(probs[[i, j]], labels),
            })
    return rows


def lmc_between(
    run_a: RunLike,
    run_b: RunLike,
    evaluator: Evaluator,
    test_env: int,
    lambdas: Iterable[float] | None = None,
    validation: bool = True,
) -> dict[str, Any]:
    """Linear mode connectivity of two runs along ``θ(λ) = (1 − λ)θ_a + λθ_b``.

    Args:
        run_a, run_b: the two runs (λ = 0 is ``run_a``'s model, λ = 1 ``run_b``'s, exactly).
        evaluator: from ``evaluator_for([run_a, run_b])``.
        test_env: domain of the test curve (its ``in`` split).
        lambdas: interpolation coefficients; default ``lmc.DEFAULT_LAMBDAS`` (0, 0.1, ..., 1). The
            barrier needs 0 and 1 among them.
        validation: also compute the training-domain validation curve (mean ``out`` accuracy over the
            domains that neither run held out, nor ``test_env``).

    Returns:
        ``{"run_a", "run_b", "test_env", "lambdas", "test_curve": [(λ, acc)], "test_barrier",
        "val_envs", "val_curve", "val_barrier"}``; barriers as in ``lmc.barrier_height`` (same unit as
        the accuracies, >= 0). Without ``validation`` the ``val_*`` entries are None.
    """
    a, b = _as_run(run_a), _as_run(run_b)
    test_env = _check_env(evaluator, test_env)
    lams = [float(lam) for lam in (DEFAULT_LAMBDAS if lambdas is None else lambdas)]
    if 0.0 not in lams or 1.0 not in lams:
        raise UserError(f"the interpolation coefficients must include 0 and 1, got {lams}")
    test_curve = lmc_curve(a.state, b.state, lambda s: evaluator.test_acc(s, test_env), lams)
    result: dict[str, Any] = {
        "run_a": str(a.run_dir),
        "run_b": str(b.run_dir),
        "test_env": test_env,
        "lambdas": lams,
        "test_curve": test_curve,
        "test_barrier": barrier_height(test_curve),
        "val_envs": None,
        "val_curve": None,
        "val_barrier": None,
    }
    if validation:
        held_out = sorted({test_env, *a.test_envs, *b.test_envs})
        val_envs = [e for e in range(evaluator.n_envs) if e not in held_out]
        if val_envs:
            val_curve = lmc_curve(a.state, b.state, lambda s: evaluator.val_acc(s, held_out), lams)
            result.update(val_envs=val_envs, val_curve=val_curve, val_barrier=barrier_height(val_curve))
    return result


def jsonable(obj: Any) -> Any:
    """``obj`` with tuples as lists, numpy scalars as Python numbers and non-finite floats as None."""
    if isinstance(obj, dict):
        return {str(key): jsonable(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [jsonable(value) for value in obj]
    if isinstance(obj, np.integer | bool):
        return obj.item() if isinstance(obj, np.integer) else obj
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


def relative_distance(state: StateDict, reference: StateDict) -> float:
    """||state - reference|| / ||reference|| over the floating-point entries both hold (a fraction)."""
    diff = ref = 0.0
    for key, value in reference.items():
        if key in state and value.is_floating_point():
            diff += float((state[key].double() - value.double()).pow(2).sum())
            ref += float(value.double().pow(2).sum())
    return math.sqrt(diff / ref) if ref else math.nan


def init_paths(
    foundation: str | Path,
    featurizers: Sequence[tuple[str, str | Path]],
    probe: str | Path,
    evaluator: Evaluator,
    test_env: int,
    lambdas: Iterable[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
) -> list[dict[str, Any]]:
    """The inits themselves, before any target run: for each featurizer φ_k (an auxiliary fine-tuning),
    the target linear probe's accuracy along the path (1 − λ)φ_0 + λφ_k, head fixed to the probe.

    Shows whether the fine-tunings of one foundation stay in one basin as seen by the target task (a
    low barrier) and how far each moved (relative weight distance of the featurizer).

    Returns:
        One dict per featurizer: ``{"label", "relative_distance", "test_curve": [(λ, acc)],
        "test_barrier", "val_curve", "val_barrier"}`` (accuracies in [0, 1] on the test domain's ``in``
        split and on the training domains' ``out`` splits).
    """
    foundation_state = load_checkpoint(foundation)[0]
    probe_state = load_checkpoint(probe)[0]
    head = {k: v for k, v in probe_state.items() if k.startswith("classifier.")}
    start = {k: v for k, v in foundation_state.items() if k.startswith("featurizer.")} | head
    lams = [float(lam) for lam in lambdas]
    rows = []
    for label, path in featurizers:
        state = load_checkpoint(path)[0]
        end = {k: v for k, v in state.items() if k.startswith("featurizer.")} | head
        test_curve = lmc_curve(start, end, lambda s: evaluator.test_acc(s, test_env), lams)
        val_curve = lmc_curve(start, end, lambda s: evaluator.val_acc(s, [test_env]), lams)
        rows.append({
            "label": label,
            "relative_distance": relative_distance(
                {k: v for k, v in end.items() if k.startswith("featurizer.")},
                {k: v for k, v in start.items() if k.startswith("featurizer.")}),
            "test_curve": test_curve,
            "test_barrier": barrier_height(test_curve),
            "val_curve": val_curve,
            "val_barrier": barrier_height(val_curve),
        })
    return rows
