"""`drecycle merge`: merge fine-tuned models (run folders, checkpoint files, named weights) into one checkpoint.

The operators are those registered in `merge_ops` (one file each), the same the recycling pipeline's
merging strategies use; here their parameters are given, on the command line or in a merge config
(`--config`, mergekit's shape), not chosen on validation data. Fisher merging needs data and stays a
strategy (`Fisher` in a recycle spec). The options of each operator's parameters are generated from its
declaration, so a new operator needs no change here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from domainbed_recycle import merge_ops
from domainbed_recycle.errors import UserError
from domainbed_recycle.merge_ops import MergeOp, Param
from domainbed_recycle.merge_ops.config import MergeJob
from domainbed_recycle.weights import HARNESS, KEY_FORMATS

HELP = "Merge fine-tuned models (run folders, checkpoints) into one checkpoint: uniform, TIES, DARE, SLERP, ..."
# what a merged file keeps of its members' metadata, when every member has the same value: what the
# model is and which data it must not be tested on (never a member's own training fields: step, val_acc, seed)
SHARED_FIELDS = ("arch", "classes", "dataset", "environments", "test_envs", "trial_seed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `drecycle merge`: fixed ones, then one per operator parameter (from `merge_ops`)."""
    ops = merge_ops.operators()
    parser.add_argument("models", metavar="MODEL", nargs="*",
                        help="finished run folders (their best checkpoint), checkpoint files or named weights "
                             "(torchvision:..., timm:..., hf:...)")
    parser.add_argument("--method", choices=[op.name for op in ops], help="the merging operator (see --list)")
    parser.add_argument("--base", default=None, metavar="MODEL",
                        help="θ0, the model every MODEL was fine-tuned from (the methods that need it, see --list)")
    parser.add_argument("--config", default=None, metavar="MERGE.yaml|toml",
                        help="take the method, models, base and parameters from a merge config: merge_method, "
                             "base_model, models (each a path, or {model, parameters}), parameters")
    parser.add_argument("--out", metavar="OUT.safetensors", help="where to write the merged model")
    parser.add_argument("--format", choices=KEY_FORMATS, default=HARNESS,
                        help="key names of the written file: this harness's (default), or torchvision's/timm's "
                             "ResNet names (a file torchvision.models.resnet50(num_classes=C) loads as it is)")
    parser.add_argument("--list", action="store_true", help="print every operator with its parameters and exit")
    parser.add_argument("--evaluate", action="store_true",
                        help="print the merged model's accuracies next to each member's (MODELs must be run folders "
                             "of one dataset and trial seed)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    group = parser.add_argument_group("operator parameters", "each method reads its own (see --list); a per-model "
                                      "parameter takes one value for every model, or one per model")
    for name, (param, readers) in parameter_options(ops).items():
        defaults = ", ".join(f"{op.name} {op.param(name).default_text()}" for op in readers)
        group.add_argument(f"--{name}", dest=_dest(name), type=param.type, default=None, metavar=name.upper(),
                           nargs="+" if param.per_model else None, choices=param.choices or None,
                           help=f"{param.help}; {param.range_text() or 'any value'}; default: {defaults}")


def parameter_options(ops: list[MergeOp]) -> dict[str, tuple[Param, list[MergeOp]]]:
    """{parameter name: (its declaration, the operators that read it)}: one option per name. Two operators
    may share a name only with the same type and per-model kind (ValueError otherwise)."""
    options: dict[str, tuple[Param, list[MergeOp]]] = {}
    for op in ops:
        for param in op.params:
            if param.name not in options:
                options[param.name] = (param, [op])
                continue
            first, readers = options[param.name]
            if (first.type, first.per_model, first.choices) != (param.type, param.per_model, param.choices):
                raise ValueError(f"parameter '{param.name}' of '{op.name}' differs in type from '{readers[0].name}''s")
            readers.append(op)
    return options


def _dest(name: str) -> str:
    return f"param_{name}"


