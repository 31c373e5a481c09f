"""A registry of named plug-ins (kernel scalings, kernel types): one module each, found at import.

A package that holds plug-ins makes one :class:`Registry`, and each of its modules adds its
entry when :meth:`Registry.load` imports them (every module of the package, found with
:mod:`pkgutil`). The config accepts exactly the registered names, and an unknown one is
refused with the list of known ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, Iterable, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str) -> None:
        self.what = what  # "kernel scaling", for the messages
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entries(self) -> tuple[T, ...]:
        return tuple(self._entries.values())

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"{self.what} must be one of {self.names()}, got {name!r}") from None

    def find(self, name: str) -> T | None:
        return self._entries.get(name)

    def load(self, package: str, path: Iterable[str], first: tuple[str, ...] = ()) -> None:
        """Import every module of ``package`` (``first`` ones first, then by name): each registers itself."""
        found = sorted(m.name for m in pkgutil.iter_modules(path))
        for module in [m for m in first if m in found] + [m for m in found if m not in first]:
            importlib.import_module(f"{package}.{module}")
