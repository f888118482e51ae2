"""The image files of a root/<class>/<image> tree, listed safely, and decoded with errors that name them.

Listing rules (a user's folder is not always clean):
  - hidden entries (".ipynb_checkpoints", ".DS_Store", "._x.png") are skipped at every level;
  - symbolic links to folders are never followed (out of the tree they read another dataset, inside
    it they read a folder twice, under the wrong class, or loop); a link to a file counts only if the
    file lies inside the dataset's root; what is skipped is reported (`ImageTree.skipped`);
  - files with an image extension only (torchvision's ImageFolder list), matched case-insensitively;
    one named like an image that is no regular file (a FIFO, a device, a dangling link) is skipped
    and reported too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from domainbed_recycle.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class CorruptImage(UserError):
    """An image file that cannot be decoded (or read correctly): one line, "corrupt image PATH: reason"
    (or "unsupported image PATH: reason").

    A DataLoader worker's exception comes back as `type(error)(worker traceback)`; the constructor keeps
    only the line naming the file, so the CLI still prints one line.
    """

    def __init__(self, message: str) -> None:
        for marker in ("corrupt image ", "unsupported image "):
            lines = [line for line in message.splitlines() if marker in line]
            if lines:
                message = lines[-1][lines[-1].index(marker):]
                break
        super().__init__(message)


@dataclass
class ImageTree:
    """The images of one root/<class>/<image> folder.

    Attributes:
        root: the folder, resolved.
        classes: sorted class folder names.
        samples: (path, class index) pairs, sorted by class then path (ImageFolder's order).
        skipped: what the listing did not read: symbolic links not followed, special files.
    """

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[str] = field(default_factory=list)

    def fingerprint(self) -> list[tuple[str, int, int, int, int]]:
        """(path relative to root, size in bytes, mtime in ns, ctime in ns, inode) of every sample:
        changes when a file does. Size and mtime alone miss an image replaced by another of the same size
        with its mtime set back (`cp -p`, `touch -r`, `rsync -t`); the ctime cannot be set back (the
        kernel sets it on every write or rename) and a file replaced by a rename has another inode.
        Hashing every file's content would also catch that, but reads the whole dataset (tens of GB for
        DomainNet) each time a run opens it, where `stat` reads none. A copied or `chmod`-ed dataset
        gets new ctimes and is decoded again once: a cost, never a stale image."""
        rows = []
        for path, _ in self.samples:
            stat = os.stat(path)
            rows.append((os.path.relpath(path, self.root), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
                         stat.st_ino))
        return rows


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _inside(target: Path, root: Path) -> bool:
    return target == root or root in target.parents


def visible_subfolders(root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(sorted names of the subfolders of `root` to use, paths of the symlinked folders skipped).

    Hidden folders are left out; symlinked folders are never followed (out of the tree they break the
    "one folder, one dataset" rule, inside it they read a folder twice or loop).
    """
    names, skipped = [], []
    for entry in os.scandir(root):
        if _hidden(entry.name) or not entry.is_dir():
            continue
        if entry.is_symlink():
            skipped.append(entry.path)
        else:
            names.append(entry.name)
    return sorted(names), sorted(skipped)


def scan_tree(root: str | os.PathLike, bound: str | os.PathLike | None = None) -> ImageTree:
    """List root/<class>/**/<image> under the rules above; `bound` (default: `root`) is the folder a
    file's symbolic link may not lead out of (a dataset's root when `root` is one of its domains).

    Raises UserError when `root` holds no class folder or no image.
    """
    root = Path(root).resolve()
    limit = Path(bound).resolve() if bound is not None else root
    classes, skipped = visible_subfolders(root)
    samples: list[tuple[str, int]] = []
    for index, name in enumerate(classes):
        samples += [(path, index) for path in sorted(_image_paths(root / name, limit, skipped))]
    if not samples:
        links = f"; skipped symbolic links: {', '.join(skipped[:3])}" if skipped else ""
        raise UserError(
            f"empty domain {root}: expected <class>/<image> files inside ({', '.join(IMAGE_EXTENSIONS)}){links}"
        )
    return ImageTree(root, classes, samples, skipped)


def _image_paths(folder: Path, limit: Path, skipped: list[str]) -> list[str]:
    """Image files under `folder`, recursively, without entering symlinked folders; a symlinked file
    counts only if it resolves inside `limit`. Appends what it does not follow to `skipped`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):  # followlinks=False: linked folders not entered
        for name in list(dirnames):
            if _hidden(name) or os.path.islink(os.path.join(dirpath, name)):
                dirnames.remove(name)
                if not _hidden(name):
                    skipped.append(os.path.join(dirpath, name))
        for name in filenames:
            path = os.path.join(dirpath, name)
            if _hidden(name) or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            if not os.path.isfile(path):  # a FIFO, a device, a dangling link: never read (a FIFO would block)
                skipped.append(path)
                continue
            if os.path.islink(path) and not _inside(Path(path).resolve(), limit):
                skipped.append(path)
                continue
            found.append(path)
    return found


def to_rgb(image, path: str | os.PathLike):
    """`image` (a PIL image of any mode) as 8-bit RGB. Images of more than 8 bits per channel are scaled,
    not clipped: 16-bit grey ("I;16*", or "I" from a 16-bit PNG) maps 0..65535 onto 0..255 (PIL's own
    `convert` would saturate every value above 255 to white); PIL reads 16-bit RGB(A) PNGs as 8-bit
    already. 32-bit integer or float pixels of no known range are refused (CorruptImage, one line)."""
    from PIL import Image

    mode = image.mode
    if mode.startswith("I;16") or (mode == "I" and image.format == "PNG"):  # PNG's 16-bit grey
        pixels = np.asarray(image).astype(np.int64)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise CorruptImage(f"corrupt image {path}: 16-bit pixel values outside 0..65535")
        grey = ((pixels * 255 + 32767) // 65535).astype(np.uint8)  # rounded x * 255 / 65535
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("I", "F") or mode.startswith(("I;", "F;")):
        kind = "floats" if mode.startswith("F") else "32-bit integers"
        raise CorruptImage(f"unsupported image {path}: its pixels are {kind} (PIL mode {mode}) with no fixed range; "
                           f"save it with 8 or 16 bits per channel (PNG, JPEG)")
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike, size: int | None = None):
    """The image at `path` as an RGB PIL image (8 bits per channel, see `to_rgb`), resized to `size` x
    `size` (bilinear, as DomainBed's Resize) when given. Raises CorruptImage naming the file when it
    cannot be decoded or has pixels of no known range."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = to_rgb(image, path)
        if size is not None:
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return rgb
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise CorruptImage(f"corrupt image {path}: {reason}") from None


def load_array(path: str | os.PathLike, size: int) -> np.ndarray:
    """uint8 [3, size, size] of the image at `path` (CorruptImage naming it if it cannot be decoded)."""
    return np.asarray(load_rgb(path, size), dtype=np.uint8).transpose(2, 0, 1)
