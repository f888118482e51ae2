"""A tiny name -> object registry with a decorator, used for datasets, algorithms and strategies."""

from __future__ import annotations

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
