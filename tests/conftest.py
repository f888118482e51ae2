"""Shared test settings and helpers: the tiny network every training test uses, tiny DomainBed-layout image
folders written here (no dataset is downloaded), isolated caches.

`make test-fast` (pytest -m "not slow") runs every test not marked `slow`; mark `@pytest.mark.slow` a test
that trains for more than a few seconds.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Hyper-parameters of the tiny network of training tests: the small CNN at width 8 (a 20-step run takes a
# few seconds on 2 cores). Tests take copies (`TINY_NET | {...}`) and never modify it.
TINY_NET = {"cnn_width": 8}

# DomainBed's folder layout, written out independently of the package: dataset -> (folder, domain folders)
DOMAINBED_FOLDERS = {
    "PACS": ("PACS", ["art_painting", "cartoon", "photo", "sketch"]),
    "VLCS": ("VLCS", ["Caltech101", "LabelMe", "SUN09", "VOC2007"]),
    "OfficeHome": ("office_home", ["Art", "Clipart", "Product", "Real World"]),
    "TerraIncognita": ("terra_incognita", ["location_100", "location_38", "location_43", "location_46"]),
    "DomainNet": ("domain_net", ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]),
}
PACS_CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
VLCS_CLASSES = ["bird", "car", "chair", "dog", "person"]


def make_tree(root: Path, domains: list[str], classes: list[str], per_class: int = 2, seed: int = 0,
              size: tuple[int, int] = (20, 60)) -> None:
    """Write root/<domain>/<class>/<i>.png: small random RGB images of varied sizes in [size)."""
    rng = np.random.default_rng(seed)
    for domain in domains:
        for name in classes:
            folder = root / domain / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = rng.integers(size[0], size[1], 2)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def make_domainbed_dataset(data_dir: Path, name: str, classes: list[str], per_class: int = 2, seed: int = 0) -> Path:
    """DomainBed's folder layout of dataset `name` under `data_dir`, with `per_class` images per class."""
    folder, domains = DOMAINBED_FOLDERS[name]
    make_tree(data_dir / folder, domains, classes, per_class=per_class, seed=seed)
    return data_dir / folder


@functools.cache
def package_literals() -> tuple[tuple[str, int, str], ...]:
    """(module path inside the package, line, value) of every string literal in `domainbed_recycle`, f-strings'
    literal parts included, docstrings and other bare string statements left out: what a test checks for
    names that only one module may spell (parsed once per session)."""
    import domainbed_recycle

    package = Path(domainbed_recycle.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        bare = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        found += [(path.relative_to(package).as_posix(), node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in bare]
    return tuple(found)


@pytest.fixture
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Decode-once folder caches and weight caches ($TORCH_HOME, $HF_HOME) in a fresh folder."""
    monkeypatch.setenv("DRECYCLE_CACHE", str(tmp_path / "drecycle_cache_env"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path
