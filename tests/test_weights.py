"""Weights named by their library (torchvision:, timm:, hf:) or given as files, read from caches made here."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import PACS_CLASSES, make_domainbed_dataset

from domainbed_recycle import weights
from domainbed_recycle.checkpoints import load_checkpoint, read_metadata
from domainbed_recycle.errors import UserError

R18 = "torchvision:ResNet18_Weights.IMAGENET1K_V1"
R18_FILE = "resnet18-f37072fd.pth"  # the name in torchvision's URL for those weights


def _random_resnet18(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torchvision.models.resnet18().state_dict()


def _cache_torchvision(torch_home: Path, state: dict, name: str = R18_FILE) -> Path:
    path = torch_home / "hub" / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _cache_hf(hf_home: Path, repo_id: str, filename: str, state: dict) -> Path:
    """A Hugging Face cache entry as huggingface_hub lays it out: refs/main -> snapshots/<commit>/<file>."""
    from safetensors.torch import save_file

    folder = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    path = folder / "snapshots" / commit / filename
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_torchvision_name_not_cached_is_one_line_naming_url_and_path(isolated_caches):
    with pytest.raises(UserError) as error:
        weights.resolve(R18)
    message = str(error.value)
    expected = isolated_caches / "torch_home" / "hub" / "checkpoints" / R18_FILE
    assert "\n" not in message and str(expected) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message


def test_torchvision_name_reads_the_cached_file_and_records_it(isolated_caches):
    state = _random_resnet18()
    path = _cache_torchvision(isolated_caches / "torch_home", state)
    loaded, metadata = load_checkpoint(R18)
    assert metadata["source"] == str(path) and read_metadata(R18) == {}
    assert set(loaded) == {f"featurizer.network.{k}" for k in state if not k.startswith("fc.")}
    assert torch.equal(loaded["featurizer.network.conv1.weight"], state["conv1.weight"])
    identity = weights.identity(R18)
    assert identity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert identity["sha256_matches_name"] is False  # random weights are not the published file


@pytest.mark.parametrize("ref", ["torchvision:Nope", "torchvision:ResNet18_Weights.NOPE", "torchvision:",
                                 "timm:not_a_model_at_all", "/no/such/file.pth"])
def test_bad_names_are_one_line(isolated_caches, ref):
    with pytest.raises(UserError) as error:
        weights.resolve(ref)
    assert "\n" not in str(error.value)


def test_timm_name_reads_the_hub_cache_into_our_resnet(isolated_caches):
    timm = pytest.importorskip("timm")
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    with pytest.raises(UserError, match=r"timm/resnet18\.a1_in1k.*huggingface-cli download"):
        weights.resolve("timm:resnet18.a1_in1k")
    _cache_hf(isolated_caches / "hf_home", "timm/resnet18.a1_in1k", "model.safetensors", state)
    loaded, _ = load_checkpoint("timm:resnet18.a1_in1k")
    assert torch.equal(loaded["featurizer.network.layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    from domainbed_recycle.networks import build_featurizer

    featurizer = build_featurizer({"featurizer": "resnet18", "input_shape": [3, 32, 32], "num_classes": 2})
    featurizer.load_state_dict({k[len("featurizer."):]: v for k, v in loaded.items()})  # same keys, shapes


def test_hf_repo_reads_its_cached_file(isolated_caches):
    pytest.importorskip("huggingface_hub")
    state = _random_resnet18(1)
    path = _cache_hf(isolated_caches / "hf_home", "someone/r18-finetuned", "pytorch_model.bin", {})
    path.unlink()
    torch.save(state, path)  # a .bin state dict, read with weights_only=True
    assert weights.resolve("hf:someone/r18-finetuned") == path
    loaded, _ = load_checkpoint("hf:someone/r18-finetuned")
    assert torch.equal(loaded["featurizer.network.bn1.weight"], state["bn1.weight"])
    assert not any(key.startswith("featurizer.network.fc.") for key in loaded)  # the ImageNet head is dropped


def _train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "domainbed_recycle.cli", "train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _last_record(run: Path) -> dict:
    return json.loads((run / "results.jsonl").read_text().splitlines()[-1])


@pytest.mark.slow
def test_real_dataset_trains_from_imagenet_v1_by_default_and_random_only_when_asked(isolated_caches):
    """`drecycle train --dataset PACS` offline: one line naming the file without it; with it in the cache,
    trains from it and records it; `--pretrained none` trains a random featurizer on purpose."""
    data = isolated_caches / "data"
    make_domainbed_dataset(data, "PACS", PACS_CLASSES[:3], per_class=2)
    common = ["--dataset", "PACS?resolution=32,cache=yes", "--data_dir", str(data), "--steps", "2",
              "--hparams", json.dumps({"arch": "resnet18", "batch_size": 2}), "--no_progress"]
    out = isolated_caches / "runs"
    missing = _train([*common, "--output_dir", str(out / "a")], isolated_caches)
    assert missing.returncode == 2 and not (out / "a").exists()
    (line,) = missing.stderr.strip().splitlines()
    assert str(isolated_caches / "torch_home" / "hub" / "checkpoints" / R18_FILE) in line

    path = _cache_torchvision(isolated_caches / "torch_home", _random_resnet18())
    ran = _train([*common, "--output_dir", str(out / "b")], isolated_caches)
    assert ran.returncode == 0, ran.stderr
    record = _last_record(out / "b")
    assert record["args"]["pretrained"] == R18 and record["hparams"]["freeze_bn"] is True
    assert record["init"]["featurizer"] == R18
    assert record["init"]["featurizer_weights"]["file"] == str(path.resolve())
    assert "is not the file published" in ran.stderr  # a random file under the published name is flagged

    scratch = _train([*common, "--output_dir", str(out / "c"), "--pretrained", "none"], isolated_caches)
    assert scratch.returncode == 0, scratch.stderr
    record = _last_record(out / "c")
    assert record["args"]["pretrained"] == "none" and record["init"]["label"] == "random"
    assert "featurizer" not in record["init"]
    assert record["hparams"]["freeze_bn"] is False  # BatchNorm learns its statistics from scratch
    assert record["hparams"]["lr"] == 1e-3  # the from-scratch profile's default, not the fine-tuning one
