"""`drecycle import`: add fine-tunings made elsewhere to a recycling pipeline's auxiliary pool."""

from __future__ import annotations

import argparse

HELP = "Import fine-tunings (safetensors, state dicts, DomainBed model.pkl) into a recycling pipeline's aux pool."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", help="checkpoint files to import")
    parser.add_argument("--spec", default=None, help="the pipeline's spec (its output_dir and foundation)")
    parser.add_argument("--output_dir", default=None, help="override the spec's output_dir")
    parser.add_argument("--reference", default=None,
                        help="foundation checkpoint to check architectures against (default: the spec's)")
    parser.add_argument("--name", default=None, help="name in the pool (one file only; default: file stem)")
    parser.add_argument("--gate", action="store_true",
                        help="refuse fine-tunings whose featurizer is far from the foundation's (merge gate)")
    parser.add_argument("--max_distance", type=float, default=1.0,
                        help="--gate: largest relative distance |phi - phi0| / |phi0| accepted (default 1.0)")


def run(args: argparse.Namespace) -> int:
    from domainbed_recycle.errors import UserError
    from domainbed_recycle.recycle.imports import import_finetuning
    from domainbed_recycle.recycle.pipeline import Pipeline
    from domainbed_recycle.recycle.spec import load_recycle_spec

    if args.spec is None and (args.reference is None or args.output_dir is None):
        raise UserError("give --spec (or both --reference and --output_dir)")
    if args.name and len(args.files) > 1:
        raise UserError("--name works with one file only")
    output_dir, reference = args.output_dir, args.reference
    from domainbed_recycle.validation import Annotated, NonEmpty, check

    for flag, value in (("--output_dir", output_dir), ("--reference", reference), ("--name", args.name)):
        if value is not None:
            check(value, Annotated[str, NonEmpty()], flag)
    if args.spec:
        pipeline = Pipeline(load_recycle_spec(args.spec, {"output_dir": args.output_dir}))
        output_dir = str(pipeline.out)
        reference = reference or pipeline.foundation_checkpoint()
    from domainbed_recycle import weights

    problem = weights.problem(reference)
    if problem:
        raise UserError(f"foundation: {problem} (run `drecycle recycle SPEC` first, or pass --reference)")
    refused = 0
    for path in args.files:
        if args.gate:
            from domainbed_recycle.checkpoints import load_checkpoint, split_state
            from domainbed_recycle.gate import foundation_gate

            verdict = foundation_gate(split_state(load_checkpoint(path)[0])[0],
                                      split_state(load_checkpoint(reference)[0])[0], args.max_distance)
            if not verdict.accepted:
                print(f"refused {path}: {verdict.reason}")
                refused += 1
                continue
        target = import_finetuning(path, reference, output_dir, args.name)
        print(f"imported {path} -> {target}")
    return 1 if refused else 0
