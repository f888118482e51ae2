"""Real-image folder datasets (DomainBed's five and `folder:/root`) on tiny PNG trees made here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tree
from PIL import Image

from domainbed_recycle.datasets import DATASETS, get_dataset, get_dataset_class
from domainbed_recycle.datasets.folder import ImageFolderDomains, MultipleEnvironmentImageFolder
from domainbed_recycle.datasets.image_cache import CachedImageDomain
from domainbed_recycle.datasets.image_files import CorruptImage
from domainbed_recycle.datasets.sources import DataNotFound
from domainbed_recycle.datasets.splits import split_domain
from domainbed_recycle.errors import UserError

# DomainBed's folder names, written out independently of folder.py
LAYOUTS = {
    "PACS": ("PACS", ["art_painting", "cartoon", "photo", "sketch"], ["A", "C", "P", "S"]),
    "VLCS": ("VLCS", ["Caltech101", "LabelMe", "SUN09", "VOC2007"], ["C", "L", "S", "V"]),
    "OfficeHome": ("office_home", ["Art", "Clipart", "Product", "Real World"], ["A", "C", "P", "R"]),
    "TerraIncognita": (
        "terra_incognita",
        ["location_100", "location_38", "location_43", "location_46"],
        ["L100", "L38", "L43", "L46"],
    ),
    "DomainNet": (
        "domain_net",
        ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"],
        ["clip", "info", "paint", "quick", "real", "sketch"],
    ),
}
CLASSES = ["dog", "elephant", "guitar"]


@pytest.fixture(autouse=True)
def folder_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Decode-once caches of these tests go to a fresh folder (never the shared data cache)."""
    cache = tmp_path / "drecycle_cache_env"
    monkeypatch.setenv("DRECYCLE_CACHE", str(cache))
    return cache / "folders"


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_domainbed_layouts(name: str, tmp_path: Path):
    dir_name, folders, envs = LAYOUTS[name]
    make_tree(tmp_path / dir_name, folders, CLASSES)
    cls = DATASETS.get(name)
    assert cls.ENVIRONMENTS == envs and cls.HPARAMS_PROFILE == "resnet" and cls.ROLE == "target"
    assert cls.N_STEPS == 5001 and cls.CHECKPOINT_FREQ == (1000 if name == "DomainNet" else 300)
    dataset = get_dataset(name, str(tmp_path), [0], {"data_augmentation": True})
    assert dataset.input_shape == (3, 224, 224)
    assert dataset.classes == sorted(CLASSES) and dataset.num_classes == 3
    assert [len(d) for d in dataset.datasets] == [6] * len(envs)
    x, y = dataset[1][0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 0
    assert float(x.min()) < -0.5  # ImageNet-normalised, not in [0, 1]
    assert cls.summary(tmp_path) == {"domains": dict.fromkeys(envs, 6), "classes": sorted(CLASSES)}


def test_augmentation_only_on_training_domains(tmp_path: Path):
    make_tree(tmp_path / "PACS", LAYOUTS["PACS"][1], CLASSES, per_class=1)
    torch.manual_seed(0)
    dataset = get_dataset("PACS", str(tmp_path), [2], {"data_augmentation": True})
    for i, domain in enumerate(dataset.datasets):
        first, second = domain[0][0], domain[0][0]
        if i == 2:  # test domain: DomainBed's plain transform, deterministic
            assert torch.equal(first, second)
        else:
            assert not torch.equal(first, second)
    plain = get_dataset("PACS", str(tmp_path), [2], {"data_augmentation": False})
    for domain in plain.datasets:
        assert torch.equal(domain[0][0], domain[0][0])
    # plain transform = Resize((224, 224)) + ToTensor + Normalize, checked by hand on one pixel
    image = Image.open(Path(plain.datasets[0].samples[0][0])).convert("RGB").resize((224, 224), Image.BILINEAR)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = (torch.tensor(np.asarray(image)[100, 100] / 255.0, dtype=torch.float32) - mean) / std
    assert torch.allclose(plain.datasets[0][0][0][:, 100, 100], expected, atol=0.05)


def test_missing_root_names_path_and_download(tmp_path: Path):
    with pytest.raises(DataNotFound) as info:
        get_dataset("OfficeHome", str(tmp_path), [0], {})
    message = str(info.value)
    assert str(tmp_path / "office_home") in message and "Real World" in message
    assert "domainbed.scripts.download" in message and "--data_dir" in message
    assert info.value.short == f"not found: {tmp_path / 'office_home'}"
    with pytest.raises(DataNotFound, match="needs --data_dir"):
        get_dataset("PACS", None, [0], {})


def test_missing_domain_folder(tmp_path: Path):
    make_tree(tmp_path / "VLCS", ["Caltech101", "LabelMe", "VOC2007"], CLASSES, per_class=1)
    with pytest.raises(DataNotFound) as info:
        get_dataset("VLCS", str(tmp_path), [0], {})
    message = str(info.value)
    assert "['SUN09']" in message and str(tmp_path / "VLCS") in message
    assert "Caltech101, LabelMe, SUN09, VOC2007" in message


def test_mismatched_classes_listed(tmp_path: Path):
    root = tmp_path / "PACS"
    make_tree(root, ["art_painting", "cartoon", "photo"], CLASSES, per_class=1)
    make_tree(root, ["sketch"], ["dog", "guitar", "horse"], per_class=1)
    with pytest.raises(UserError) as info:
        get_dataset("PACS", str(tmp_path), [0], {})
    message = str(info.value)
    assert "S lacks ['elephant']" in message and "A lacks ['horse']" in message


def test_empty_domain(tmp_path: Path):
    root = tmp_path / "PACS"
    make_tree(root, ["art_painting", "cartoon", "photo"], CLASSES, per_class=1)
    for name in CLASSES:
        (root / "sketch" / name).mkdir(parents=True)
    with pytest.raises(UserError, match="empty domain") as info:
        get_dataset("PACS", str(tmp_path), [0], {})
    assert str(root / "sketch") in str(info.value)


def test_generic_folder_prefix(tmp_path: Path):
    root = tmp_path / "my data"
    make_tree(root, ["winter", "autumn", "spring"], ["cat", "ant"], per_class=2)
    (root / ".hidden").mkdir()
    cls = get_dataset_class(f"folder:{root}")
    assert issubclass(cls, ImageFolderDomains) and issubclass(cls, MultipleEnvironmentImageFolder)
    assert cls.ENVIRONMENTS == ["autumn", "spring", "winter"]
    dataset = get_dataset(f"folder:{root}", None, [1], {"data_augmentation": False})
    assert dataset.ENVIRONMENTS == ["autumn", "spring", "winter"] and dataset.classes == ["ant", "cat"]
    assert [len(d) for d in dataset.datasets] == [4, 4, 4]
    assert dataset[0][0][0].shape == (3, 224, 224)
    assert cls.summary(None)["domains"] == {"autumn": 4, "spring": 4, "winter": 4}
    direct = ImageFolderDomains(str(root), [], {})  # the root given as data_dir
    assert direct.ENVIRONMENTS == ["autumn", "spring", "winter"]


def test_generic_folder_errors(tmp_path: Path):
    with pytest.raises(DataNotFound, match="root not found"):
        get_dataset(f"folder:{tmp_path / 'absent'}", None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no domain folders"):
        get_dataset_class(f"folder:{tmp_path / 'empty'}")


def test_resolution_option_and_cache(tmp_path: Path, folder_cache: Path):
    root = tmp_path / "data"
    make_tree(root, ["a", "b"], ["cat", "ant"], per_class=3)
    name = f"folder:{root}?resolution=32"
    cls = get_dataset_class(name)
    assert cls.input_shape == (3, 32, 32) and cls.CACHE and cls.ENVIRONMENTS == ["a", "b"]
    dataset = get_dataset(name, None, [1], {"data_augmentation": False})
    assert dataset.input_shape == (3, 32, 32) and dataset.N_WORKERS == 0
    domain = dataset.datasets[0]
    assert isinstance(domain, CachedImageDomain) and len(domain) == 6
    caches = sorted(folder_cache.glob("*.npy"))
    assert len(caches) == 2 and all("32px" in c.name for c in caches)
    # The cached images equal DomainBed's plain transform at the same size, read on the fly.
    direct = get_dataset(f"{name},cache=no", None, [1], {"data_augmentation": False})
    assert not isinstance(direct.datasets[0], CachedImageDomain)
    x, y = domain.batch(torch.arange(6))
    expected = torch.stack([direct.datasets[0][i][0] for i in range(6)])
    assert x.shape == (6, 3, 32, 32) and torch.allclose(x, expected, atol=1e-5)
    assert y.tolist() == [label for _, label in direct.datasets[0].samples] == [0, 0, 0, 1, 1, 1]
    # A second build reads the cache; a changed file or resolution makes a new one.
    mtimes = [c.stat().st_mtime_ns for c in caches]
    get_dataset(name, None, [1], {})
    assert [c.stat().st_mtime_ns for c in sorted(folder_cache.glob("*.npy"))] == mtimes
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(root / "a" / "cat" / "0.png")
    changed = get_dataset(name, None, [1], {})
    assert len(list(folder_cache.glob("*.npy"))) == 3
    assert float(changed.datasets[0].batch(torch.tensor([3]))[0].max()) < -1.5  # cat/0.png, now black
    get_dataset(f"folder:{root}?resolution=16", None, [1], {})
    assert len(list(folder_cache.glob("*16px*.npy"))) == 2
    # DomainBed's five keep 224 and on-the-fly reading unless asked
    assert DATASETS.get("PACS").input_shape == (3, 224, 224) and not DATASETS.get("PACS").CACHE
    assert get_dataset_class("PACS?resolution=64,cache=yes").input_shape == (3, 64, 64)


@pytest.mark.parametrize("option", ["resolution=0", "resolution=big", "size=64", "cache=maybe", "resolution"])
def test_bad_options_are_one_line(tmp_path: Path, option: str):
    make_tree(tmp_path / "data", ["a"], ["cat"], per_class=1)
    with pytest.raises(UserError) as info:
        get_dataset_class(f"folder:{tmp_path / 'data'}?{option}")
    assert "\n" not in str(info.value) and option.split("=")[-1] in str(info.value)
    with pytest.raises(UserError, match="takes no options"):
        get_dataset_class("RotatedDigits?resolution=64")


def test_cached_augmentation_only_on_training_draws_of_training_domains(tmp_path: Path):
    root = tmp_path / "data"
    make_tree(root, ["a", "b"], ["cat", "ant"], per_class=5)
    dataset = get_dataset(f"folder:{root}?resolution=24", None, [1], {"data_augmentation": True})
    plain = get_dataset(f"folder:{root}?resolution=24", None, [1], {"data_augmentation": False})
    index = torch.arange(4)
    torch.manual_seed(0)
    train_in, _ = split_domain(dataset.datasets[0], 0.2, 0)
    assert isinstance(train_in, CachedImageDomain)
    first, second = train_in.batch(index, augment=True)[0], train_in.batch(index, augment=True)[0]
    assert first.shape == (4, 3, 24, 24) and not torch.equal(first, second)
    # evaluation (no augment flag), test domains and data_augmentation=False never augment
    plain_in, _ = split_domain(plain.datasets[0], 0.2, 0)
    assert torch.equal(train_in.batch(index)[0], plain_in.batch(index)[0])
    assert torch.equal(plain_in.batch(index, augment=True)[0], plain_in.batch(index)[0])
    test_domain = dataset.datasets[1]
    assert torch.equal(test_domain.batch(index, augment=True)[0], plain.datasets[1].batch(index)[0])


def test_loader_workers_leave_cores_to_training_threads(tmp_path: Path):
    make_tree(tmp_path / "data", ["a"], ["cat"], per_class=1)
    cores = len(os.sched_getaffinity(0))
    threads = torch.get_num_threads()
    gpu = torch.cuda.is_available()  # with a GPU the training threads leave all cores but one
    try:
        torch.set_num_threads(1)
        assert get_dataset(f"folder:{tmp_path / 'data'}?cache=no", None, [], {}).N_WORKERS == min(8, cores - 1)
        torch.set_num_threads(cores)
        busy = 1 if gpu else cores
        assert get_dataset(f"folder:{tmp_path / 'data'}?cache=no", None, [], {}).N_WORKERS == min(8, cores - busy)
    finally:
        torch.set_num_threads(threads)


def test_symlinks_are_not_followed_out_of_or_around_the_tree(tmp_path: Path, capsys: pytest.CaptureFixture):
    root = tmp_path / "data"
    make_tree(root, ["a", "b"], ["cat", "ant", "bee"], per_class=2)  # 12 images
    outside = tmp_path / "elsewhere"
    make_tree(outside, ["x"], ["cat"], per_class=3)
    (root / "a" / "cat" / "loop").symlink_to(root / "a")  # a loop around the tree
    (root / "a" / "ant" / "to_cat").symlink_to(root / "a" / "cat")  # cat images under ant
    (root / "b" / "bee" / "out").symlink_to(outside / "x" / "cat")  # a folder out of the tree
    (root / "b" / "cat" / "far.png").symlink_to(outside / "x" / "cat" / "0.png")  # a file out of the tree
    (root / "b" / "dog").symlink_to(outside / "x" / "cat")  # a class folder out of the tree
    (root / "c").symlink_to(outside / "x")  # a domain folder out of the tree
    (root / "b" / "cat" / "same.png").symlink_to(root / "b" / "cat" / "0.png")  # a file inside: kept
    cls = get_dataset_class(f"folder:{root}?resolution=16")
    assert cls.ENVIRONMENTS == ["a", "b"]
    dataset = get_dataset(f"folder:{root}?resolution=16", None, [0], {})
    assert dataset.classes == ["ant", "bee", "cat"]
    assert [len(d) for d in dataset.datasets] == [6, 7]
    assert dataset.datasets[0].labels.tolist() == [0, 0, 1, 1, 2, 2]
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "skipped 6 entries" in warning[0]  # the 5 links inside, and the domain c
    assert str(root / "c") in warning[0]
    assert get_dataset_class(f"folder:{root}").summary(None)["domains"] == {"a": 6, "b": 7}


def test_hidden_folders_and_files_are_skipped(tmp_path: Path):
    root = tmp_path / "data"
    make_tree(root, ["a", "b"], ["cat", "ant"], per_class=2)
    make_tree(root, [".ipynb_checkpoints"], ["cat", "ant"], per_class=1)  # a hidden domain
    make_tree(root / "a", [".ipynb_checkpoints"], ["x"], per_class=1)  # a hidden class
    make_tree(root / "b" / "cat", [".cache"], ["y"], per_class=1)  # a hidden folder inside a class
    (root / "a" / "cat" / "._0.png").write_bytes(b"AppleDouble metadata, not an image")
    (root / "b" / "ant" / ".DS_Store").write_bytes(b"\0\0")
    dataset = get_dataset(f"folder:{root}?resolution=16", None, [0], {})
    assert dataset.ENVIRONMENTS == ["a", "b"] and dataset.classes == ["ant", "cat"]
    assert [len(d) for d in dataset.datasets] == [4, 4]


def _corrupt_tree(root: Path) -> Path:
    make_tree(root, ["a", "b"], ["cat", "ant"], per_class=2)
    bad = root / "b" / "cat" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    return bad


def test_corrupt_image_named_in_one_line_before_training(tmp_path: Path):
    bad = _corrupt_tree(tmp_path / "data")
    with pytest.raises(CorruptImage) as info:
        get_dataset(f"folder:{tmp_path / 'data'}?resolution=16", None, [0], {})
    message = str(info.value)
    assert message.startswith(f"corrupt image {bad}: ") and "\n" not in message and len(message) > len(str(bad)) + 17


def test_corrupt_image_named_in_one_line_when_first_read_by_a_worker(tmp_path: Path):
    bad = _corrupt_tree(tmp_path / "data")
    dataset = get_dataset(f"folder:{tmp_path / 'data'}?resolution=16,cache=no", None, [0], {})
    loader = torch.utils.data.DataLoader(dataset.datasets[1], batch_size=4, num_workers=1)
    with pytest.raises(CorruptImage) as info:
        next(iter(loader))
    message = str(info.value)
    assert message.startswith(f"corrupt image {bad}: ") and "\n" not in message


@pytest.mark.slow
def test_train_cli_on_a_cached_folder(tmp_path: Path, capsys: pytest.CaptureFixture):
    from domainbed_recycle.cli import main

    root = tmp_path / "data"
    make_tree(root, ["a", "b", "c"], ["cat", "ant"], per_class=6)
    out = tmp_path / "run"
    args = ["train", "--dataset", f"folder:{root}?resolution=16", "--test_envs", "2", "--hparams_profile", "small",
            "--hparams", '{"data_augmentation": true, "batch_size": 8}', "--steps", "3", "--output_dir", str(out),
            "--no_progress", "--skip_model_save"]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and 0.0 <= records[-1]["env2_out_acc"] <= 1.0  # DomainBed: loop index of step 3
    assert records[-1]["args"]["dataset"] == f"folder:{root}?resolution=16"
    bad = _corrupt_tree(tmp_path / "broken")
    capsys.readouterr()
    broken = [f"folder:{tmp_path / 'broken'}?resolution=16" if a.startswith("folder:") else a for a in args]
    broken[broken.index("--test_envs") + 1] = "1"
    broken[broken.index("--output_dir") + 1] = str(tmp_path / "run2")
    assert main(broken) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and f"corrupt image {bad}" in err[0]
