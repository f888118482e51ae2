"""Check a dataset's files before anything trains on them: every domain folder there, its classes and
image counts, compared with what DomainBed's download gives for its five datasets (`known`).

`check_dataset(name, data_dir)` lists the files (no image is decoded) and returns one row per domain and
one line per problem; `drecycle data check` prints them and `drecycle recycle SPEC --dry_run` reports
the problems of every dataset a spec names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from domainbed_recycle.datasets import get_dataset_class
from domainbed_recycle.datasets.builtin import BuiltinDataset
from domainbed_recycle.datasets.folder import DOWNLOAD_HINT, MultipleEnvironmentImageFolder
from domainbed_recycle.datasets.image_files import scan_tree
from domainbed_recycle.datasets.known import KNOWN, Known
from domainbed_recycle.errors import UserError


@dataclass
class DomainRow:
    """One domain folder: images and classes found (None if the folder is missing) and expected."""

    domain: str
    folder: str
    images: int | None
    expected_images: int | None
    classes: int | None
    expected_classes: int | None


@dataclass
class DatasetCheck:
    """The result of `check_dataset`, one line per finding.

    missing: what a run would fail on (the folder, a domain, images of a class, classes the domains do
        not share, a built-in's sources); differences: where the files differ from DomainBed's own copy
        (image counts, class names) while a run would still train on them.
    """

    name: str
    root: str
    rows: list[DomainRow] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    hint: str = ""  # how to get what is missing (shared by several datasets: print it once)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.differences


def check_dataset(name: str, data_dir: str | os.PathLike | None) -> DatasetCheck:
    """Check dataset `name` (a registered name, with options, or `folder:PATH`) in `data_dir`.

    Real-image datasets: the root and each domain folder exist, every domain holds images of the same
    classes, and DomainBed's datasets hold DomainBed's classes and image counts. Built-ins: their raw
    sources are installed (or their cache is built). UserError only for an unknown name.
    """
    cls = get_dataset_class(name)
    if issubclass(cls, BuiltinDataset):
        return _check_builtin(name, cls, data_dir)
    if not issubclass(cls, MultipleEnvironmentImageFolder):
        return DatasetCheck(name, "")
    return _check_folders(name, cls, data_dir)


def _check_builtin(name: str, cls: type[BuiltinDataset], data_dir: str | os.PathLike | None) -> DatasetCheck:
    result = DatasetCheck(name, str(cls.cache_path(data_dir)))
    try:
        cls.check_available(None if data_dir is None else str(data_dir))
    except UserError as error:
        result.missing.append(f"{name}: {error}")
    return result


def _check_folders(name: str, cls: type[MultipleEnvironmentImageFolder],
                   data_dir: str | os.PathLike | None) -> DatasetCheck:
    known: Known | None = KNOWN.get(cls.__name__) if cls.DIR_NAME else None
    base = getattr(cls, "ROOT", None) or data_dir
    if base is None:
        return DatasetCheck(name, "", missing=[f"{name}: needs --data_dir (the folder holding {cls.DIR_NAME}/)"])
    root = Path(base).expanduser() / cls.DIR_NAME
    if not root.is_dir():
        return DatasetCheck(name, str(root), missing=[
            f"{name}: {root} not found (expected domain folders {', '.join(cls.ENV_FOLDERS)})"],
            hint=DOWNLOAD_HINT if known else "")
    result = DatasetCheck(name, str(root))
    class_sets: dict[str, set[str]] = {}
    for domain, folder in zip(cls.ENVIRONMENTS, cls.ENV_FOLDERS, strict=True):
        expected = known.per_domain.get(folder) if known else None
        n_expected_classes = len(known.classes) if known else None
        path = root / folder
        if not path.is_dir():
            result.rows.append(DomainRow(domain, folder, None, expected, None, n_expected_classes))
            result.missing.append(f"{name}: domain folder {path} is missing")
            continue
        try:
            tree = scan_tree(path, root)
        except UserError as error:
            result.rows.append(DomainRow(domain, folder, 0, expected, 0, n_expected_classes))
            result.missing.append(f"{name}: {error}")
            continue
        counts = [0] * len(tree.classes)
        for _, label in tree.samples:
            counts[label] += 1
        class_sets[folder] = set(tree.classes)
        result.rows.append(DomainRow(domain, folder, len(tree.samples), expected, len(tree.classes),
                                     n_expected_classes))
        empty = [c for c, n in zip(tree.classes, counts, strict=True) if not n]
        if empty:
            result.missing.append(f"{name}: class folder(s) {_brief(empty)} of {path} hold no image")
        if expected is not None and len(tree.samples) != expected:
            result.differences.append(f"{name}: {path} holds {len(tree.samples):,} images, DomainBed's "
                                      f"{expected:,}")
    if len({frozenset(s) for s in class_sets.values()}) > 1:
        union = set().union(*class_sets.values())
        lacking = [f"{folder} lacks {_brief(sorted(union - s))}" for folder, s in class_sets.items() if union - s]
        result.missing.append(f"{name}: domains do not share one set of classes: {'; '.join(lacking)}")
    if known and class_sets:
        found, wanted = set().union(*class_sets.values()), set(known.classes)
        if wanted - found:
            result.differences.append(f"{name}: lacks DomainBed's class(es) {_brief(sorted(wanted - found))}")
        if found - wanted:
            result.differences.append(f"{name}: has class(es) DomainBed's has not: {_brief(sorted(found - wanted))}")
    if known and result.rows and all(row.images is not None for row in result.rows):
        total = sum(row.images or 0 for row in result.rows)
        if total != known.total:
            result.differences.append(f"{name}: {total:,} images in all, DomainBed's {known.total:,}")
    return result


def _brief(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
