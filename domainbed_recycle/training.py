"""One training run: `train(TrainConfig)` writes a DomainBed-style run folder.

The folder's contents and states are `rundir.RunDir`'s contract: `args.json`, `results.jsonl` (one
record per evaluation, flushed line by line), the best and last checkpoints, and `done`, written
last. `train` only writes into a fresh folder (missing, empty, or holding a launcher's out/err
logs): resetting a killed attempt is the launcher's job (`sweep.run_job.run_job`, `drecycle
train`), so a relaunched job never appends to a half-written log.

Why one module of ~360 lines: the training loop and what it alone needs (batch streams that
resume exactly, initialisation loading, the resume state); the run folder, evaluation and
algorithms are elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm import tqdm

from domainbed_recycle import checkpoints, hparams_registry, provenance, resume, weights
from domainbed_recycle.algorithms import get_algorithm_class
from domainbed_recycle.averaging import first_nonfinite
from domainbed_recycle.datasets import get_dataset, get_dataset_class
from domainbed_recycle.datasets.base import InMemoryDomain, MultipleDomainDataset
from domainbed_recycle.datasets.splits import make_splits
from domainbed_recycle.errors import RunDiverged, UserError
from domainbed_recycle.evaluation import accuracy, evaluate_splits
from domainbed_recycle.misc import seed_hash
from domainbed_recycle.networks import architecture, same_featurizer
from domainbed_recycle.rundir import RunDir, write_atomic
from domainbed_recycle.validation import Bounds, Fraction, Seed, Steps, Text, Threads, Unique, check_fields


@dataclass
class TrainConfig:
    """Arguments of one run (DomainBed's `train.py` flags plus initialisation)."""

    dataset: Text
    output_dir: Text
    algorithm: str = "ERM"
    test_envs: Annotated[list[Annotated[int, Bounds(0)]], Unique()] = field(default_factory=lambda: [0])
    data_dir: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)  # overrides of the registry's values
    hparams_seed: Seed = 0
    hparams_profile: str | None = None  # None: the dataset's ('small', 'small_finetune', 'resnet')
    trial_seed: Seed = 0
    seed: Seed = 0
    steps: Steps | None = None  # None: the dataset's N_STEPS
    checkpoint_freq: Steps | None = None  # None: the dataset's CHECKPOINT_FREQ
    holdout_fraction: Fraction = 0.2
    init: str | None = None  # checkpoint giving featurizer and classifier
    init_featurizer: str | None = None  # checkpoint giving the featurizer (overrides `init`'s)
    init_classifier: str | None = None  # checkpoint giving the classifier (overrides `init`'s)
    # Featurizer weights when neither `init` nor `init_featurizer` gives them: a weights reference (see
    # `weights`), "none" for a random featurizer on purpose, None for the network's default (ImageNet V1
    # for ResNets, as DomainBed; random for the small CNN).
    pretrained: str | None = None
    linear_probe: bool = False  # train the classifier only (featurizer frozen)
    init_label: str | None = None  # short name of the initialisation (e.g. 'phi0', 'aux:Glyphs')
    skip_model_save: bool = False
    progress: bool = True
    threads: Threads | None = None

    def to_args(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, where: str = "") -> None:
        """UserError (one line, each field named after `where`) for a value of the wrong type or out of
        its range (a training length, evaluation period, seed or thread count that cannot run), checked
        by the validator of the specs (`validation`), so a dry run refuses what a run would."""
        check_fields(self, where)
        if self.pretrained is not None and (self.init or self.init_featurizer):
            raise UserError("give the featurizer's weights once: --pretrained, or --init/--init_featurizer")

    def featurizer_weights(self, arch: str | None) -> str | None:
        """The weights reference the featurizer of network `arch` starts from; None: random."""
        explicit = self.init_featurizer or self.init
        if explicit:
            return explicit
        if weights.is_none(self.pretrained):
            return None
        return self.pretrained or weights.DEFAULT_WEIGHTS.get(arch or "")

    def network(self, dataset_class: Any) -> str | None:
        """The architecture the run builds before its profile is known: the `arch` override, else the
        dataset's profile's network (None when that profile is not one `hparams_registry` pairs)."""
        arch = self.hparams.get("arch")
        return arch if isinstance(arch, str) else hparams_registry.profile_network(dataset_class.HPARAMS_PROFILE)

    def profile(self, dataset_class: Any) -> str:
        """The hyper-parameter profile: the one named, else the network's, from scratch or pre-trained
        (`hparams_registry.default_profile`)."""
        if self.hparams_profile:
            return self.hparams_profile
        arch = self.hparams.get("arch")
        pretrained = self.featurizer_weights(self.network(dataset_class)) is not None
        return hparams_registry.default_profile(dataset_class.HPARAMS_PROFILE, arch if isinstance(arch, str) else None,
                                                pretrained)

    def stored_args(self, dataset_class: Any) -> dict[str, Any]:
        """The arguments a run of this config stores (in `args.json` and every record), without
        `environments`: `steps` and `checkpoint_freq` resolved to the dataset's defaults."""
        steps = self.steps if self.steps is not None else dataset_class.N_STEPS
        args = self.to_args() | {"steps": steps,
                                 "checkpoint_freq": self.checkpoint_freq or dataset_class.CHECKPOINT_FREQ}
        if self.pretrained is None and not (self.init or self.init_featurizer):  # the network's default
            args["pretrained"] = weights.DEFAULT_WEIGHTS.get(resolved_hparams(self, dataset_class)["arch"])
        return args


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class BatchStream:
    """Minibatches [B, ...] of one domain sampled with replacement, forever (DomainBed's InfiniteDataLoader).

    Resuming: for an in-memory domain the stream's position is its torch.Generator's state, so
    `state()` / `load_state()` continue the exact sequence. A DataLoader (real datasets: files,
    augmentation, worker processes) reads ahead of what was consumed, so its position cannot be
    saved: a resumed stream restarts with a generator seeded from (seed, step) — batches of the same
    distribution, not the ones the uninterrupted run would have drawn (and augmentation draws differ).
    """

    def __init__(self, split: Dataset, batch_size: int, seed: int, num_workers: int) -> None:
        self.split, self.batch_size, self.seed, self.num_workers = split, batch_size, seed, num_workers
        self.generator = torch.Generator().manual_seed(seed)
        self._loader: Iterator[tuple] | None = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple:
        if isinstance(self.split, InMemoryDomain):
            return self.split.batch(torch.randint(len(self.split), (self.batch_size,), generator=self.generator),
                                   augment=True)
        if self._loader is None:
            sampler = RandomSampler(self.split, replacement=True, num_samples=10**9, generator=self.generator)
            self._loader = iter(DataLoader(self.split, batch_size=self.batch_size, sampler=sampler,
                                           num_workers=self.num_workers, drop_last=True))
        return next(self._loader)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor, step: int) -> None:
        """Continue from `state()` (exact for in-memory domains; see the class docstring otherwise)."""
        if isinstance(self.split, InMemoryDomain):
            self.generator.set_state(state)
        else:
            self.generator.manual_seed(seed_hash(self.seed, "resume", step))
            self._loader = None


