"""Merge configs: what to merge, how, and with which parameters, in a YAML or TOML file of mergekit's shape.

```yaml
merge_method: ties            # a registered operator (`drecycle merge --list`)
base_model: runs/lp_ft        # θ0: a run folder, a checkpoint file or named weights (torchvision:...)
models:
  - model: runs/aux_a
    parameters: {weight: 1.0, keep: 0.5}   # this model's own values of per-model parameters
  - model: runs/aux_b                      # or just the path
parameters: {lam: 1.0, keep: 0.2}          # everyone's values
```

Paths are read against the config file's folder. The parameter names are the operator's own (its
declaration in `merge_ops/`), checked with the same rules as the command line's options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from domainbed_recycle.errors import UserError

CONFIG_KEYS = ("merge_method", "base_model", "models", "parameters")


@dataclass(frozen=True)
class MergeJob:
    """One merge: the operator's name, the models (references as given), θ0, the parameters for everyone
    and per model, and the config file it came from (None for the command line)."""

    method: str
    models: tuple[str, ...]
    base: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    per_model: tuple[dict[str, Any], ...] = ()
    source: str | None = None

    def model_parameters(self) -> list[dict[str, Any]]:
        """Each model's own parameters ({} for a model without any)."""
        return list(self.per_model) or [{} for _ in self.models]


def read_config(path: str | Path) -> MergeJob:
    """The merge a YAML (.yaml/.yml) or TOML (.toml) file describes; UserError (one line) if it is not one."""
    from domainbed_recycle import weights

    path = Path(path)
    data = _parse(path)
    unknown = [key for key in data if key not in CONFIG_KEYS]
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}' (a merge config has {', '.join(CONFIG_KEYS)})")
    method = data.get("merge_method")
    if not isinstance(method, str) or not method:
        raise UserError(f"{path}: 'merge_method' must name an operator (see `drecycle merge --list`)")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: 'models' must be a non-empty list of models (each a path, or a table with "
                        "'model' and optional 'parameters')")
    models, per_model = [], []
    for index, entry in enumerate(entries, 1):
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("model"), str) or set(entry) - {"model",
                                                                                                 "parameters"}:
            raise UserError(f"{path}: model {index} must be a path, or a table with 'model' (a path) and optional "
                            f"'parameters', got {entry!r}")
        models.append(weights.normalize(entry["model"], path.parent))
        per_model.append(_mapping(entry.get("parameters"), f"{path}: model {index}'s 'parameters'"))
    base = data.get("base_model")
    if base is not None and not isinstance(base, str):
        raise UserError(f"{path}: 'base_model' must be a path or named weights, got {base!r}")
    return MergeJob(method, tuple(models), weights.normalize(base, path.parent) if base else None,
                    _mapping(data.get("parameters"), f"{path}: 'parameters'"), tuple(per_model), str(path))


def _parse(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such merge config") from None
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise UserError(f"{path}: not valid TOML ({error})") from None
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise UserError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    else:
        raise UserError(f"{path}: a merge config is a .yaml, .yml or .toml file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: a merge config is a table of {', '.join(CONFIG_KEYS)}")
    return data


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise UserError(f"{what} must be a table of parameter names to values, got {value!r}")
    return dict(value)