def _job(args: argparse.Namespace) -> MergeJob:
    """The merge asked for: from --config, or from MODELs, --method, --base and the parameter options."""
    given = {name: value for name, value in vars(args).items() if name.startswith("param_") and value is not None}
    if args.config:
        mixed = [flag for flag, value in (("MODEL", args.models), ("--method", args.method), ("--base", args.base))
                 if value] + [f"--{name[len('param_'):]}" for name in given]
        if mixed:
            raise UserError(f"--config gives the method, models, base and parameters: drop {', '.join(mixed)}")
        return merge_ops.config.read_config(args.config)
    if not args.method or not args.models:
        raise UserError("give MODELs and --method (or --config MERGE.yaml); --list shows the methods")
    params = {name[len("param_"):]: value for name, value in given.items()}
    return MergeJob(args.method, tuple(args.models), args.base, params)


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
    """(checkpoint path, finite state dict, metadata) of a run folder, checkpoint file or named weights."""
    from domainbed_recycle.averaging import check_finite
    from domainbed_recycle.checkpoints import load_checkpoint

    path = _resolve(model)
    state, metadata = load_checkpoint(path)
    return path, dict(check_finite(state, str(path))), metadata


def run(args: argparse.Namespace) -> int:
    """Check the request, load and check the models, merge, write; optionally evaluate."""
    from domainbed_recycle.files import check_new_output

    if args.list:
        print(merge_ops.markdown_table(merge_ops.operators()))
        return 0
    job = _job(args)
    op = merge_ops.get(job.method)
    if not args.out:
        raise UserError("--out OUT.safetensors is required")
    out = check_new_output(args.out, args.force, "--out")
    if out.suffix != ".safetensors":
        raise UserError(f"--out must end in .safetensors, got {out.name}")
    if op.needs_base and job.base is None:
        raise UserError(f"--method {op.name} needs --base (θ0, the model the MODELs were fine-tuned from)")
    if not op.needs_base and job.base is not None:
        raise UserError(f"--method {op.name} reads no base model: drop --base")
    arguments = op.arguments(len(job.models), job.parameters, job.model_parameters())  # before loading anything
    loaded = [_load(model) for model in job.models]
    base = _load(job.base) if job.base else None
    from domainbed_recycle.checkpoints import check_compatible, export_keys, save_checkpoint

    reference, reference_name = (base[1], job.base) if base else (loaded[0][1], job.models[0])
    for index, (model, (_, state, _)) in enumerate(zip(job.models, loaded, strict=True)):
        if base or index:  # every model against θ0, else against the first model
            check_compatible(reference, state, f"its weights (compared with {reference_name})", model)
    try:  # the operators check their own inputs (K >= 2 for Model Stock, ...)
        merged, reported = op(base[1] if base else None, [state for _, state, _ in loaded], **arguments)
    except ValueError as error:
        raise UserError(f"--method {op.name}: {error}") from None
    written = export_keys(merged, args.format)
    save_checkpoint(out, written, merged_metadata(op, job, arguments, reported, loaded, base, args.format))
    print(f"wrote {out} ({op.name} of {len(loaded)} model(s), {args.format} key names)")
    if args.evaluate:
        _evaluate(list(job.models), merged)
    return 0


def merged_metadata(op: MergeOp, job: MergeJob, arguments: dict[str, Any], reported: dict[str, Any],
                    loaded: list[tuple[Path, dict, dict]], base: tuple[Path, dict, dict] | None,
                    key_format: str) -> dict[str, Any]:
    """What a merged file records: the fields every member shares (`SHARED_FIELDS`), and what was merged:
    the operator, each member (reference, file, its own per-model values), θ0, the parameters, what the
    operator reported, the config file; plus versions and git commit. Nothing of one member's training."""
    from domainbed_recycle import provenance
    from domainbed_recycle.checkpoints import KEY_FORMAT_FIELD

    metas = [meta for _, _, meta in loaded]
    metadata: dict[str, Any] = {key: metas[0][key] for key in SHARED_FIELDS
                                if key in metas[0] and all(meta.get(key) == metas[0][key] for meta in metas)}
    per_model = [p for p in op.params if p.per_model]
    metadata["merge"] = {
        "method": op.name, "reference": op.reference,
        "members": [{"model": ref, "file": str(path), **{p.key: arguments[p.name][i] for p in per_model}}
                    for i, (ref, (path, _, _)) in enumerate(zip(job.models, loaded, strict=True))],
        "base": {"model": job.base, "file": str(base[0])} if base else None,
        "parameters": {p.key: arguments[p.name] for p in op.params if not p.per_model},
        "config": job.source, **({"reported": reported} if reported else {}),
    }
    metadata[KEY_FORMAT_FIELD] = key_format
    metadata["versions"], metadata["git_commit"] = provenance.versions(), provenance.git_commit()
    return metadata


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
