"""`drecycle data list` and `drecycle data prepare`, run in-process through the CLI's `main`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domainbed_recycle.cli import main
from domainbed_recycle.datasets import load_all_datasets


def _png_tree(root: Path, domains: list[str], classes: list[str]) -> None:
    for domain in domains:
        for name in classes:
            (root / domain / name).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / domain / name / "0.png")


def test_list_shows_every_dataset_and_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture):
    _png_tree(tmp_path / "VLCS", ["Caltech101", "LabelMe", "SUN09", "VOC2007"], ["bird", "car"])
    assert main(["data", "list", "--data_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in load_all_datasets().names():
        assert name in out
    assert "C: 2, L: 2, S: 2, V: 2" in out and "2: bird, car" in out
    assert f"not found: {tmp_path / 'PACS'}" in out
    assert "not prepared" in out and "drecycle data prepare" in out
    assert "domainbed.scripts.download" in out
    assert "auxiliary" in out and "pretrain" in out and "3x224x224" in out and "3x28x28" in out
    assert "sources" in out and "Fashion-MNIST train" in out and "20 matplotlib fonts" in out
    assert "MNIST + 9 skimage images, disjoint per domain" in out and "files in --data_dir" in out


def test_prepare_then_list_shows_sizes(tmp_path: Path, capsys: pytest.CaptureFixture):
    names = ["RotatedFashion", "ColoredDigits"]
    assert main(["data", "prepare", "--data_dir", str(tmp_path), "--datasets", *names]) == 0
    out = capsys.readouterr().out
    assert "RotatedFashion" in out and "built in" in out and "prepared 2 dataset(s)" in out
    assert main(["data", "prepare", "--data_dir", str(tmp_path), "--datasets", "ColoredDigits"]) == 0
    assert "cached" in capsys.readouterr().out
    assert main(["data", "list", "--data_dir", str(tmp_path), "--datasets", *names]) == 0
    out = capsys.readouterr().out
    assert "0: 2500, 30: 2500, 60: 2500, 90: 2500" in out and "10: t-shirt/top, trouser" in out
    assert "+90%: 3334, +80%: 3333, -90%: 3333" in out and "2: 5-9, 0-4" in out


def test_prepare_rejects_non_builtin(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["data", "prepare", "--data_dir", str(tmp_path), "--datasets", "PACS"]) == 2
    assert "only built-in datasets" in capsys.readouterr().err
    assert main(["data", "list", "--datasets", "NoSuchSet"]) == 2
    assert "unknown dataset 'NoSuchSet'" in capsys.readouterr().err


def test_list_folder_dataset(tmp_path: Path, capsys: pytest.CaptureFixture):
    _png_tree(tmp_path / "root", ["a", "b"], ["x", "y", "z"])
    assert main(["data", "list", "--datasets", f"folder:{tmp_path / 'root'}"]) == 0
    out = capsys.readouterr().out
    assert "ImageFolderDomains" in out and "a: 3, b: 3" in out and "3: x, y, z" in out


def test_version_flag():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "domainbed_recycle.cli", "--version"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("drecycle ")