def resolved_hparams(config: TrainConfig, dataset_class: type | None = None) -> dict[str, Any]:
    """The hyper-parameters `config` trains with: the registry's draw for its algorithm, profile (the
    dataset's by default), hparams seed and trial seed, then its overrides. Reads no data."""
    profile = config.profile(dataset_class or get_dataset_class(config.dataset))
    return hparams_registry.get_hparams(config.algorithm, profile, config.hparams_seed, config.hparams,
                                        trial_seed=config.trial_seed)


def can_resume(config: TrainConfig, dataset_class: Any) -> bool:
    """True if `config.output_dir` holds an unfinished run of these same arguments with a resume state."""
    run = RunDir(config.output_dir)
    if not run.resume_file.is_file() or run.is_done or run.is_diverged:
        return False
    try:
        return not run.differing_args(config.stored_args(dataset_class))
    except UserError:  # args.json unreadable: not a run that can be continued
        return False


def _keep_records_until(run: RunDir, step: int) -> None:
    """Rewrite `results.jsonl` (atomically) with its records up to `step`: those a killed run wrote
    after its last resume state are written again, identically, by the resumed run."""
    kept = []
    text = run.results_file.read_text(encoding="utf-8") if run.results_file.is_file() else ""
    for line in text.splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by the kill
            break
        if record.get("step", step + 1) > step or not line.endswith("\n"):
            break
        kept.append(line)
    write_atomic(run.results_file, "".join(kept))


