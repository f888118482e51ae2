"""`drecycle collect`: model-selection tables from a folder of run folders (ours or DomainBed's).

As DomainBed's `collect_results.py`, the tables are printed and also written into the input folder:
`results.txt`, or `results.tex` with `--latex` (`results.md`, `.csv`, `.json` for this project's other
formats); `--print_only` writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from domainbed_recycle.errors import UserError
from domainbed_recycle.rundir import RESULTS

HELP = ("Print model-selection tables (DomainBed's three methods) for a folder of runs, and write them into it "
        "(results.txt, or results.tex with --latex), as DomainBed's collect_results.py.")

SELECTIONS = ("iid", "loo", "oracle")
MAX_WARNED_FILES = 5
RESULTS_FILES = {"text": "results.txt", "domainbed": "results.txt", "latex": "results.tex", "markdown": "results.md",
                 "csv": "results.csv", "json": "results.json"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `drecycle collect`."""
    parser.add_argument("--input_dir", required=True, help="sweep folder: one sub-folder per run")
    formats = parser.add_mutually_exclusive_group()
    formats.set_defaults(format="text")
    for name, text in (
        ("latex", "a LaTeX document"),
        ("markdown", "Markdown tables"),
        ("csv", "CSV, one line per table cell"),
        ("json", "JSON"),
        ("domainbed", "DomainBed's own fixed-width text layout"),
    ):
        formats.add_argument(f"--{name}", dest="format", action="store_const", const=name,
                             help=f"print {text}" + (" and write results.tex (DomainBed's --latex)"
                                                     if name == "latex" else ""))
    parser.add_argument(
        "--selection",
        choices=[*SELECTIONS, "all"],
        default="all",
        help="model-selection method: training-domain validation (iid), leave-one-domain-out (loo), "
        "test-domain oracle (oracle), or all three (default)",
    )
    parser.add_argument(
        "--only_done", action="store_true", help="skip runs without a `done` file (DomainBed reads them all)"
    )
    parser.add_argument("--print_only", action="store_true",
                        help="print the tables only (DomainBed always writes them into --input_dir too)")
    parser.add_argument("--force", action="store_true",
                        help="write the tables over a results file that drecycle collect did not write (by default "
                             "such a file, e.g. DomainBed's own results.txt, is kept)")
    parser.add_argument("--auto_lr", action="store_true",
                        help="DomainBed's 'auto lr training-domain validation set' selection, which reads the "
                             "full-data accuracies (fd_env<i>_in_acc) that only DomainBed's train_autolr.py "
                             "writes: not supported here (one-line error)")
    parser.add_argument(
        "--strict_averages",
        action="store_true",
        help="in the Averages tables, count only trials that have every domain of the dataset",
    )


def run(args: argparse.Namespace) -> int:
    """Load the records, select, print the tables to stdout and any load warning to stderr."""
    from domainbed_recycle.collect import collect, load_records, render

    if args.auto_lr:
        raise UserError("--auto_lr is not supported: it selects by the full-data accuracies fd_env<i>_in_acc "
                        "that only DomainBed's train_autolr.py writes (neither its train.py nor drecycle train "
                        "does); use DomainBed's collect_results.py --auto_lr for such sweeps")
    try:
        records, report = load_records(args.input_dir, only_done=args.only_done)
    except FileNotFoundError:
        raise UserError(f"--input_dir {args.input_dir!r} does not exist") from None
    except NotADirectoryError:
        raise UserError(f"--input_dir {args.input_dir!r} is not a folder") from None
    except OSError as error:
        raise UserError(f"cannot read --input_dir {args.input_dir!r}: {error.strerror or error}") from None
    if report.n_files == 0:
        raise UserError(
            f"no {RESULTS} found in {args.input_dir!r} or its sub-folders; "
            "point --input_dir at a sweep's output folder"
        )
    methods = SELECTIONS if args.selection == "all" else (args.selection,)
    result = collect(records, methods=methods, strict=args.strict_averages, report=report)
    for warning in report.warnings(MAX_WARNED_FILES):
        print(warning, file=sys.stderr)
    if args.only_done and report.n_runs_excluded:
        print(f"note: left out {report.n_runs_excluded} run(s) without a `done` file", file=sys.stderr)
    elif report.n_runs_not_done:
        print(
            f"note: {report.n_runs_not_done} run(s) have no `done` file (running or killed); their records "
            "are included, as DomainBed does (--only_done leaves them out)",
            file=sys.stderr,
        )
    text = render(result, args.format)
    sys.stdout.write(text)
    if not args.print_only:
        sys.stdout.flush()
        _write_results(Path(args.input_dir) / RESULTS_FILES[args.format], text, args.force)
    return 0


OWN_RESULTS = ".drecycle_results.json"  # {file name: sha256 of what collect last wrote there}


def _write_results(path: Path, text: str, force: bool = False) -> None:
    """Write the printed tables into the input folder, as DomainBed does, but never over a file this
    command did not write (DomainBed's own results.txt, a user's notes, one edited since): that file is
    kept and a note says so (`--force` overwrites it). A folder that cannot be written (read-only
    copies of published sweeps) gets a note on stderr, not an error."""
    import hashlib
    import json

    from domainbed_recycle.rundir import write_atomic

    ledger_path = path.parent / OWN_RESULTS
    try:
        ledger = json.loads(ledger_path.read_text(encoding="utf-8")) if ledger_path.is_file() else {}
    except (OSError, ValueError):
        ledger = {}
    if not isinstance(ledger, dict):
        ledger = {}
    if path.is_file() and not force:
        try:
            mine = ledger.get(path.name) == hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            mine = False
        if not mine:
            print(f"note: tables not written: {path} exists and was not written by drecycle collect (or was "
                  f"edited since); it is kept (--force overwrites it, --print_only skips writing)", file=sys.stderr)
            return
    try:
        write_atomic(path, text)
        ledger[path.name] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        write_atomic(ledger_path, json.dumps(ledger, indent=1, sort_keys=True) + "\n")
    except OSError as error:
        print(f"note: tables not written to {path} ({error.strerror or error}); --print_only skips writing",
              file=sys.stderr)
