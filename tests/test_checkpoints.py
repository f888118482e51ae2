"""Checkpoint I/O: safetensors round trip, foreign files via weights_only, refusal of code-running pickles."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from domainbed_recycle import checkpoints
from domainbed_recycle.errors import UserError
from domainbed_recycle.networks import build_model

ARCH = {"featurizer": "small_cnn", "input_shape": [3, 28, 28], "num_classes": 4, "width": 4}


def test_safetensors_round_trip_keeps_tensors_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = build_model(ARCH)
    path = checkpoints.save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), {"arch": ARCH, "step": 7})
    state, meta = checkpoints.load_checkpoint(path)
    assert meta["arch"] == ARCH and meta["step"] == 7 and meta["format"] == checkpoints.FORMAT
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind


class _RunsCode:
    """Unpickling this calls os.system: a stand-in for a malicious checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model_dict": _RunsCode(str(marker))}, handle)
    with pytest.raises(UserError, match="refused to load"):
        checkpoints.load_checkpoint(path)
    assert not marker.exists()


def test_domainbed_model_pkl_is_read_with_weights_only_and_keys_mapped(tmp_path):
    torch.manual_seed(1)
    model = build_model(ARCH)
    state = model.state_dict()
    model_dict = {}
    for key, value in state.items():  # DomainBed's ERM state dict holds featurizer.*, classifier.*, network.*
        model_dict[key] = value
        head, rest = key.split(".", 1)
        model_dict[("network.0." if head == "featurizer" else "network.1.") + rest] = value
    path = tmp_path / "model.pkl"
    torch.save({"args": {"dataset": "VLCS"}, "model_input_shape": (3, 28, 28), "model_num_classes": 4,
                "model_num_domains": 3, "model_hparams": {"lr": 5e-5}, "model_dict": model_dict}, path)
    loaded, meta = checkpoints.load_checkpoint(path)
    assert meta["origin"] == "domainbed"
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_shape_mismatch_names_the_key(tmp_path):
    small = build_model(ARCH).featurizer.state_dict()
    wide = build_model(ARCH | {"width": 8}).featurizer.state_dict()
    with pytest.raises(UserError, match=r"'layers\.0\.weight' has shape"):
        checkpoints.check_compatible(small, wide, "featurizer", tmp_path / "x")


def test_missing_and_corrupt_files_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        checkpoints.load_checkpoint(tmp_path / "absent.safetensors")
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        checkpoints.load_checkpoint(corrupt)


def test_torchvision_resnet_state_dict_becomes_our_featurizer(tmp_path):
    import torchvision

    from domainbed_recycle.networks import ResNetFeaturizer

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(reference.state_dict(), path)
    state, _ = checkpoints.load_checkpoint(path)
    featurizer, classifier = checkpoints.split_state(state)
    assert classifier == {}  # the ImageNet head is dropped
    ours = ResNetFeaturizer(depth=18)
    checkpoints.check_compatible(ours.state_dict(), featurizer, "featurizer", path)
    ours.load_state_dict(featurizer)
    ours.eval()
    reference.fc = torch.nn.Identity()
    reference.eval()
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(ours(x), reference(x))


def test_checkpoints_get_the_mode_of_any_new_file(tmp_path):
    import os

    from domainbed_recycle.checkpoints import save_checkpoint

    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, {})
    (tmp_path / "plain.txt").write_text("x")
    assert os.stat(path).st_mode & 0o777 == os.stat(tmp_path / "plain.txt").st_mode & 0o777


def test_checkpoint_metadata_that_is_not_json_is_one_clear_error(tmp_path):
    import json
    import struct

    from domainbed_recycle.checkpoints import read_metadata
    from domainbed_recycle.errors import UserError

    header = json.dumps({"__metadata__": {"drecycle": "{not json"},
                         "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 4)
    with pytest.raises(UserError, match="metadata is not JSON"):
        read_metadata(path)