def _peak_memory_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def load_initialisation(algorithm: Any, config: TrainConfig) -> dict[str, Any]:
    """Load featurizer/classifier weights named by the config into `algorithm.network`.

    Returns a JSON-able description of what was loaded (kept in every record under `init`); weights
    that are not a checkpoint of this harness (a named or foreign file) are identified by file and
    SHA-256 under `<part>_weights`.
    """
    sources = init_sources(config, algorithm.arch["featurizer"])
    described: dict[str, Any] = {"label": config.init_label or ("random" if not any(sources.values()) else None)}
    for part, path in sources.items():
        if not path:
            continue
        state, meta = checkpoints.load_checkpoint(path)
        if not meta.get("arch"):  # not one of ours: say which file it was, byte for byte
            described[f"{part}_weights"] = identity = weights.identity(path)
            if identity.get("sha256_matches_name") is False:
                print(f"warning: {identity['file']} is not the file published as {path} (its SHA-256 does not "
                      f"start with the digits in its name)", file=sys.stderr)
        if meta.get("arch") and part == "featurizer" and not same_featurizer(meta["arch"], algorithm.arch):
            raise UserError(
                f"{path}: its featurizer architecture {meta['arch']} differs from this run's {algorithm.arch}"
            )
        featurizer_state, classifier_state = checkpoints.split_state(state)
        module = algorithm.network.featurizer if part == "featurizer" else algorithm.network.classifier
        wanted = featurizer_state if part == "featurizer" else classifier_state
        checkpoints.check_compatible(module.state_dict(), wanted, part, path)
        if part == "classifier" and meta.get("classes") and algorithm.arch.get("classes"):
            if list(meta["classes"]) != list(algorithm.arch["classes"]):
                raise UserError(f"{path}: its classifier's classes {meta['classes']} differ from this dataset's")
        module.load_state_dict(wanted)
        described[part] = str(path)
    return described


def init_sources(config: TrainConfig, arch: str | None) -> dict[str, str | None]:
    """{"featurizer": weights reference or None (random), "classifier": ...} for network `arch`."""
    return {"featurizer": config.featurizer_weights(arch), "classifier": config.init_classifier or config.init}


