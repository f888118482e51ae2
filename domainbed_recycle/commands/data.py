"""`drecycle data`: list the datasets (role, domains with sizes, classes), build built-in caches, and
check a dataset's folders against DomainBed's (domains, classes, image counts)."""

from __future__ import annotations

import argparse
import sys

HELP = "List the datasets, prepare (build and cache) the built-in ones, or check a dataset's folders."

MAX_CLASS_NAMES = 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `drecycle data list` and `drecycle data prepare`."""
    sub = parser.add_subparsers(dest="data_command", metavar="{list,prepare,check}")
    sub.required = True
    listing = sub.add_parser("list", help="print every dataset: role, domains with sizes, classes, shape, sources")
    listing.add_argument("--data_dir", default=None, help="folder holding DomainBed's datasets (and caches)")
    listing.add_argument("--datasets", nargs="+", default=None, help="only these (names, or folder:/path/to/root)")
    prepare = sub.add_parser("prepare", help="build the built-in datasets' caches")
    prepare.add_argument("--data_dir", default=None, help="cache in DATA_DIR/drecycle_cache instead")
    prepare.add_argument("--datasets", nargs="+", default=None, help="only these built-ins (default: all)")
    prepare.add_argument("--force", action="store_true", help="rebuild even if a current cache exists")
    check = sub.add_parser("check", help="compare a dataset's folders with DomainBed's domains, classes and image "
                                         "counts (exit 1 if they differ)")
    check.add_argument("datasets", nargs="+", metavar="NAME", help="e.g. PACS VLCS, or folder:/path/to/root")
    check.add_argument("--data_dir", default=None, help="folder holding DomainBed's datasets (PACS/, VLCS/, ...)")


def run(args: argparse.Namespace) -> int:
    """Dispatch to `list` or `prepare`."""
    if args.data_command == "list":
        return run_list(args)
    if args.data_command == "check":
        return run_check(args)
    return run_prepare(args)


def _classes_cell(classes: list[str] | None) -> str:
    if classes is None:
        return "?"
    shown = ", ".join(classes[:MAX_CLASS_NAMES]) + (", ..." if len(classes) > MAX_CLASS_NAMES else "")
    return f"{len(classes)}: {shown}"


def _row(cls: type, data_dir: str | None, notes: list[str]) -> list[str]:
    """One table row for a dataset class; a problem's full message is appended to `notes`."""
    from domainbed_recycle.datasets.sources import DataNotFound
    from domainbed_recycle.errors import UserError

    classes = getattr(cls, "CLASSES", None) or None
    try:
        if hasattr(cls, "summary"):
            summary = cls.summary(data_dir)
        else:  # a dataset without a cheap summary: build it
            described = cls(data_dir, [], {}).describe()
            summary = {"domains": described["domains"], "classes": described["classes"]}
        domains = ", ".join(f"{env}: {n}" for env, n in summary["domains"].items())
        classes = summary["classes"]
    except DataNotFound as error:
        domains = f"{', '.join(cls.ENVIRONMENTS)} ({error.short})"
        note = error.hint or (None if error.status == "not prepared" else str(error))
        if note and note not in notes:
            notes.append(note)
    except UserError as error:
        domains = f"{', '.join(cls.ENVIRONMENTS)} (error, see below)"
        notes.append(f"{cls.__name__}: {error}")
    shape = "x".join(str(d) for d in getattr(cls, "input_shape", ())) or "?"
    made_from = cls.source_summary() if hasattr(cls, "source_summary") else "files in --data_dir"
    return [cls.__name__, getattr(cls, "ROLE", "target"), domains, _classes_cell(classes), shape, made_from]


def run_list(args: argparse.Namespace) -> int:
    """Print the table of datasets (and, below it, how to get the missing ones)."""
    from tabulate import tabulate

    from domainbed_recycle.datasets import get_dataset_class, load_all_datasets

    names = args.datasets or list(load_all_datasets())
    classes = [get_dataset_class(name) for name in names]
    order = {"target": 0, "pretrain": 1, "auxiliary": 2}
    classes.sort(key=lambda c: (order.get(getattr(c, "ROLE", "target"), 3), c.HPARAMS_PROFILE != "small"))
    notes: list[str] = []
    rows = [_row(cls, args.data_dir, notes) for cls in classes]
    headers = ["dataset", "role", "domains (images)", "classes", "input", "sources"]
    print(tabulate(rows, headers=headers, tablefmt="simple"))
    if any("not prepared" in row[2] for row in rows):
        notes.append("'not prepared' built-ins are built on first use, or now with `drecycle data prepare`.")
    if notes:
        print("\nnotes:")
        for note in notes:
            print(f"- {note}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    """Build each built-in dataset's cache (tqdm bar) and print the time each took."""
    import time

    from tqdm import tqdm

    from domainbed_recycle.datasets import get_dataset_class
    from domainbed_recycle.datasets.builtin import BUILTIN_DATASETS, BuiltinDataset
    from domainbed_recycle.errors import UserError

    names = args.datasets or list(BUILTIN_DATASETS)
    classes = [get_dataset_class(name) for name in names]
    not_builtin = [c.__name__ for c in classes if not issubclass(c, BuiltinDataset)]
    if not_builtin:
        raise UserError(f"only built-in datasets are prepared; not built-in: {', '.join(not_builtin)}")
    total = time.perf_counter()
    bar = tqdm(classes, desc="prepare", unit="dataset", file=sys.stderr)
    for cls in bar:
        bar.set_postfix_str(cls.__name__)
        was_current = cls.is_prepared(args.data_dir) and not args.force
        start = time.perf_counter()
        path = cls.prepare(args.data_dir, force=args.force)
        built = time.perf_counter() - start
        start = time.perf_counter()
        sizes = [len(d) for d in cls.load(args.data_dir)]
        loaded = time.perf_counter() - start
        what = "cached" if was_current else f"built in {built:.2f}s"
        size_mb = path.stat().st_size / 2**20
        tqdm.write(
            f"{cls.__name__:16s} {what:18s} load {loaded:.3f}s  {sum(sizes):6d} images  {size_mb:5.1f} MiB  {path}"
        )
    print(f"prepared {len(classes)} dataset(s) in {time.perf_counter() - total:.1f}s")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """One table per dataset (domain, images found / DomainBed's, classes found / DomainBed's), then one
    line per difference; exit status 1 when any dataset differs or is missing."""
    from tabulate import tabulate

    from domainbed_recycle.datasets.check import check_dataset

    status = 0
    for name in args.datasets:
        result = check_dataset(name, args.data_dir)
        print(f"{name}: {result.root or '(no folder)'}")
        if result.rows:
            rows = [[row.domain, row.folder, _count(row.images), _count(row.expected_images),
                     _count(row.classes), _count(row.expected_classes)] for row in result.rows]
            print(tabulate(rows, headers=["domain", "folder", "images", "DomainBed's", "classes", "DomainBed's"]))
        for line in result.missing:
            print(f"  MISSING {line}")
        for line in result.differences:
            print(f"  DIFFERS {line}")
        if result.hint:
            print(f"  HOW TO GET IT: {result.hint}")
        verdict = ("as DomainBed's" if result.ok else
                   f"{len(result.missing)} missing, {len(result.differences)} difference(s) from DomainBed's")
        print(f"{name}: {verdict}\n")
        status = status or (0 if result.ok else 1)
    return status


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
