"""Weights references: a model file named by its path, or by the library that publishes it.

A *weights reference* is a string, accepted everywhere a checkpoint is (`--pretrained`, `--init*`, a
spec's `[foundation] checkpoint`, `drecycle import`, `merge --base`, fused sources):
  - a file: ours (`.safetensors` with metadata), anyone's `.safetensors`, or a `.pth`/`.pt` state dict
    (torchvision or timm key names), read with `torch.load(weights_only=True)`;
  - `torchvision:<weights enum member>`, e.g. `torchvision:ResNet50_Weights.IMAGENET1K_V1`: the file
    torchvision's weights API downloads, read from its cache (`$TORCH_HOME/hub/checkpoints/`);
  - `timm:<model name>`, e.g. `timm:resnet50.a1_in1k`: the file timm downloads from the Hugging Face
    Hub, read from the Hub's cache (`$HF_HOME/hub`); needs the `hub` extra (timm, huggingface_hub);
  - `hf:<repo id>`, e.g. `hf:timm/resnet50.a1_in1k`: that Hub repository's `model.safetensors` (or
    `pytorch_model.bin`), from the same cache; needs huggingface_hub;
  - `none`: no weights, a random initialisation asked for on purpose.
Nothing is downloaded at run time: a name whose file is not cached is one error line naming the URL
(or repository) to fetch on a machine online and the exact path to put the file at.

Floor: data, models (imports errors only; torch, torchvision and the hub libraries lazily).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from domainbed_recycle.errors import UserError
from domainbed_recycle.files import describe_kind

NONE = "none"  # a random initialisation, on purpose
TORCHVISION, TIMM, HF = "torchvision", "timm", "hf"
SCHEMES = (TORCHVISION, TIMM, HF)
HUB_EXTRA = "pip install 'domainbed-recycle[hub]'"
# What DomainBed and the Ratatouille reference load with `torchvision.models.resnet*(pretrained=True)`.
DEFAULT_WEIGHTS = {
    "resnet18": "torchvision:ResNet18_Weights.IMAGENET1K_V1",
    "resnet50": "torchvision:ResNet50_Weights.IMAGENET1K_V1",
}
_HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's and transformers' repos hold
HARNESS = "harness"
# key names a model file can be written with (`drecycle merge --format`): ours, or a library's own
KEY_FORMATS = (HARNESS, TORCHVISION, TIMM)


class WeightsNotCached(UserError):
    """A named set of weights whose file is not in its library's cache (nothing downloads)."""


def scheme(ref: str | os.PathLike) -> str | None:
    """'torchvision', 'timm' or 'hf' for a named reference; None for a file path (or `none`)."""
    text = str(ref)
    head, colon, _ = text.partition(":")
    return head if colon and head in SCHEMES else None


def is_none(ref: str | os.PathLike | None) -> bool:
    """Whether `ref` asks for no weights (a random initialisation)."""
    return ref is not None and str(ref).strip().lower() == NONE


