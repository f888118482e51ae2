"""`drecycle recycle SPEC`: the model-recycling pipeline, stage by stage, ending with the strategy table."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Run (or resume) the recycling pipeline of a spec file and print the strategy table."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="TOML spec file (see sweeps/)")
    parser.add_argument("--output_dir", default=None, help="override the spec's output_dir")
    parser.add_argument("--data_dir", default=None, help="override the spec's data_dir")
    parser.add_argument("--launcher", default=None, help="inprocess | pool | submitit_local | slurm | multi_gpu")
    parser.add_argument("--n_workers", type=int, default=None)
    parser.add_argument("--selection", nargs="+", default=None, help="iid | loo | oracle (default: the spec's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help="change a key of the spec before it is validated, e.g. --set target.steps=3 --set "
                             "'target.datasets=[\"PACS\"]' --set foundation.checkpoint=r50.pth (a TOML value, else "
                             "text; paths read from the current folder); repeatable")
    parser.add_argument("--dry_run", action="store_true",
                        help="validate the spec, list every stage's jobs and check every dataset folder and "
                             "checkpoint (exit 1 if one is missing), and what the jobs cost (GPU-hours)")
    parser.add_argument("--gpu", default=None,
                        help="GPU kind the dry run estimates GPU-hours for (default: every measured kind)")
    parser.add_argument("--inits", action="store_true",
                        help="run stages 1-3 only and print the inits diagnostic (probe accuracy along "
                             "phi_0 -> each auxiliary featurizer, relative distances)")
    parser.add_argument("--table_only", action="store_true", help="print the table of what is already combined")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as markdown here")
    parser.add_argument("--latex", type=Path, default=None, help="also write the table as LaTeX here")
    parser.add_argument("--force", action="store_true", help="overwrite the --markdown/--latex files if they exist")


def run(args: argparse.Namespace) -> int:
    from domainbed_recycle.recycle.pipeline import Pipeline
    from domainbed_recycle.recycle.spec import load_recycle_spec

    overrides = {"output_dir": args.output_dir, "data_dir": args.data_dir, "launcher": args.launcher,
                 "n_workers": args.n_workers, "selection": args.selection}
    spec = load_recycle_spec(args.spec, overrides, args.settings)
    pipeline = Pipeline(spec)
    from domainbed_recycle.files import check_new_output

    outputs = [(check_new_output(path, args.force, f"--{fmt}"), fmt)
               for path, fmt in ((args.markdown, "markdown"), (args.latex, "latex")) if path]
    if args.dry_run:
        listing, checked = pipeline.dry_run(args.gpu)
        print(listing)
        for note in spec.notes:
            print(f"note: {note}")
        for line in checked.lines():
            print(line)
        if checked.missing:
            print(f"spec {args.spec}: {len(checked.missing)} input(s) missing (see MISSING above)")
            return 1
        print(f"spec {args.spec}: valid" + (f"; {len(checked.differences)} difference(s) from DomainBed's data"
                                              if checked.differences else "; every input found"))
        return 0
    if args.inits:
        print(pipeline.run_inits())
        return 0
    if args.table_only:
        text = pipeline.table()
    else:  # one recycle per output folder at a time: a second one is refused, naming the first
        from domainbed_recycle.locks import folder_lock
        from domainbed_recycle.recycle.stages import claim_output_dir

        pipeline.check()  # nothing is written before the spec, the folder and the inputs pass
        claim_output_dir(pipeline.out)
        with folder_lock(pipeline.out, f"recycle output folder {pipeline.out}"):
            text = pipeline.run()
    print(text)
    claims = pipeline.reading()
    if claims:
        print(claims)
    for path, fmt in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pipeline.table(fmt))
    return 0
