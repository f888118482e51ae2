"""`drecycle import`: fine-tunings made elsewhere join a pipeline's auxiliary pool (`<out>/imported/`)."""

from __future__ import annotations

import re
from pathlib import Path

from domainbed_recycle import weights
from domainbed_recycle.checkpoints import check_compatible, load_checkpoint, save_checkpoint, split_state
from domainbed_recycle.errors import UserError
from domainbed_recycle.recycle.stages import IMPORTED, check_output_dir, claim_output_dir


def import_finetuning(path: str | Path, reference: str | Path, into_dir: str | Path, name: str | None = None) -> Path:
    """Add a fine-tuning made elsewhere to a pipeline's auxiliary pool (`<output_dir>/imported/`).

    `path` may be our safetensors, anyone's safetensors or state dict, or DomainBed's `model.pkl`
    (all read without unpickling code). Its featurizer must match the foundation's (`reference`)
    key for key and shape for shape; only the featurizer is kept (its head belongs to another task).
    """
    reference_state, reference_meta = load_checkpoint(reference)
    state, meta = load_checkpoint(path)
    expected, _ = split_state(reference_state)
    featurizer, _ = split_state(state)
    if not featurizer:
        raise UserError(f"{path}: no featurizer weights found (expected keys starting with 'featurizer.', "
                        "a torchvision ResNet state dict, or DomainBed's model.pkl)")
    check_compatible(expected, featurizer, "featurizer of the imported fine-tuning", path)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or Path(path).stem).lstrip(".") or "imported"
    target = Path(into_dir) / IMPORTED / f"{name}.safetensors"
    if target.exists():
        raise UserError(f"{target} already exists: choose another --name")
    check_output_dir(Path(into_dir))
    claim_output_dir(Path(into_dir))
    metadata = {"arch": reference_meta.get("arch"), "imported_from": weights.normalize(path),
                "origin": meta.get("origin", "safetensors" if str(path).endswith(".safetensors") else "state dict")}
    return save_checkpoint(target, {f"featurizer.{k}": v for k, v in featurizer.items()}, metadata)
