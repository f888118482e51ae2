"""The one place where model files are read and written (and where their weights are checked: floating
point and finite, `check_weights`).

Our checkpoints are safetensors files whose metadata holds a JSON description (architecture, classes,
dataset, step, ...). Foreign files (torchvision or timm state dicts, DomainBed's `model.pkl`) are read
with `torch.load(weights_only=True)` only: nothing in this project unpickles arbitrary objects, so a
file that would run code when unpickled is refused. Every reader takes a weights reference (a path, or
a name such as `torchvision:ResNet50_Weights.IMAGENET1K_V1`, see `weights`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from domainbed_recycle.errors import UserError, write_error_reason
from domainbed_recycle.weights import HARNESS, KEY_FORMATS, resolve

FORMAT = "domainbed_recycle/1"
_META_KEY = "drecycle"
KEY_FORMAT_FIELD = "key_format"  # the metadata field naming a file's key names (weights.KEY_FORMATS)


# Integer buffers a state dict may hold (BatchNorm's step counter, transformers' position ids); every other
# entry is a weight.
INTEGER_BUFFERS = ("num_batches_tracked", "position_ids")


def check_weights(state: Mapping[str, Any], where: str | Path, saving: bool = False) -> None:
    """UserError (one line naming `where` and the entry) unless every entry of `state` is a tensor of
    floating point numbers, all finite (integer buffers such as BatchNorm's `num_batches_tracked`
    excepted): the one check of every checkpoint written (`save_checkpoint`) or read (`load_checkpoint`),
    so no entry point (`--init`, `--pretrained`, `import`, `merge`) accepts or makes weights that an
    average, a training run or an evaluation would silently truncate or propagate as NaN."""
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{where}: entry '{key}' is not a tensor; expected a state dict of tensors")
        if value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                reason = ("nothing was written (a merge or scaling parameter too large?)" if saving
                          else "the run diverged? leave it out")
                raise UserError(f"{where}: its weights are not finite ('{key}' holds NaN or inf): {reason}")
        elif key.rpartition(".")[2] not in INTEGER_BUFFERS:
            raise UserError(f"{where}: entry '{key}' holds {str(value.dtype).replace('torch.', '')} values, not "
                            f"floating point weights (a model loading them would truncate them): refused")


def save_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write `state_dict` + `metadata` to `path` atomically (temp file in the same folder, then rename).

    The weights are checked first (`check_weights`); a failed write (read-only folder, full disk, a
    path that cannot hold a file) is one UserError naming the path, and leaves no temp file."""
    from safetensors.torch import save_file

    path = Path(path)
    check_weights(state_dict, path, saving=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    meta = {_META_KEY: json.dumps({"format": FORMAT, **metadata}, sort_keys=True, default=str)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except OSError:
            raise
        except Exception as error:  # safetensors' own error type wraps the system's (no space, read-only...)
            raise UserError(f"cannot write {path}: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
                            ) from None
        os.chmod(tmp, _default_mode())  # safetensors creates 0600 files: give them the run's usual mode
        os.replace(tmp, path)
    except OSError as error:  # named by the file asked for, not by the temp file or a parent folder
        raise UserError(f"cannot write {path}: {write_error_reason(error)}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def _default_mode() -> int:
    """The mode `open()` gives a new file here (0o666 less the umask), e.g. 0o644: readable by the group
    on a cluster, like the rest of a run folder."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Metadata of one of our safetensors checkpoints, without loading its tensors; {} for a file that
    carries none (anyone's safetensors, a `.pth` state dict, named weights)."""
    from safetensors import safe_open

    path = resolve(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(_META_KEY)
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"{path}: not a readable safetensors file ({error})") from None
    if raw is None:
        return {}
    try:
        metadata = json.loads(raw)
    except ValueError as error:
        raise UserError(f"{path}: its '{_META_KEY}' metadata is not JSON ({error}); not a checkpoint of "
                        "this harness, or a damaged one") from None
    if not isinstance(metadata, dict):
        raise UserError(f"{path}: its '{_META_KEY}' metadata is not a JSON object")
    return metadata


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) of any supported model file.

    - `.safetensors`: ours (metadata from the header) or anyone's (empty metadata);
    - anything else: `torch.load(weights_only=True)`; a DomainBed `model.pkl` (dict with `model_dict`)
      is unwrapped and its keys mapped to ours (`featurizer.*`, `classifier.*`).
    `path` may also name weights (`torchvision:...`, `timm:...`, `hf:...`), read from their cache.
    """
    path = resolve(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as error:
            raise UserError(f"{path}: not a readable safetensors file ({error})") from None
        metadata = read_metadata(path)
        check_weights(state, path)
        if metadata.get(KEY_FORMAT_FIELD, HARNESS) != HARNESS:  # one of ours, exported under other names
            return import_keys(state), metadata
        return (state if metadata else to_model_keys(state)), metadata
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for unsafe pickles, RuntimeError for corrupt files
        raise UserError(
            f"{path}: refused to load: not a plain tensor checkpoint readable with weights_only=True "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    return _unwrap_foreign(obj, path)


def _unwrap_foreign(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    metadata: dict[str, Any] = {"source": str(path)}
    if isinstance(obj, dict) and "model_dict" in obj:  # DomainBed's model.pkl
        for key in ("model_input_shape", "model_num_classes", "model_num_domains", "model_hparams", "args"):
            if key in obj:
                metadata[f"domainbed_{key}"] = obj[key]
        metadata["origin"] = "domainbed"
        state = _map_domainbed_keys(obj["model_dict"])
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        state = obj["state_dict"]
    elif isinstance(obj, dict):
        state = obj
    else:
        raise UserError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    check_weights(state, path)
    return to_model_keys(state), metadata


def to_model_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a foreign state dict onto our key names (`featurizer.*`, `classifier.*`).

    - ours or DomainBed's (keys already start with featurizer./classifier.): unchanged;
    - a torchvision ResNet (`conv1.weight`, `layer1.*`, `fc.*`): its body becomes our ResNet
      featurizer (`featurizer.network.*`) and its ImageNet head `fc.*` is dropped;
    - anything else: unchanged (the architecture check will then name what does not match).
    """
    keys = set(state)
    if any(k.startswith(("featurizer.", "classifier.")) for k in keys):
        return dict(state)
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return {f"featurizer.network.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    return dict(state)


def export_keys(state: Mapping[str, torch.Tensor], key_format: str) -> dict[str, torch.Tensor]:
    """`state` (our names) under `key_format`'s names: "harness" unchanged; "torchvision" and "timm" (their
    ResNet-18/50 use the same names) the ResNet's own keys (`conv1.weight`, `layer1.0.bn1.*`, ...) and our
    classifier as its `fc` head, so `torchvision.models.resnet50(num_classes=C).load_state_dict` or timm's
    `create_model("resnet50", num_classes=C).load_state_dict` takes the file as it is.

    Raises:
        UserError: an unknown format, or torchvision/timm names asked for a model that is not a ResNet.
    """
    if key_format not in KEY_FORMATS:
        raise UserError(f"unknown key format '{key_format}'; known: {', '.join(KEY_FORMATS)}")
    if key_format == HARNESS:
        return dict(state)
    featurizer, classifier = split_state(state)
    if "network.conv1.weight" not in featurizer or not all(k.startswith("network.") for k in featurizer):
        raise UserError(f"{key_format} key names exist for a ResNet featurizer (resnet18, resnet50); this model's "
                        f"featurizer has keys such as '{next(iter(featurizer), '(none)')}'")
    return {**{k[len("network."):]: v for k, v in featurizer.items()}, **{f"fc.{k}": v for k, v in classifier.items()}}


def import_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `export_keys` for torchvision/timm names: `fc.*` is our classifier, the rest our
    ResNet featurizer."""
    return {(f"classifier.{k[3:]}" if k.startswith("fc.") else f"featurizer.network.{k}"): v for k, v in state.items()}


def _map_domainbed_keys(model_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DomainBed's ERM saves featurizer.*, classifier.* and network.0/1.* duplicates: keep ours."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model_dict.items():
        if key.startswith("network.0."):
            out.setdefault("featurizer." + key[len("network.0."):], value)
        elif key.startswith("network.1."):
            out.setdefault("classifier." + key[len("network.1."):], value)
        else:
            out[key] = value
    return out


def split_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(featurizer part, classifier part) of a model state dict, prefixes stripped."""
    featurizer = {k[len("featurizer."):]: v for k, v in state.items() if k.startswith("featurizer.")}
    classifier = {k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")}
    return featurizer, classifier


def check_compatible(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], what: str, path: str | Path
) -> None:
    """Raise a UserError naming the first missing/unexpected key or shape mismatch between two state dicts."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. '{missing[0]}')")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')")
        raise UserError(f"{path}: {what} does not match the architecture: " + ", ".join(detail) + " keys")
    for key, tensor in expected.items():
        if tuple(found[key].shape) != tuple(tensor.shape):
            raise UserError(
                f"{path}: {what} does not match the architecture: '{key}' has shape "
                f"{tuple(found[key].shape)}, expected {tuple(tensor.shape)}"
            )
