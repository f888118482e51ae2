"""Real multi-domain image datasets read from folders: DomainBed's five, and any `root/<domain>/<class>/`.

Items are (float32 [3, R, R] normalised with ImageNet's statistics, int label), R = 224 unless a
`resolution` option is given. As in DomainBed, training domains use its augmentation when
`hparams["data_augmentation"]` is true (DomainBed's default, also ours when the key is absent) and test
domains never do.

Two ways to read the images:
  - on the fly (DomainBed's five by default, DomainBed's exact transforms): each item decodes its file;
    DataLoader workers sized to the cores the training threads leave free;
  - from a decode-once cache (`folder:` datasets by default, or the option `cache=yes`): images resized
    to R x R once into a memory-mapped uint8 file (`image_cache`), then batches come from memory with no
    worker; augmentation (crop, flip, jitter, grayscale) is applied to the cached R x R image, and only
    to training draws of training domains: evaluation never augments.
Options follow the name after "?": "folder:/data/mine?resolution=64", "PACS?resolution=96,cache=yes".
Folder trees are listed by `image_files.scan_tree` (hidden entries skipped, links not followed out of
the tree); a corrupt image is one error line naming it.

Why one module of ~340 lines: DomainBed's five datasets are declarations on one image-folder
class, plus the `folder:` wrapper; the file walking and the cache live in their own modules.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from domainbed_recycle.datasets.base import DATASETS, MultipleDomainDataset
from domainbed_recycle.datasets.builtin import cache_dir
from domainbed_recycle.datasets.image_cache import CachedImageDomain, cached_images
from domainbed_recycle.datasets.image_files import ImageTree, load_rgb, scan_tree, visible_subfolders
from domainbed_recycle.datasets.sources import DataNotFound
from domainbed_recycle.datasets.transforms import (
    domainbed_augment_transform,
    domainbed_augment_uint8,
    domainbed_transform,
)
from domainbed_recycle.errors import UserError
from domainbed_recycle.misc import available_cores

FOLDER_PREFIX = "folder:"
OPTIONS = {"resolution": "side R of the square images, in pixels (default 224)",
           "cache": "yes/no: decode once into a memory-mapped cache (default: yes for folder:, no for DomainBed's)"}

DOWNLOAD_HINT = (
    "DomainBed's datasets are downloaded with its script, on a machine with internet: "
    "`git clone https://github.com/facebookresearch/DomainBed && cd DomainBed && "
    "python -m domainbed.scripts.download --data_dir=/my/data`; then copy /my/data here and pass "
    "`--data_dir /my/data`."
)


def _subfolders(path: Path) -> list[str]:
    """Sorted names of the visible, real (not symlinked) subfolders of `path`."""
    return visible_subfolders(path)[0]


def _scan_domain(path: Path, bound: Path) -> ImageTree:
    """The images of one domain folder (DataNotFound if absent, UserError if a class has no image)."""
    if not path.is_dir():
        raise DataNotFound(f"domain folder not found: {path}", path)
    tree = scan_tree(path, bound)
    counts = [0] * len(tree.classes)
    for _, label in tree.samples:
        counts[label] += 1
    empty = [name for name, count in zip(tree.classes, counts, strict=True) if count == 0]
    if empty:
        raise UserError(f"class folder(s) {empty} of {path} hold no image (.jpg, .png, ...): fill or remove them")
    return tree


def _report_skipped(trees: list[ImageTree], domains: list[str] = ()) -> None:
    """One warning line for every entry the scan did not read: symbolic links to folders (domains,
    classes or sub-folders) or leading out of the dataset, and special files named like images."""
    skipped = list(domains) + [path for tree in trees for path in tree.skipped]
    if skipped:
        example = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        print(f"warning: skipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} of the dataset: symbolic "
              f"links to folders or leading out of it, special files (copy the files in instead): {example}",
              file=sys.stderr)


def loader_workers(limit: int = 8) -> int:
    """DataLoader workers decoding images: the cores torch's training threads leave free, at most
    `limit` (with a GPU the training threads barely use the cores: all but one)."""
    busy = 1 if torch.cuda.is_available() else torch.get_num_threads()
    return max(0, min(limit, available_cores() - busy))


class ImageFiles(Dataset):
    """One domain read on the fly: item i decodes `samples[i]` and applies `transform` (as ImageFolder)."""

    def __init__(self, tree: ImageTree, transform=None) -> None:
        self.root, self.classes, self.samples = tree.root, tree.classes, tree.samples
        self.targets = [label for _, label in tree.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_rgb(path)
        return (self.transform(image) if self.transform is not None else image), label


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
    """DomainBed's `MultipleEnvironmentImageFolder`: one image folder per domain.

    Subclasses set DIR_NAME (folder under `data_dir`), ENVIRONMENTS and ENV_FOLDERS (the folder of
    each environment, same order). `datasets[i][j]` = (float32 [3, R, R], int label), R = RESOLUTION;
    `with_options` binds RESOLUTION and CACHE (read from the cache, module docstring).
    """

    HPARAMS_PROFILE = "resnet"
    N_STEPS = 5001
    CHECKPOINT_FREQ = 300
    DIR_NAME = ""
    ENV_FOLDERS: list[str] = []
    RESOLUTION = 224
    CACHE = False
    input_shape = (3, 224, 224)

    @classmethod
    def check_available(cls, data_dir: str | None) -> None:
        """The dataset's folder and each domain folder exist (`root`); images are not listed."""
        cls.root(data_dir)

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
        trees = [_scan_domain(root / folder, root) for folder in self.ENV_FOLDERS]
        _report_skipped(trees, self.skipped_domains(root))
        _check_same_classes(list(self.ENVIRONMENTS), [tree.classes for tree in trees])
        self.classes = list(trees[0].classes)
        self.num_classes = len(self.classes)
        size = self.RESOLUTION
        if self.CACHE:  # batches from memory: no DataLoader, no worker
            self.N_WORKERS = 0
            folder = cache_dir(data_dir if self.DIR_NAME else None) / "folders"
            self.datasets = [
                CachedImageDomain(
                    cached_images(tree, size, folder),
                    torch.as_tensor([label for _, label in tree.samples]),
                    augment=domainbed_augment_uint8(size) if augment and i not in test_envs else None,
                )
                for i, tree in enumerate(trees)
            ]
        else:
            self.N_WORKERS = loader_workers()
            plain, augmented = domainbed_transform(size), domainbed_augment_transform(size)
            self.datasets = [
                ImageFiles(tree, augmented if augment and i not in test_envs else plain)
                for i, tree in enumerate(trees)
            ]

    @classmethod
    def skipped_domains(cls, root: Path) -> list[str]:
        """Domain folders not read (DomainBed's datasets name theirs: none)."""
        return []

    @classmethod
    def summary(cls, data_dir: str | os.PathLike | None) -> dict[str, Any]:
        """{"domains": {name: n images}, "classes": [...]} by scanning the folders (no image is read).

        Raises DataNotFound when the root or a domain folder is missing, UserError for other problems.
        """
        root = cls.root(data_dir)
        trees = [_scan_domain(root / f, root) for f in cls.ENV_FOLDERS]
        _check_same_classes(list(cls.ENVIRONMENTS), [tree.classes for tree in trees])
        sizes = {env: len(tree.samples) for env, tree in zip(cls.ENVIRONMENTS, trees, strict=True)}
        return {"domains": sizes, "classes": list(trees[0].classes)}


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
    is the root. Same transforms and augmentation as DomainBed's real datasets, read from the decode-once
    cache unless the option `cache=no` is given.
    """

    ROOT: str | None = None
    CACHE = True

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

    @classmethod
    def skipped_domains(cls, root: Path) -> list[str]:
        """Symbolic links to folders at the root: never domains (see `image_files`), but reported."""
        return visible_subfolders(root)[1]

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
    domains, links = visible_subfolders(path)
    if not domains:
        skipped = f"; symbolic links to folders are not followed: {', '.join(links[:3])}" if links else ""
        raise UserError(f"no domain folders in {path} (expected {path}/<domain>/<class>/<image>){skipped}")
    attrs = {
        "ROOT": str(path),
        "ENVIRONMENTS": domains,
        "ENV_FOLDERS": domains,
        "__doc__": ImageFolderDomains.__doc__,
    }
    return type("ImageFolderDomains", (ImageFolderDomains,), attrs)


def split_options(name: str) -> tuple[str, dict[str, str]]:
    """("folder:/x", {"resolution": "64"}) for "folder:/x?resolution=64"; options are comma-separated."""
    base, mark, text = name.partition("?")
    if not mark:
        return name, {}
    options = {}
    for item in filter(None, text.split(",")):
        key, equal, value = item.partition("=")
        if not equal or key.strip() not in OPTIONS:
            raise UserError(f"dataset option '{item}' in '{name}' is not one of: "
                            + "; ".join(f"{k}=... ({v})" for k, v in OPTIONS.items()))
        options[key.strip()] = value.strip()
    return base, options


def with_options(cls: type[MultipleDomainDataset], options: dict[str, str]) -> type[MultipleEnvironmentImageFolder]:
    """A subclass of `cls` (a real-image dataset) bound to `options` (see `OPTIONS`); UserError otherwise."""
    if not (isinstance(cls, type) and issubclass(cls, MultipleEnvironmentImageFolder)):
        raise UserError(f"dataset {cls.__name__} takes no options ({', '.join(options)}): only real-image "
                        "datasets (DomainBed's and folder:PATH) do")
    attrs: dict[str, Any] = {"__doc__": cls.__doc__, "__module__": cls.__module__}
    if "resolution" in options:
        text = options["resolution"]
        if not text.isdigit() or not 8 <= int(text) <= 1024:
            raise UserError(f"dataset option resolution={text}: expected a whole number of pixels in 8..1024")
        size = int(text)
        attrs |= {"RESOLUTION": size, "input_shape": (3, size, size)}
    if "cache" in options:
        value = options["cache"].lower()
        if value not in ("yes", "no", "true", "false", "1", "0"):
            raise UserError(f"dataset option cache={options['cache']}: expected yes or no")
        attrs["CACHE"] = value in ("yes", "true", "1")
    return type(cls.__name__, (cls,), attrs)
