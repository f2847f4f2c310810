"""One generic registry for methods, models, datasets and energy models.

Entries are registered objects (``@REG.register("name")``), *lazy* ``"module:attr"`` strings
resolved on first :meth:`Registry.get`, or plug-ins: entry points of an installed package in the
registry's group (``snn_harness.methods``, ``snn_harness.models``, ``snn_harness.datasets``,
``snn_harness.energy``), discovered on first use and loaded only when used. Lazy entries let
``harness ls`` list everything without importing torch. Each entry records where it comes from
(``origin``: ``snn-harness`` or the plug-in's distribution).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import ConfigError, HarnessError, UnknownNameError

T = TypeVar("T")
log = logging.getLogger(__name__)
BUILTIN = "snn-harness"


class RegistryError(HarnessError):
    """Two entries claim one name, or a plug-in cannot be loaded."""


@dataclass
class Entry:
    name: str
    description: str
    target: Any = None  # the object, once loaded
    path: str | None = None  # "module:attr" for lazy entries
    origin: str = BUILTIN  # the distribution that provides it


class Registry(Generic[T]):
    """Entries by name. ``validate(obj)`` (optional) returns what is wrong with a loaded object, or
    None: a plug-in whose object fails it is as broken as one that does not import."""

    def __init__(self, kind: str, validate: Callable[[Any], str | None] | None = None):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._group: str | None = None
        self._scanned = False
        self._validate = validate
        self.broken: dict[str, str] = {}  # plug-ins that could not be loaded: name -> why (see usable)

    def _add(self, entry: Entry) -> None:
        old = self._entries.get(entry.name)
        if old is not None:
            raise RegistryError(f"{self.kind} {entry.name!r} is registered twice ({old.origin} and {entry.origin})")
        self._entries[entry.name] = entry

    def lazy(self, name: str, path: str, description: str, origin: str = BUILTIN) -> None:
        """Register ``path`` ("package.module:attr"), imported only when first used."""
        if ":" not in path:
            raise RegistryError(f"lazy entry {path!r} must look like 'module:attr'")
        self._add(Entry(name, description, path=path, origin=origin))

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name", "one line")``."""

        def deco(obj: T) -> T:
            doc = description or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._add(Entry(name, doc, target=obj, origin=getattr(obj, "__module__", BUILTIN) or BUILTIN))
            return obj

        return deco

    def entry_points(self, group: str) -> None:
        """Also offer the entry points of ``group`` (scanned on first use, loaded when used)."""
        self._group = group

    def _scan(self) -> None:
        if self._scanned or self._group is None:
            return
        self._scanned = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self._group):
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "plug-in"
            if ep.name in self._entries:
                log.warning("%s %r from %s ignored: the name is taken by %s", self.kind, ep.name, origin,
                            self._entries[ep.name].origin)
                continue
            self._entries[ep.name] = Entry(ep.name, f"plug-in {ep.value}", path=ep.value, origin=origin)

    def check(self, name: str) -> str:
        """Raise :class:`UnknownNameError` (with did-you-mean) unless ``name`` is registered."""
        self._scan()
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self._entries)
        return name

    def get(self, name: str) -> T:
        """The object registered as ``name`` (loaded on first use). A plug-in that cannot be loaded —
        its import fails in any way, or its object is not what this registry holds — raises
        :class:`RegistryError` naming the package, the entry point and the error."""
        entry = self._entries[self.check(name)]
        if entry.target is None:
            module, attr = entry.path.split(":")  # type: ignore[union-attr]
            try:
                obj: Any = importlib.import_module(module)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except Exception as exc:  # a plug-in's import may raise anything
                if entry.origin == BUILTIN:
                    raise
                raise RegistryError(f"{self.kind} {name!r} from {entry.origin} cannot be loaded from "
                                    f"{entry.path}: {type(exc).__name__}: {exc}") from None
            problem = self._validate(obj) if self._validate is not None and entry.origin != BUILTIN else None
            if problem:
                raise RegistryError(f"{self.kind} {name!r} from {entry.origin} ({entry.path}) is not usable: {problem}")
            entry.target = obj
        return entry.target

    def usable(self) -> list[tuple[str, T]]:
        """Every entry that loads, in order; a plug-in that does not is left out, with one warning
        naming it and its error (kept in :attr:`broken`), so one broken plug-in never breaks the
        entries that work."""
        out = []
        for name in self.names():
            try:
                out.append((name, self.get(name)))
            except RegistryError as exc:
                if name not in self.broken:
                    log.warning("%s; it is left out", exc)
                self.broken[name] = str(exc)
        return out

    def problem(self, name: str) -> str | None:
        """Why the plug-in ``name`` cannot be loaded, or None (built-in entries are not loaded)."""
        entry = self._entries[self.check(name)]
        if entry.origin == BUILTIN:
            return None
        try:
            self.get(name)
        except RegistryError as exc:
            self.broken[name] = str(exc)
            return str(exc)
        return None

    def describe(self, name: str) -> str:
        return self._entries[self.check(name)].description

    def origin(self, name: str) -> str:
        return self._entries[self.check(name)].origin

    def names(self) -> list[str]:
        self._scan()
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, str]]:
        """(name, description) pairs, without importing anything."""
        self._scan()
        for e in self._entries.values():
            yield e.name, e.description

    def entries(self) -> Iterator[Entry]:
        self._scan()
        yield from self._entries.values()

    def __contains__(self, name: object) -> bool:
        self._scan()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._scan()
        return iter(self._entries)

    def __len__(self) -> int:
        self._scan()
        return len(self._entries)


def import_object(path: str, what: str) -> Any:
    """``pkg.module:attr`` (importable from the working directory) or ``path/to/file.py:attr``."""
    import importlib
    import importlib.util
    import os
    import sys
    from pathlib import Path

    module_part, _, attr = path.rpartition(":")
    if not module_part or not attr:
        raise ConfigError(f"{what} {path!r}: expected 'module:name' or 'file.py:name'")
    try:
        if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
            file = Path(module_part).expanduser()
            if not file.is_file():
                raise ConfigError(f"{what} {path!r}: file {file} not found")
            name = f"harness_user_{abs(hash(str(file.resolve())))}"
            spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[name] = module
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_part)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to see, with the path
        raise ConfigError(f"{what} {path!r}: importing {module_part} failed: {type(exc).__name__}: {exc}") from None
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise UnknownNameError(f"name in {module_part} for {what} {path!r}", attr, names)
    return getattr(module, attr)
