"""A tiny name -> object registry with a decorator, used for datasets, algorithms, strategies and merging
operators; and `import_plugins`, which imports the user's modules that register more of them."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from domainbed_recycle.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually classes).

    >>> MODELS = Registry("model")
    >>> @MODELS.register()
    ... class Foo: ...
    >>> MODELS.get("Foo") is Foo
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering an object under `name` (default: its `__name__`)."""

        def decorator(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.kind} '{key}' is already registered")
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the object registered as `name`; raise a UserError listing known names if absent."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UserError(f"unknown {self.kind} '{name}'; known {self.kind}s: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))


def import_plugins() -> None:
    """Import every module named in $DRECYCLE_PLUGINS (comma-separated, importable from sys.path): user
    code outside the package registers its algorithms and merging operators there. Pool and Slurm
    workers inherit the variable, so they import the modules too. Importing twice is free."""
    for module in filter(None, (m.strip() for m in os.environ.get("DRECYCLE_PLUGINS", "").split(","))):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if not f"{module}.".startswith(f"{error.name}."):  # a missing import inside the module
                raise
            raise UserError(f"DRECYCLE_PLUGINS: no module named '{module}' (is its folder on PYTHONPATH?)") from None
