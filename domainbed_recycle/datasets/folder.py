"""Real multi-domain image datasets read from folders: DomainBed's five, and any `root/<domain>/<class>/`.

Each domain is a torchvision `ImageFolder`; items are (float32 [3, 224, 224] normalised with ImageNet's
statistics, int label). As in DomainBed, training domains use its augmentation when
`hparams["data_augmentation"]` is true (DomainBed's default, also ours when the key is absent) and test
domains never do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from domainbed_recycle.datasets.base import DATASETS, MultipleDomainDataset
from domainbed_recycle.datasets.sources import DataNotFound
from domainbed_recycle.datasets.transforms import domainbed_augment_transform, domainbed_transform
from domainbed_recycle.errors import UserError

DOWNLOAD_HINT = (
    "DomainBed's datasets are downloaded with its script, on a machine with internet: "
    "`git clone https://github.com/facebookresearch/DomainBed && cd DomainBed && "
    "python -m domainbed.scripts.download --data_dir=/my/data`; then copy /my/data here and pass "
    "`--data_dir /my/data`."
)


def _subfolders(path: Path) -> list[str]:
    """Sorted names of the visible subfolders of `path`."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _image_folder(path: Path, transform=None):
    """torchvision ImageFolder on `path`, with its errors turned into UserErrors that name the path."""
    from torchvision.datasets import ImageFolder

    if not path.is_dir():
        raise DataNotFound(f"domain folder not found: {path}", path)
    try:
        return ImageFolder(str(path), transform=transform)
    except FileNotFoundError as error:
        raise UserError(
            f"empty domain {path}: expected <class>/<image> files inside (.jpg, .png, ...); {error}"
        ) from error


def _check_same_classes(names: list[str], class_lists: list[list[str]]) -> None:
    """UserError listing, per domain, the classes it lacks or has extra, when the domains differ."""
    union = sorted(set().union(*class_lists))
    problems = []
    for name, classes in zip(names, class_lists, strict=True):
        missing = [c for c in union if c not in classes]
        if missing:
            problems.append(f"{name} lacks {missing}")
    if problems:
        raise UserError("domains do not share one set of classes: " + "; ".join(problems) + f" (all classes: {union})")


class MultipleEnvironmentImageFolder(MultipleDomainDataset):
    """DomainBed's `MultipleEnvironmentImageFolder`: one ImageFolder per domain folder.

    Subclasses set DIR_NAME (folder under `data_dir`), ENVIRONMENTS and ENV_FOLDERS (the folder of
    each environment, same order). `datasets[i][j]` = (float32 [3, 224, 224], int label).
    """

    HPARAMS_PROFILE = "resnet"
    N_STEPS = 5001
    CHECKPOINT_FREQ = 300
    N_WORKERS = min(8, os.cpu_count() or 1)
    DIR_NAME = ""
    ENV_FOLDERS: list[str] = []
    input_shape = (3, 224, 224)

    @classmethod
    def root(cls, data_dir: str | os.PathLike | None) -> Path:
        """`data_dir/DIR_NAME`, checked to exist with every domain folder; else a UserError."""
        if data_dir is None:
            raise DataNotFound(
                f"{cls.__name__} needs --data_dir (the folder holding {cls.DIR_NAME}/).",
                f"<data_dir>/{cls.DIR_NAME}",
                hint=DOWNLOAD_HINT,
            )
        root = Path(data_dir).expanduser() / cls.DIR_NAME
        expected = ", ".join(cls.ENV_FOLDERS)
        if not root.is_dir():
            raise DataNotFound(
                f"{cls.__name__} not found: {root} (expected domain folders {expected}).",
                root,
                hint=DOWNLOAD_HINT,
            )
        missing = [f for f in cls.ENV_FOLDERS if not (root / f).is_dir()]
        if missing:
            raise DataNotFound(
                f"{cls.__name__}: domain folder(s) {missing} missing in {root} (expected {expected}; "
                f"found {_subfolders(root)}).",
                root / missing[0],
                hint=DOWNLOAD_HINT,
            )
        return root

    def __init__(self, data_dir: str | None, test_envs: list[int], hparams: dict) -> None:
        super().__init__()
        root = self.root(data_dir)
        augment = bool(hparams.get("data_augmentation", True))
        plain, augmented = domainbed_transform(), domainbed_augment_transform()
        self.datasets = []
        for i, folder in enumerate(self.ENV_FOLDERS):
            transform = augmented if augment and i not in test_envs else plain
            self.datasets.append(_image_folder(root / folder, transform))
        _check_same_classes(list(self.ENVIRONMENTS), [d.classes for d in self.datasets])
        self.classes = list(self.datasets[0].classes)
        self.num_classes = len(self.classes)

    @classmethod
    def summary(cls, data_dir: str | os.PathLike | None) -> dict[str, Any]:
        """{"domains": {name: n images}, "classes": [...]} by scanning the folders (no image is read).

        Raises DataNotFound when the root or a domain folder is missing, UserError for other problems.
        """
        root = cls.root(data_dir)
        folders = [_image_folder(root / f) for f in cls.ENV_FOLDERS]
        _check_same_classes(list(cls.ENVIRONMENTS), [d.classes for d in folders])
        sizes = {env: len(d) for env, d in zip(cls.ENVIRONMENTS, folders, strict=True)}
        return {"domains": sizes, "classes": list(folders[0].classes)}


