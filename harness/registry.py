"""One generic registry for methods, models, datasets and energy models.

Entries are either registered objects (``@REG.register("name")``) or *lazy* ``"module:attr"``
strings, resolved on first :meth:`Registry.get`. Lazy entries let ``harness ls`` list everything
with a one-line description without importing torch. Each thing is registered in exactly one
place: built-in entries in their package's table, plug-ins with the decorator.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


@dataclass
class Entry:
    name: str
    description: str
    target: Any = None  # the object, once loaded
    path: str | None = None  # "module:attr" for lazy entries


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def _add(self, entry: Entry) -> None:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self._entries[entry.name] = entry

    def lazy(self, name: str, path: str, description: str) -> None:
        """Register ``path`` ("package.module:attr"), imported only when first used."""
        if ":" not in path:
            raise ValueError(f"lazy entry {path!r} must look like 'module:attr'")
        self._add(Entry(name, description, path=path))

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name", "one line")``."""

        def deco(obj: T) -> T:
            doc = description or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._add(Entry(name, doc, target=obj))
            return obj

        return deco

    def check(self, name: str) -> str:
        """Raise :class:`UnknownNameError` (with did-you-mean) unless ``name`` is registered."""
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self._entries)
        return name

    def get(self, name: str) -> T:
        entry = self._entries[self.check(name)]
        if entry.target is None:
            module, attr = entry.path.split(":")  # type: ignore[union-attr]
            entry.target = getattr(importlib.import_module(module), attr)
        return entry.target

    def describe(self, name: str) -> str:
        return self._entries[self.check(name)].description

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, str]]:
        """(name, description) pairs, without importing anything."""
        for e in self._entries.values():
            yield e.name, e.description

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
