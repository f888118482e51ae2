"""One training run: `train(TrainConfig)` writes a DomainBed-style run folder.

The folder's contents and states are `rundir.RunDir`'s contract: `args.json`, `results.jsonl` (one
record per evaluation, flushed line by line), the best and last checkpoints, and `done`, written
last. `train` only writes into a fresh folder (missing, empty, or holding a launcher's out/err
logs): resetting a killed attempt is the launcher's job (`sweep.run_job.run_job`, `drecycle
train`), so a relaunched job never appends to a half-written log.

Why one module of ~610 lines: the training loop and what it alone needs (batch streams that
resume exactly, initialisation loading, the resume state, which speed switches this machine can
honour and how many loader workers a run gets); the run folder, evaluation, batch loading and
algorithms are elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from domainbed_recycle import checkpoints, hparams_registry, performance, provenance, resume, weights
from domainbed_recycle.algorithms import get_algorithm_class
from domainbed_recycle.averaging import first_nonfinite
from domainbed_recycle.datasets import get_dataset, get_dataset_class
from domainbed_recycle.datasets.base import InMemoryDomain, MultipleDomainDataset
from domainbed_recycle.datasets.loaders import EVAL_BATCH_SIZE, DomainBedLoader
from domainbed_recycle.datasets.loading import LoaderSettings, StepBatches, StepStream
from domainbed_recycle.datasets.splits import make_splits, split_domain, split_seed
from domainbed_recycle.errors import RunDiverged, UserError
from domainbed_recycle.evaluation import Inference, SplitEvaluator, accuracy_of_batches
from domainbed_recycle.misc import available_cores, seed_hash
from domainbed_recycle.networks import architecture, same_featurizer
from domainbed_recycle.rundir import RunDir, step_checkpoint, write_atomic
from domainbed_recycle.validation import Bounds, Fraction, Seed, Steps, Text, Threads, Unique, check_fields

TASKS = ("domain_generalization", "domain_adaptation")  # DomainBed's --task


@dataclass
class TrainConfig:
    """Arguments of one run (DomainBed's `train.py` flags plus initialisation and speed switches).

    The speed switches (`precision` ... `prefetch_factor`, see `performance`) default to DomainBed's
    behaviour; at their default they are left out of the stored arguments (`to_args`) and of job ids.
    """

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
    # DomainBed's train.py flags, with its meanings and defaults:
    task: str = "domain_generalization"  # or "domain_adaptation": test domains' unlabeled splits are trained on
    # part of each test domain's `in` split given unlabeled to the algorithm
    uda_holdout_fraction: Annotated[float, Bounds(0, 1, high_open=True)] = 0.0
    save_model_every_checkpoint: bool = False  # also write model_step<N>.safetensors at every evaluation
    precision: str = "fp32"  # "bf16" / "fp16": autocast (fp16 with a gradient scaler)
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    # None: sized to the node (see `resolve_loader`); each worker is a process: bounded as n_workers
    loader_workers: Annotated[int, Bounds(0, limit="workers")] | None = None
    pin_memory: bool | None = None
    persistent_workers: bool | None = None
    prefetch_factor: Annotated[int, Bounds(1, 1024)] | None = None  # batches held ahead by each worker

    def to_args(self) -> dict[str, Any]:
        """The arguments as a dict, without the speed switches left at their default."""
        return performance.drop_defaults(dataclasses.asdict(self))

    def switches(self) -> dict[str, Any]:
        """{name: value} of every speed switch."""
        return {name: getattr(self, name) for name in performance.DEFAULTS}

    def check(self, where: str = "") -> None:
        """UserError (one line, each field named after `where`) for a value of the wrong type or out of
        its range (a training length, evaluation period, seed or thread count that cannot run), checked
        by the validator of the specs (`validation`), so a dry run refuses what a run would."""
        check_fields(self, where)
        if self.pretrained is not None and (self.init or self.init_featurizer):
            raise UserError("give the featurizer's weights once: --pretrained, or --init/--init_featurizer")
        if self.task not in TASKS:
            raise UserError(f"{where}task must be one of {', '.join(TASKS)}, got {self.task!r}")
        performance.check(self.switches(), f"{where}training switches")

    @classmethod
    def field_defaults(cls) -> dict[str, Any]:
        """Every field's default value (a run folder written before a field existed ran with it)."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    def featurizer_weights(self, arch: str | None) -> str | None:
        """The weights reference the featurizer of network `arch` starts from; None: random."""
        explicit = self.init_featurizer or self.init
        if explicit:
            return explicit
        if weights.is_none(self.pretrained):
            return None
        return self.pretrained or weights.DEFAULT_WEIGHTS.get(arch or "")

    def profile(self, dataset_class: Any) -> str:
        """The hyper-parameter profile: the one named, else the network's (the `arch` override, else the
        dataset's), from scratch or pre-trained (`hparams_registry.default_profile`)."""
        if self.hparams_profile:
            return self.hparams_profile
        arch = self.hparams.get("arch") if isinstance(self.hparams.get("arch"), str) else None
        network = arch or hparams_registry.profile_network(dataset_class.HPARAMS_PROFILE)
        pretrained = self.featurizer_weights(network) is not None
        return hparams_registry.default_profile(dataset_class.HPARAMS_PROFILE, arch, pretrained)

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
    """Minibatches [B, ...] of one in-memory domain sampled with replacement, forever (DomainBed's
    InfiniteDataLoader), drawn in the training process: the built-ins' streams.

    Resuming: the stream's position is its torch.Generator's state, so `state()` / `load_state()`
    continue the exact sequence. Domains whose batches are worth loader workers (files, large cached
    images) use `datasets.loading.StepStream` instead, which resumes exactly too.
    """

    def __init__(self, split: InMemoryDomain, batch_size: int, seed: int) -> None:
        self.split, self.batch_size = split, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple:
        return self.split.batch(torch.randint(len(self.split), (self.batch_size,), generator=self.generator),
                                augment=True)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def close(self) -> None:
        """Nothing to stop (same interface as `StepStream`)."""


def heavy_batches(split: Dataset) -> bool:
    """Whether a split's batches are built by loader workers: files, or in-memory images that say so."""
    return not isinstance(split, InMemoryDomain) or split.HEAVY_BATCHES


def resolve_loader(config: TrainConfig, dataset: MultipleDomainDataset, device: str) -> LoaderSettings:
    """The loader settings of a run: the config's, where it sets them, else sized to the node.

    Workers: on a GPU, for a dataset of heavy batches, the cores this run may use (`threads`, else every
    core) less one for the training process; on CPU, the dataset's `N_WORKERS` (as before the switches).
    Pinned memory on a GPU; workers kept between evaluations when there are any.
    """
    heavy = any(heavy_batches(split) for split in dataset.datasets)
    workers = config.loader_workers
    if workers is None:
        workers = max(0, (config.threads or available_cores()) - 1) if device == "cuda" and heavy else dataset.N_WORKERS
    pin = config.pin_memory if config.pin_memory is not None else device == "cuda"
    persistent = config.persistent_workers if config.persistent_workers is not None else workers > 0
    return LoaderSettings(workers, pin, persistent and workers > 0, config.prefetch_factor)


def compile_unavailable(device: str) -> str | None:
    """Why torch.compile cannot run here (one line), or None: inductor needs triton on a GPU and a C++
    compiler (`$CXX`, else g++) on CPU."""
    if device == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "compile on a GPU needs triton (pip install triton), which is not installed"
        return None
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        return f"compile on CPU needs a C++ compiler, and {compiler} is not found (install g++, or set CXX)"
    return None


def check_available(config: TrainConfig, device: str) -> None:
    """UserError (one line) for a switch this machine cannot honour (before anything is written)."""
    gpu = device == "cuda"
    if config.precision == "fp16" and not gpu:
        raise UserError("precision fp16 needs a CUDA GPU (fp16 kernels and the gradient scaler); on CPU use bf16")
    if config.precision == "bf16" and gpu and not torch.cuda.is_bf16_supported():
        raise UserError(f"precision bf16: this GPU ({torch.cuda.get_device_name()}) has no bf16 support; "
                        f"use fp16 or fp32")
    for name in ("cudnn_benchmark", "pin_memory"):
        if getattr(config, name) and not gpu:
            raise UserError(f"{name} needs a CUDA GPU (none here): leave it out on CPU")
    if config.compile:
        reason = compile_unavailable(device)
        if reason:
            raise UserError(reason)


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
        return not run.differing_args(config.stored_args(dataset_class), TrainConfig.field_defaults())
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


def _unlabeled_splits(dataset: MultipleDomainDataset, in_splits: list[Dataset], config: TrainConfig,
                      domainbed: bool) -> list[Dataset]:
    """DomainBed's unlabeled splits: each test domain's `in` split is split again (seeded as its
    in/out split) into `uda_holdout_fraction` unlabeled images and the rest, which replaces it in
    `in_splits`. Returns the non-empty unlabeled splits, in domain order.

    DomainBed re-splits every test domain even with a fraction of 0 (same images, another order, which
    its evaluation batches follow); the built-ins leave their splits as they are unless asked.
    """
    if not domainbed and not config.uda_holdout_fraction:
        return []
    unlabeled = []
    for env in sorted(set(config.test_envs)):
        seed = split_seed(dataset, config.trial_seed, env)
        in_splits[env], part = split_domain(in_splits[env], config.uda_holdout_fraction, seed)
        if len(part):
            unlabeled.append(part)
    return unlabeled


def _peak_memory_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


@contextlib.contextmanager
def _closing(streams: list[Any], evaluator: SplitEvaluator) -> Iterator[None]:
    """Stop the loader workers of a run when it ends, however it ends."""
    try:
        yield
    finally:
        for stream in streams:
            stream.close()
        evaluator.close()


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
    device = "cuda" if torch.cuda.is_available() else "cpu"
    check_available(config, device)
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
        dataset = get_dataset(config.dataset, config.data_dir, config.test_envs, hparams, seed=config.seed)
    elif getattr(dataset, "SHUFFLED_BY_SEED", False) and dataset.seed != config.seed:
        raise ValueError(f"{config.dataset} was built with seed {dataset.seed}, the run has seed {config.seed}")
    domainbed = bool(getattr(dataset, "DOMAINBED_PROTOCOL", False))
    args = config.stored_args(dataset) | {"environments": list(dataset.ENVIRONMENTS)}
    if getattr(dataset, "data_source", None):  # which files a dataset read (DomainBed's MNIST: 70k or 10k digits)
        args["data_source"] = dataset.data_source
    steps, checkpoint_freq = args["steps"], args["checkpoint_freq"]
    if device == "cuda":  # DomainBed's train.py: deterministic cuDNN, unless asked to autotune
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
        torch.backends.cudnn.deterministic = not config.cudnn_benchmark
    loader = resolve_loader(config, dataset, device)
    inference = Inference(device, config.precision, config.channels_last, loader)

    run.create()
    set_seeds(config.seed)
    if domainbed and getattr(dataset, "generator", None) is not None:
        # DomainBed builds its MNIST datasets right after seeding, from torch's global generator: the
        # global generator continues from where the dataset's (seeded alike) stopped.
        torch.default_generator.set_state(dataset.generator.get_state())

    in_splits, out_splits = make_splits(dataset, config.holdout_fraction, config.trial_seed)
    uda_splits = _unlabeled_splits(dataset, in_splits, config, domainbed)
    if config.task == "domain_adaptation" and not uda_splits:
        raise UserError("--task domain_adaptation needs unlabeled test-domain images: set --uda_holdout_fraction > 0")
    train_envs = [i for i in range(n_envs) if i not in config.test_envs]
    if not train_envs:
        raise UserError("every domain is a test domain: leave at least one domain for training")

    batch_size = int(hparams["batch_size"])
    # Loaders before the network, as DomainBed makes them: their draws from torch's global generator
    # come before the initialisation's.
    eval_splits = {**{f"env{i}_in": s for i, s in enumerate(in_splits)},
                   **{f"env{i}_out": s for i, s in enumerate(out_splits)},
                   # DomainBed numbers the unlabeled splits 0, 1, ... in test-domain order, not by domain
                   **{f"env{k}_uda": s for k, s in enumerate(uda_splits)}}
    eval_loaders: dict[str, DomainBedLoader] = {}
    adapting = config.task == "domain_adaptation"
    uda_seeds = [seed_hash(config.seed, "unlabeled", k) for k in range(len(uda_splits))]
    uda_iterators: list[Any] = []
    step_stream: StepStream | None = None
    if domainbed and all(isinstance(s, InMemoryDomain) for s in eval_splits.values()):
        batch_iterators: list[Any] = [DomainBedLoader(in_splits[i], batch_size, dataset.N_WORKERS, training=True)
                                      for i in train_envs]
        uda_iterators = [DomainBedLoader(s, batch_size, dataset.N_WORKERS, training=True) for s in uda_splits]
        eval_loaders = {name: DomainBedLoader(s, EVAL_BATCH_SIZE, dataset.N_WORKERS, training=False)
                        for name, s in eval_splits.items()}
    elif any(heavy_batches(s) for s in in_splits):  # one keyed stream per step, built by loader workers
        labeled = [in_splits[i] for i in train_envs]
        seeds = [seed_hash(config.seed, "batches", i) for i in train_envs]
        if adapting:  # the unlabeled batches of a step come with its labeled ones
            labeled, seeds = labeled + uda_splits, seeds + uda_seeds
        step_stream = StepStream(StepBatches(labeled, batch_size, seeds), loader)
        batch_iterators = [step_stream]
    else:  # the built-ins: one generator per domain, in this process
        batch_iterators = [BatchStream(in_splits[i], batch_size, seed_hash(config.seed, "batches", i))
                           for i in train_envs]
        uda_iterators = [BatchStream(s, batch_size, seed) for s, seed in zip(uda_splits, uda_seeds, strict=True)]

    def draw() -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor] | None]:
        """The next step's batches on the device: ([(x [B, C, H, W], y [B]) per training domain],
        [x [B, C, H, W] per unlabeled split] when adapting, else None)."""
        if step_stream is not None:
            batches = next(step_stream)
            labeled, unlabeled = batches[:len(train_envs)], batches[len(train_envs):]
        else:
            labeled = [next(it) for it in batch_iterators]
            unlabeled = [next(it) for it in uda_iterators] if adapting else []
        minibatches = [(inference.to_device(x), y.to(device, non_blocking=loader.pin_memory)) for x, y in labeled]
        return minibatches, ([inference.to_device(x) for x, _ in unlabeled] if adapting else None)

    evaluator = SplitEvaluator(eval_splits, inference)

    arch = architecture(dataset.input_shape, dataset.num_classes, hparams)
    arch["classes"] = list(dataset.classes)
    algorithm = algorithm_class(arch, len(train_envs), hparams)
    init_description = load_initialisation(algorithm, config)
    algorithm.linear_probe = config.linear_probe
    algorithm.to(device)
    if config.channels_last:  # 4-D weights (convolutions) in NHWC, as the inputs (`Inference.to_device`)
        algorithm.to(memory_format=torch.channels_last)
    algorithm.set_precision(device, config.precision)
    if config.compile:  # in place: state dict keys unchanged
        algorithm.network.compile()

    if domainbed:  # DomainBed: the shortest `in` split of all domains, test domains included
        steps_per_epoch = min(len(s) / batch_size for s in in_splits)
    else:
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
    streams = batch_iterators + uda_iterators
    best_val = -1.0
    start_step = 0
    if resuming:  # continue the killed run: its arguments, provenance, state and records so far
        static = run.read_static()
        saved = resume.load(run.resume_file)
        algorithm.load_resume_state(saved["algorithm"])
        if step_stream is not None:  # keyed: the next batch is the saved step's
            step_stream.load_state(torch.tensor(saved["step"]))
        else:
            for stream, state in zip(streams, saved["batches"], strict=True):
                stream.load_state(state)
        for eval_loader, state in zip(eval_loaders.values(), saved.get("eval_batches", []), strict=True):
            eval_loader.load_state(state)
        resume.set_global_rng_state(saved["rng"])
        best_val, start_step = float(saved["best_val"]), int(saved["step"])
        # DomainBed's records are numbered by loop index: the last kept one is start_step - 1
        _keep_records_until(run, start_step - 1 if domainbed else start_step)
        print(f"resuming {run.path} at step {start_step} of {steps}", file=sys.stderr, flush=True)
    else:
        run.write_args(static)

    def save_resume_state(step: int) -> None:
        """What the run needs to continue after `step` steps (written after that step's evaluation)."""
        resume.save(run.resume_file, {
            "step": step, "best_val": best_val, "algorithm": algorithm.resume_state(),
            "batches": [stream.state() for stream in streams],
            "eval_batches": [loader.state() for loader in eval_loaders.values()],
            "rng": resume.global_rng_state(),
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
        models, only = {"": algorithm.predict}, {}
        if eval_loaders:  # DomainBed's evaluation batches: one shuffled pass of 64s per split, in its order
            models = {}
            record.update({f"{name}_acc": accuracy_of_batches(algorithm.predict, eval_loader.one_pass(), device)
                           for name, eval_loader in eval_loaders.items()})
        iterate_predict = getattr(algorithm, "iterate_predict", None)
        if iterate_predict is not None:  # e.g. SWAD: the current iterate's accuracy drives its window
            models["_iterate"] = iterate_predict
            only["_iterate"] = [f"env{i}_out" for i in train_envs]
        for suffix, accs in (evaluator.accuracies(models, only) if models else {}).items():  # one pass per split
            record.update({f"{name}_acc{suffix}": acc for name, acc in accs.items()})
        record["mem_gb"] = _peak_memory_gb(device)
        val = float(np.mean([record[f"env{i}_out_acc"] for i in train_envs]))
        record.update(static)
        log.append(record)
        bar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}", val=f"{val:.3f}")
        # Checkpoints are written before `end_of_evaluation`, which may change the evaluated model
        # (SWAD's window), so each file holds exactly the weights its record scored.
        if not config.skip_model_save:
            checkpoint_meta = metadata | {"step": step, "val_acc": val}
            if val > best_val:
                best_val = val
                checkpoints.save_checkpoint(run.best_checkpoint, algorithm.eval_state_dict(), checkpoint_meta)
            if last:
                checkpoints.save_checkpoint(run.last_checkpoint, algorithm.eval_state_dict(), checkpoint_meta)
            if config.save_model_every_checkpoint:
                checkpoints.save_checkpoint(run.path / step_checkpoint(step), algorithm.eval_state_dict(),
                                            checkpoint_meta)
        algorithm.end_of_evaluation(record)
        return val

    with log, _closing(streams, evaluator):  # steps >= 1 (`TrainConfig.check`)
        for step in bar:
            start = time.time()
            minibatches, unlabeled = draw()
            for key, value in algorithm.train_step(minibatches, unlabeled).items():
                if not math.isfinite(value):
                    diverge(step + 1, f"{key} = {value}")
                losses.setdefault(key, []).append(value)
            step_times.append(time.time() - start)
            last = step == steps - 1
            if domainbed:  # DomainBed: after the updates at loop indices 0, f, 2f, ... and the last
                if step % checkpoint_freq != 0 and not last:
                    continue
                log_evaluation(step, last)
            else:  # after every f updates and the last; `step` = updates done
                if (step + 1) % checkpoint_freq != 0 and not last:
                    continue
                log_evaluation(step + 1, last)
            step_times, losses = [], {}
            if not last:
                save_resume_state(step + 1)
    run.mark_done()
    run.resume_file.unlink(missing_ok=True)  # done: nothing left to continue
    return run.path