def train(config: TrainConfig, dataset: MultipleDomainDataset | None = None) -> Path:
    """Run one training job and write its folder; returns the folder.

    The folder must be fresh (`RunDir.is_fresh`): UserError otherwise, before anything is written.
    """
    config.check()
    run = RunDir(config.output_dir)
    dataset_class = type(dataset) if dataset is not None else get_dataset_class(config.dataset)
    resuming = can_resume(config, dataset_class)
    if not run.is_fresh and not resuming:
        raise UserError(f"{run.path}: train() writes only into a new or empty folder, or continues a run of "
                        f"the same arguments, and this one holds {run.state} run files (reset it first, as "
                        f"the launchers do)")
    if config.threads:
        torch.set_num_threads(config.threads)
    algorithm_class = get_algorithm_class(config.algorithm)  # fail fast on an unknown name
    hparams = resolved_hparams(config, dataset_class)
    n_envs = len(dataset_class.ENVIRONMENTS)
    bad = [e for e in config.test_envs if not 0 <= e < n_envs]
    if bad:
        raise UserError(
            f"test env {bad[0]} out of range: {config.dataset} has {n_envs} domains "
            f"(0..{n_envs - 1}: {', '.join(dataset_class.ENVIRONMENTS)})"
        )
    if dataset is None:
        dataset_class.check_available(config.data_dir)
    for ref in init_sources(config, hparams["arch"]).values():  # a missing file fails before data loads
        if ref:
            weights.resolve(ref)
    if dataset is None:  # real datasets read hparams['data_augmentation'] (training domains only)
        dataset = get_dataset(config.dataset, config.data_dir, config.test_envs, hparams)
    args = config.stored_args(dataset) | {"environments": list(dataset.ENVIRONMENTS)}
    steps, checkpoint_freq = args["steps"], args["checkpoint_freq"]
    device = "cuda" if torch.cuda.is_available() else "cpu"

    run.create()
    set_seeds(config.seed)

    in_splits, out_splits = make_splits(dataset, config.holdout_fraction, config.trial_seed)
    train_envs = [i for i in range(n_envs) if i not in config.test_envs]
    if not train_envs:
        raise UserError("every domain is a test domain: leave at least one domain for training")

    arch = architecture(dataset.input_shape, dataset.num_classes, hparams)
    arch["classes"] = list(dataset.classes)
    algorithm = algorithm_class(arch, len(train_envs), hparams)
    init_description = load_initialisation(algorithm, config)
    algorithm.linear_probe = config.linear_probe
    algorithm.to(device)

    batch_size = int(hparams["batch_size"])
    batch_iterators = [
        BatchStream(in_splits[i], batch_size, seed_hash(config.seed, "batches", i), dataset.N_WORKERS)
        for i in train_envs
    ]
    steps_per_epoch = min(len(in_splits[i]) / batch_size for i in train_envs)
    static = {
        "args": args,
        "hparams": hparams,
        "init": init_description,
        "versions": provenance.versions(),
        "git_commit": provenance.git_commit(),
        "device": device,
        "threads": torch.get_num_threads(),
    }
    metadata = {
        "arch": arch, "dataset": config.dataset, "environments": list(dataset.ENVIRONMENTS),
        "classes": list(dataset.classes), "test_envs": config.test_envs, "algorithm": config.algorithm,
        "hparams": hparams, "trial_seed": config.trial_seed, "hparams_seed": config.hparams_seed,
        "seed": config.seed, "init": init_description,
    }
    best_val = -1.0
    start_step = 0
    if resuming:  # continue the killed run: its arguments, provenance, state and records so far
        static = run.read_static()
        saved = resume.load(run.resume_file)
        algorithm.load_resume_state(saved["algorithm"])
        for stream, state in zip(batch_iterators, saved["batches"], strict=True):
            stream.load_state(state, saved["step"])
        resume.set_global_rng_state(saved["rng"])
        best_val, start_step = float(saved["best_val"]), int(saved["step"])
        _keep_records_until(run, start_step)
        print(f"resuming {run.path} at step {start_step} of {steps}", file=sys.stderr, flush=True)
    else:
        run.write_args(static)

    def save_resume_state(step: int) -> None:
        """What the run needs to continue after `step` steps (written after that step's evaluation)."""
        resume.save(run.resume_file, {
            "step": step, "best_val": best_val, "algorithm": algorithm.resume_state(),
            "batches": [stream.state() for stream in batch_iterators], "rng": resume.global_rng_state(),
        })

    step_times: list[float] = []
    losses: dict[str, list[float]] = {}

    bar = tqdm(range(start_step, steps), initial=start_step, total=steps,
               desc=f"{config.algorithm} {config.dataset} test={config.test_envs}",
               disable=not config.progress, file=sys.stderr, leave=False)
    log = run.open_records()

    def diverge(step: int, reason: str) -> None:
        """End the run as `diverged` (marker written atomically; no `done`, never resumed)."""
        log.close()
        run.mark_diverged(step, reason)
        run.resume_file.unlink(missing_ok=True)
        raise RunDiverged(f"{run.path}: the run {run.describe_divergence()}; it is marked diverged and "
                          f"left out of results (lower the learning rate, or check the data)")

    def log_evaluation(step: int, last: bool) -> float:
        """Evaluate every split, append one flushed record, keep the best (and, if `last`, the final)
        checkpoint; returns the training-domain validation accuracy."""
        nonlocal best_val
        algorithm.eval()
        bad_weight = first_nonfinite(algorithm.eval_state_dict())
        if bad_weight is not None:
            diverge(step, f"weight '{bad_weight}' is not finite")
        record: dict[str, Any] = {"step": step, "epoch": step / steps_per_epoch}
        record.update({key: float(np.mean(values)) for key, values in losses.items()})
        record["step_time"] = float(np.mean(step_times)) if step_times else 0.0
        record.update(evaluate_splits(algorithm.predict, in_splits, out_splits, device, dataset.N_WORKERS))
        iterate_predict = getattr(algorithm, "iterate_predict", None)
        if iterate_predict is not None:  # e.g. SWAD: the current iterate's accuracy drives its window
            for i in train_envs:
                record[f"env{i}_out_acc_iterate"] = accuracy(iterate_predict, out_splits[i], device)
        record["mem_gb"] = _peak_memory_gb(device)
        val = float(np.mean([record[f"env{i}_out_acc"] for i in train_envs]))
        record.update(static)
        log.append(record)
        bar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}", val=f"{val:.3f}")
        # Checkpoints are written before `end_of_evaluation`, which may change the evaluated model
        # (SWAD's window), so each file holds exactly the weights its record scored.
        if not config.skip_model_save:
            if val > best_val:
                best_val = val
                checkpoints.save_checkpoint(
                    run.best_checkpoint, algorithm.eval_state_dict(),
                    metadata | {"step": step, "val_acc": val},
                )
            if last:
                checkpoints.save_checkpoint(
                    run.last_checkpoint, algorithm.eval_state_dict(),
                    metadata | {"step": step, "val_acc": val},
                )
        algorithm.end_of_evaluation(record)
        return val

    with log:  # steps >= 1 (`TrainConfig.check`)
        for step in bar:
            start = time.time()
            minibatches = [(x.to(device), y.to(device)) for x, y in (next(it) for it in batch_iterators)]
            for key, value in algorithm.train_step(minibatches).items():
                if not math.isfinite(value):
                    diverge(step + 1, f"{key} = {value}")
                losses.setdefault(key, []).append(value)
            step_times.append(time.time() - start)
            if (step + 1) % checkpoint_freq != 0 and step != steps - 1:
                continue
            log_evaluation(step + 1, last=step == steps - 1)
            step_times, losses = [], {}
            if step != steps - 1:
                save_resume_state(step + 1)
    run.mark_done()
    run.resume_file.unlink(missing_ok=True)  # done: nothing left to continue
    return run.path
