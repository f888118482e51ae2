"""Real-image folder datasets (DomainBed's five and `folder:/root`) on tiny PNG trees made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from domainbed_recycle.datasets import DATASETS, get_dataset, get_dataset_class
from domainbed_recycle.datasets.folder import ImageFolderDomains, MultipleEnvironmentImageFolder
from domainbed_recycle.datasets.sources import DataNotFound
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


def make_tree(root: Path, domains: list[str], classes: list[str], per_class: int = 2, seed: int = 0) -> None:
    """Write root/<domain>/<class>/<i>.png: small random RGB images of varied sizes."""
    rng = np.random.default_rng(seed)
    for domain in domains:
        for name in classes:
            folder = root / domain / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = rng.integers(20, 60, 2)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


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
