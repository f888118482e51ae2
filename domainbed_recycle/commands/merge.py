"""`drecycle merge`: merge fine-tuned models (run folders or checkpoint files) into one checkpoint.

The operators are those of `merging.py` and `averaging.py`, the same the recycling pipeline's merging
strategies use; here their hyper-parameters are given, not chosen on validation data. Fisher merging
needs data and stays a strategy (`Fisher` in a recycle spec).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from domainbed_recycle.errors import UserError

HELP = "Merge fine-tuned models (run folders or checkpoints) into one checkpoint: uniform, TIES, DARE, ..."

# method -> the flags it reads (recorded in the output's metadata); all but uniform also need --base (θ0)
METHODS = {"uniform": (), "task_arithmetic": ("lam",), "ties": ("lam", "keep"), "dare": ("lam", "p", "seed"),
           "dare_ties": ("lam", "keep", "p", "seed"), "model_stock": (), "wise_ft": ("alpha",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `drecycle merge`."""
    parser.add_argument("models", metavar="MODEL", nargs="+",
                        help="finished run folders (their best checkpoint) or checkpoint files")
    parser.add_argument("--method", required=True, choices=sorted(METHODS),
                        help="uniform: weight average; task_arithmetic: θ0 + λ Σ τ_k; ties: TIES-merging; dare / "
                             "dare_ties: DARE drop-and-rescale, then task arithmetic / TIES; model_stock; "
                             "wise_ft: (1 − α) θ0 + α θ_1")
    parser.add_argument("--base", default=None, metavar="MODEL",
                        help="θ0, the model every MODEL was fine-tuned from (all methods but uniform)")
    parser.add_argument("--out", required=True, metavar="OUT.safetensors", help="where to write the merged model")
    parser.add_argument("--lam", type=float, default=None,
                        help="scale of the merged task vector (default: 1/K for task_arithmetic and dare, the "
                             "uniform average; 1 for ties and dare_ties)")
    parser.add_argument("--keep", type=float, default=0.2, help="ties, dare_ties: fraction of each task vector kept")
    parser.add_argument("--p", type=float, default=0.5, help="dare, dare_ties: drop rate in [0, 1)")
    parser.add_argument("--seed", type=int, default=0, help="dare, dare_ties: seed of the drop masks")
    parser.add_argument("--alpha", type=float, default=0.5, help="wise_ft: weight of the fine-tuned model")
    parser.add_argument("--evaluate", action="store_true",
                        help="print the merged model's accuracies next to each member's (MODELs must be run folders "
                             "of one dataset and trial seed)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def _resolve(model: str) -> Path:
    """A run folder's model checkpoint, or the file itself (or the file of named weights)."""
    from domainbed_recycle import weights

    if weights.scheme(model):
        return weights.resolve(model)
    path = Path(model)
    if path.is_dir():
        from domainbed_recycle.rundir import RunDir

        checkpoint = RunDir(path).model_checkpoint
        if checkpoint is None:
            raise UserError(f"{path}: a folder without a model checkpoint (expected a finished run folder)")
        return checkpoint
    if path.exists() and not path.is_file():
        return weights.resolve(path)  # one line: a FIFO or a device, never opened
    if not path.is_file():
        raise UserError(f"{path}: no such run folder or checkpoint file")
    return path


def _load(model: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(checkpoint path, finite state dict, metadata) of a run folder or checkpoint file."""
    from domainbed_recycle.averaging import check_finite
    from domainbed_recycle.checkpoints import load_checkpoint

    path = _resolve(model)
    state, metadata = load_checkpoint(path)
    return path, dict(check_finite(state, str(path))), metadata


def merge(method: str, models: list[dict[str, Any]], base: dict[str, Any] | None, *, lam: float | None = None,
          keep: float = 0.2, p: float = 0.5, seed: int = 0, alpha: float = 0.5) -> dict[str, Any]:
    """The merged state dict of `models` (and `base`, θ0) by `method` (see `METHODS`)."""
    from domainbed_recycle import averaging, merging

    k = len(models)
    if method == "uniform":
        return averaging.uniform_average(models)
    assert base is not None
    if method == "wise_ft":
        if k != 1:
            raise UserError(f"wise_ft interpolates θ0 with ONE fine-tuned model, got {k}")
        return merging.wise_ft(base, models[0], alpha)
    if method == "model_stock":
        return merging.model_stock(base, models)[0]
    members = list(merging.dare(base, models, p, seed)) if method.startswith("dare") else models
    if method in ("task_arithmetic", "dare"):
        return merging.task_arithmetic(base, members, 1.0 / k if lam is None else lam)
    return merging.ties_merge(base, members, 1.0 if lam is None else lam, keep)


def run(args: argparse.Namespace) -> int:
    """Load, check, merge, write; optionally evaluate."""
    from domainbed_recycle.files import check_new_output

    out = check_new_output(args.out, args.force, "--out")
    if out.suffix != ".safetensors":
        raise UserError(f"--out must end in .safetensors, got {out.name}")
    if args.method != "uniform" and args.base is None:
        raise UserError(f"--method {args.method} needs --base (θ0, the model the MODELs were fine-tuned from)")
    loaded = [_load(model) for model in args.models]
    base = _load(args.base) if args.base else None
    from domainbed_recycle.checkpoints import check_compatible, save_checkpoint

    reference, reference_name = (base[1], args.base) if base else (loaded[0][1], args.models[0])
    for index, (model, (_, state, _)) in enumerate(zip(args.models, loaded, strict=True)):
        if base or index:  # every model against θ0, else against the first model
            check_compatible(reference, state, f"its weights (compared with {reference_name})", model)
    try:  # the operators check their own parameters (finite λ, keep in (0, 1], K >= 2 for Model Stock...)
        merged = merge(args.method, [state for _, state, _ in loaded], base[1] if base else None, lam=args.lam,
                       keep=args.keep, p=args.p, seed=args.seed, alpha=args.alpha)
    except ValueError as error:
        raise UserError(f"--method {args.method}: {error}") from None
    metadata = {key: value for key, value in loaded[0][2].items() if key != "format"}
    metadata["merge"] = {"method": args.method, "members": [str(path) for path, _, _ in loaded],
                         "base": str(base[0]) if base else None,
                         "params": {name: getattr(args, name) for name in METHODS[args.method]}}
    save_checkpoint(out, merged, metadata)
    print(f"wrote {out} ({args.method} of {len(loaded)} model(s))")
    if args.evaluate:
        _evaluate(args.models, merged)
    return 0


def _evaluate(models: list[str], merged: dict[str, Any]) -> None:
    """Test-domain accuracy of the merged model and of each member (run folders of one dataset and trial)."""
    from domainbed_recycle import analysis

    runs = [analysis.load_run(model) for model in models]
    evaluator = analysis.evaluator_for(runs)
    test_env = analysis.common_test_env(runs)
    print(f"test domain {test_env} accuracy:")
    for run in runs:
        print(f"  {100 * evaluator.test_acc(run.state, test_env):5.1f}  {run.name}")
    print(f"  {100 * evaluator.test_acc(merged, test_env):5.1f}  merged ({len(runs)} models)")