@DATASETS.register()
class PACS(MultipleEnvironmentImageFolder):
    """PACS (7 classes): art painting, cartoon, photo, sketch."""

    DIR_NAME = "PACS"
    ENVIRONMENTS = ["A", "C", "P", "S"]
    ENV_FOLDERS = ["art_painting", "cartoon", "photo", "sketch"]


@DATASETS.register()
class VLCS(MultipleEnvironmentImageFolder):
    """VLCS (5 classes): Caltech101, LabelMe, SUN09, VOC2007."""

    DIR_NAME = "VLCS"
    ENVIRONMENTS = ["C", "L", "S", "V"]
    ENV_FOLDERS = ["Caltech101", "LabelMe", "SUN09", "VOC2007"]


@DATASETS.register()
class OfficeHome(MultipleEnvironmentImageFolder):
    """OfficeHome (65 classes): art, clipart, product, real world."""

    DIR_NAME = "office_home"
    ENVIRONMENTS = ["A", "C", "P", "R"]
    ENV_FOLDERS = ["Art", "Clipart", "Product", "Real World"]


@DATASETS.register()
class TerraIncognita(MultipleEnvironmentImageFolder):
    """TerraIncognita (10 classes): camera-trap locations 100, 38, 43, 46."""

    DIR_NAME = "terra_incognita"
    ENVIRONMENTS = ["L100", "L38", "L43", "L46"]
    ENV_FOLDERS = ["location_100", "location_38", "location_43", "location_46"]


@DATASETS.register()
class DomainNet(MultipleEnvironmentImageFolder):
    """DomainNet (345 classes): clipart, infograph, painting, quickdraw, real, sketch."""

    DIR_NAME = "domain_net"
    CHECKPOINT_FREQ = 1000
    ENVIRONMENTS = ["clip", "info", "paint", "quick", "real", "sketch"]
    ENV_FOLDERS = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]


class ImageFolderDomains(MultipleEnvironmentImageFolder):
    """Any `root/<domain>/<class>/<image>` tree; domains and classes discovered and sorted.

    Used as `--dataset folder:/path/to/root` (see `folder_dataset_class`); used directly, `data_dir`
    is the root. Same transforms and augmentation as DomainBed's real datasets.
    """

    ROOT: str | None = None

    @classmethod
    def root(cls, data_dir: str | os.PathLike | None) -> Path:
        raw = cls.ROOT if cls.ROOT is not None else data_dir
        if raw is None:
            raise UserError("ImageFolderDomains needs a root: use --dataset folder:/path/to/root")
        root = Path(raw).expanduser()
        if not root.is_dir():
            raise DataNotFound(
                f"image folder dataset root not found: {root} (expected {root}/<domain>/<class>/<image>)",
                root,
            )
        missing = [f for f in cls.ENV_FOLDERS if not (root / f).is_dir()]
        if missing:
            raise DataNotFound(
                f"domain folder(s) {missing} missing in {root} (found {_subfolders(root)})", root / missing[0]
            )
        return root

    def __init__(self, data_dir: str | None, test_envs: list[int], hparams: dict) -> None:
        if not self.ENVIRONMENTS:
            discovered = folder_dataset_class(str(Path(self.ROOT or data_dir or "")))
            self.ENVIRONMENTS, self.ENV_FOLDERS = discovered.ENVIRONMENTS, discovered.ENV_FOLDERS
        super().__init__(data_dir, test_envs, hparams)


def folder_dataset_class(root: str) -> type[ImageFolderDomains]:
    """A subclass of ImageFolderDomains bound to `root`, with ENVIRONMENTS = its sorted subfolders."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataNotFound(
            f"image folder dataset root not found: {path} (expected {path}/<domain>/<class>/<image>)", path
        )
    domains = _subfolders(path)
    if not domains:
        raise UserError(f"no domain folders in {path} (expected {path}/<domain>/<class>/<image>)")
    attrs = {
        "ROOT": str(path),
        "ENVIRONMENTS": domains,
        "ENV_FOLDERS": domains,
        "__doc__": ImageFolderDomains.__doc__,
    }
    return type("ImageFolderDomains", (ImageFolderDomains,), attrs)
