"""`drecycle train`: one leave-one-domain-out run (DomainBed's train.py flags, plus --init).

`--output_dir` rules (the run folder's, see `rundir`): a missing or empty folder is trained into; a
killed attempt of the same arguments with a resume state is continued; another killed attempt is
reset (only the harness's files are deleted) and trained again; a
finished run with the same arguments is shown, not retrained; a finished run with other arguments,
or a folder holding anything the harness did not write, is refused with one line. A run whose loss or
weights stop being finite ends as `diverged` (one line, non-zero exit, no `done`), and stays so.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING, Any

from domainbed_recycle import performance
from domainbed_recycle.errors import UserError, os_error_line
from domainbed_recycle.rundir import RunDir

if TYPE_CHECKING:  # training imports torch; `drecycle --help` must not
    from domainbed_recycle.training import TrainConfig

HELP = "Train one run (every flag of DomainBed's train.py, same meaning) and write its records, checkpoints and done."


EPILOG = """Where this differs from DomainBed's train.py (README, "Coming from DomainBed"): the built-in
CPU datasets (RotatedDigits, ColoredDigits, TextureMNIST, ...) record after every --checkpoint_freq
updates with step = updates done, DomainBed's datasets at its loop indices 0, f, 2f, ... and the last;
checkpoints are safetensors (model.safetensors, model_best.safetensors), not model.pkl; an --output_dir
holding another run is refused, a killed run continues; --hparams names are checked; --steps 0
evaluates the initial model once (DomainBed: the default number of steps)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    # DomainBed's train.py flags first, with its meanings and defaults.
    parser.add_argument("--data_dir", default=None,
                        help="folder of real datasets and of torchvision's MNIST files (MNIST/raw); DomainBed's "
                             "MNIST datasets read the offline 10k digits without it, the built-ins need none")
    parser.add_argument("--dataset", default="RotatedMNIST",
                        help="dataset name (see `drecycle data list`) or folder:PATH (default: RotatedMNIST, "
                             "DomainBed's)")
    parser.add_argument("--algorithm", default="ERM")
    parser.add_argument("--task", default="domain_generalization", choices=["domain_generalization",
                                                                             "domain_adaptation"],
                        help="domain_adaptation: each test domain's unlabeled split (--uda_holdout_fraction) is "
                             "given to the algorithm at every step")
    parser.add_argument("--hparams", default=None, help="JSON dict of hyper-parameter overrides")
    parser.add_argument("--hparams_seed", type=int, default=0, help="0 = defaults, else a random draw")
    parser.add_argument("--trial_seed", type=int, default=0, help="seeds the in/out split of each domain")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds initialisation and minibatch sampling (and the deal of DomainBed's MNIST "
                             "datasets' digits into domains)")
    parser.add_argument("--steps", type=int, default=None, help="default: the dataset's N_STEPS")
    parser.add_argument("--checkpoint_freq", type=int, default=None, help="evaluate every N steps")
    parser.add_argument("--test_envs", type=int, nargs="*", default=[0], help="indices of held-out domains")
    parser.add_argument("--output_dir", default="train_output")
    parser.add_argument("--holdout_fraction", type=float, default=0.2)
    parser.add_argument("--uda_holdout_fraction", type=float, default=0.0,
                        help="part of each test domain's `in` split held out unlabeled (for domain_adaptation)")
    parser.add_argument("--skip_model_save", action="store_true")
    parser.add_argument("--save_model_every_checkpoint", action="store_true",
                        help="also write model_step<N>.safetensors at every evaluation (DomainBed: "
                             "model_step<N>.pkl)")
    # This project's own.
    parser.add_argument("--hparams_profile", default=None,
                        help="hyper-parameter ranges: small, small_finetune, resnet, resnet_scratch, mnist "
                             "(default: the network's, from scratch or pre-trained)")
    parser.add_argument("--init", default=None, help="checkpoint to start from (featurizer + classifier)")
    parser.add_argument("--init_featurizer", default=None, help="checkpoint giving the featurizer only")
    parser.add_argument("--init_classifier", default=None, help="checkpoint giving the classifier only")
    parser.add_argument("--pretrained", default=None, metavar="WEIGHTS",
                        help="featurizer weights: a file (safetensors, or a torchvision/timm .pth state dict), "
                             "a name read from its library's cache (torchvision:ResNet50_Weights.IMAGENET1K_V1, "
                             "timm:resnet50.a1_in1k, hf:REPO), or 'none' for a random featurizer; default: the "
                             "network's (ImageNet V1 for ResNets, as DomainBed; random for the small CNN)")
    parser.add_argument("--linear_probe", action="store_true", help="train the classifier only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    add_performance_arguments(parser)


def add_performance_arguments(parser: argparse.ArgumentParser) -> None:
    """The speed switches as flags (`performance`), every default None: a flag left out sets nothing."""
    group = parser.add_argument_group("speed switches (defaults: DomainBed's fp32 training, loaders sized to the node)")
    group.add_argument("--precision", default=None, choices=performance.PRECISIONS, help=performance.HELP["precision"])
    for name in ("channels_last", "compile", "cudnn_benchmark"):
        group.add_argument(f"--{name}", action="store_true", default=None, help=performance.HELP[name])
    for name in ("loader_workers", "prefetch_factor"):
        group.add_argument(f"--{name}", type=int, default=None, help=performance.HELP[name])
    for name in ("pin_memory", "persistent_workers"):
        group.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None,
                           help=performance.HELP[name])