def normalize(ref: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """`ref` as it is stored in a run's arguments: a name unchanged, a file path made absolute (relative
    paths are read against `base`, default the current folder), `~` expanded."""
    if scheme(ref) or is_none(ref):
        return str(ref)
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = Path(base or Path.cwd()) / path
    return str(path.resolve())


def resolve(ref: str | os.PathLike) -> Path:
    """The file `ref` names, checked to exist; UserError (one line) otherwise."""
    kind = scheme(ref)
    if is_none(ref):
        raise UserError("no weights file for 'none' (a random initialisation)")
    if kind is None:
        path = Path(ref).expanduser()
        if not path.is_file():
            if path.exists():  # a folder, a FIFO, a device: never opened (a FIFO would block the reader)
                raise UserError(f"{path} is {describe_kind(path)}, not a checkpoint file")
            raise UserError(f"checkpoint not found: {path}")
        return path
    name = str(ref)[len(kind) + 1:]
    if not name:
        raise UserError(f"'{ref}': give a name after '{kind}:' (e.g. {DEFAULT_WEIGHTS['resnet50']})")
    return {TORCHVISION: _torchvision_file, TIMM: _timm_file, HF: _hf_file}[kind](name)


def problem(ref: str | os.PathLike) -> str | None:
    """The one-line reason `ref` cannot be read here, or None when its file is there (for dry runs)."""
    try:
        resolve(ref)
    except UserError as error:
        return str(error)
    return None


def identity(ref: str | os.PathLike) -> dict[str, Any]:
    """What a run records about the weights it loaded: the reference, the file and its SHA-256.

    For torchvision's files, whose names carry the first hex digits of their SHA-256
    (`resnet50-0676ba61.pth`), `sha256_matches_name` says whether this file is the published one
    (torchvision itself checks the hash only when it downloads, never for a file already cached).
    """
    path = resolve(ref)
    digest = _sha256(path)
    described: dict[str, Any] = {"weights": str(ref), "file": str(path.resolve()), "sha256": digest}
    if scheme(ref) == TORCHVISION:
        prefix = path.stem.rpartition("-")[2]
        described["sha256_matches_name"] = digest.startswith(prefix)
    return described


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ torchvision


def torchvision_cache_dir() -> Path:
    """Where torchvision keeps downloaded weights: `torch.hub.get_dir()/checkpoints` ($TORCH_HOME)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_file(name: str) -> Path:
    from urllib.parse import urlparse

    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise UserError(f"'torchvision:{name}' is not a torchvision weights name; expected "
                        f"<Enum>.<member>, e.g. {DEFAULT_WEIGHTS['resnet50']} (DomainBed's) or "
                        "torchvision:ResNet50_Weights.IMAGENET1K_V2") from None
    path = torchvision_cache_dir() / Path(urlparse(weights.url).path).name
    if not path.is_file():
        raise WeightsNotCached(
            f"torchvision:{name} is not in torchvision's cache: {path} is missing and nothing is "
            f"downloaded at run time; on a machine online fetch {weights.url} and copy it to {path} "
            f"(or set TORCH_HOME to the folder holding hub/checkpoints/)")
    return path


# -------------------------------------------------------------------------------- Hugging Face Hub


def hf_cache_dir() -> Path:
    """The Hugging Face Hub cache, read from the environment at each call as huggingface_hub does:
    $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _hf_file(repo_id: str, files: tuple[str, ...] = _HF_FILES, what: str | None = None) -> Path:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        raise UserError(f"'{what or 'hf:' + repo_id}' needs huggingface_hub: {HUB_EXTRA}") from None
    cache = hf_cache_dir()
    for filename in files:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    raise WeightsNotCached(
        f"{what or 'hf:' + repo_id}: none of {', '.join(files)} of the Hub repository {repo_id} is in the "
        f"Hugging Face cache ({folder}/snapshots/<revision>/) and nothing is downloaded at run time; on a "
        f"machine online run `huggingface-cli download {repo_id} {files[0]}` and copy its "
        f"{folder.name} folder into {cache} (or set HF_HOME)")


def _timm_file(name: str) -> Path:
    try:
        import timm
    except ImportError:
        raise UserError(f"'timm:{name}' needs timm: {HUB_EXTRA}") from None
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise UserError(f"'timm:{name}' is not a timm model with pre-trained weights "
                        "(e.g. timm:resnet50.a1_in1k; `timm.list_pretrained('resnet50*')` lists them)")
    repo = getattr(cfg, "hf_hub_id", None)
    if not repo:
        raise UserError(f"'timm:{name}': its weights are not on the Hugging Face Hub (url {cfg.url}); "
                        "download them on a machine online and pass the file's path")
    filename = getattr(cfg, "hf_hub_filename", None)
    files = (filename,) if filename else _HF_FILES
    return _hf_file(repo, files, what=f"timm:{name}")