def performance_values(args: argparse.Namespace) -> dict[str, Any]:
    """{switch: value} of the speed-switch flags given (checked: UserError naming the flag's problem)."""
    values = {name: getattr(args, name) for name in performance.DEFAULTS if getattr(args, name) is not None}
    return performance.check(values, "speed switches")


def run(args: argparse.Namespace) -> int:
    from domainbed_recycle.hparams_registry import parse_overrides

    overrides = parse_overrides(args.hparams)

    from domainbed_recycle.training import TrainConfig

    config = TrainConfig(
        dataset=args.dataset, output_dir=args.output_dir, algorithm=args.algorithm, test_envs=args.test_envs,
        data_dir=args.data_dir, hparams=overrides, hparams_seed=args.hparams_seed,
        hparams_profile=args.hparams_profile, trial_seed=args.trial_seed,
        seed=args.seed, steps=args.steps, checkpoint_freq=args.checkpoint_freq,
        holdout_fraction=args.holdout_fraction, init=args.init, init_featurizer=args.init_featurizer,
        pretrained=args.pretrained,
        init_classifier=args.init_classifier, linear_probe=args.linear_probe, threads=args.threads,
        skip_model_save=args.skip_model_save, progress=not args.no_progress, task=args.task,
        uda_holdout_fraction=args.uda_holdout_fraction, save_model_every_checkpoint=args.save_model_every_checkpoint,
        **performance_values(args),
    )
    config.check()
    run = RunDir(config.output_dir)
    if run.is_done:
        _check_same_run(run, config)
        print(f"already done: {run.path} holds a finished run with these arguments (its result below)")
    elif run.is_diverged:
        _check_same_run(run, config)
        raise UserError(f"{run.path}: this run already {run.describe_divergence()}; training it again would "
                        f"diverge again: change its hyper-parameters (new --output_dir) or delete {run.path}")
    else:
        _train_locked(run, config)
    _print_summary(run)
    return 0


def _train_locked(run: RunDir, config: TrainConfig) -> None:
    """Train into `run` holding its lock (a second `drecycle train` of the folder is refused)."""
    from domainbed_recycle.datasets import get_dataset_class
    from domainbed_recycle.locks import Lock
    from domainbed_recycle.training import can_resume, train

    run.check_is_run()  # a folder holding anything else is refused before anything is written
    created = not run.path.exists()
    run.create()
    try:
        with Lock(run.lock_file, f"run folder {run.path}"):
            if not can_resume(config, get_dataset_class(config.dataset)):
                run.reset()  # a killed attempt of this harness that cannot be continued
            train(config)
    except OSError as error:  # e.g. disk full while writing, where the error may not name the file
        raise UserError(os_error_line(error, run.path)) from None
    finally:
        if created:  # refused before writing anything: leave no folder behind
            with contextlib.suppress(OSError):
                run.remove_if_empty()


def _check_same_run(run: RunDir, config: TrainConfig) -> None:
    """UserError (one line) unless the finished run in `run` was trained with `config`'s arguments."""
    from domainbed_recycle.datasets import get_dataset_class
    from domainbed_recycle.training import TrainConfig

    run.check_is_run()
    wanted = config.stored_args(get_dataset_class(config.dataset))
    differing = run.differing_args(wanted, TrainConfig.field_defaults())
    if differing:
        stored = run.args
        shown = ", ".join(f"{key}={stored.get(key)!r} there, {wanted.get(key)!r} now" for key in differing[:3])
        raise UserError(
            f"{run.path} already holds a finished run with other arguments ({shown}); to train this one, "
            f"pass a new --output_dir, or delete {run.path} first"
        )


def _print_summary(run: RunDir) -> None:
    """Last record's accuracies, as a small table (test domains marked)."""
    from tabulate import tabulate

    records = run.read_records()
    if not records:
        raise UserError(f"{run.results_file}: the finished run logged no record")
    last = records[-1]
    envs = last["args"]["environments"]
    test_envs = set(last["args"]["test_envs"])
    rows = [
        [f"{i}: {name}" + (" (test)" if i in test_envs else ""),
         f"{100 * last[f'env{i}_in_acc']:.1f}", f"{100 * last[f'env{i}_out_acc']:.1f}"]
        for i, name in enumerate(envs)
    ]
    print(tabulate(rows, headers=["domain", "in acc %", "out acc %"]))
    batch = last["hparams"]["batch_size"]
    speed = (f"{1 / last['step_time']:.1f} steps/s (a step = {batch} images from each of "
             f"{len(envs) - len(test_envs)} training domains)" if last["step_time"] > 0 else "no training step")
    print(f"step {last['step']}, {speed}; run folder: {run.path}")
