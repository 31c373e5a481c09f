"""Kernel scalings: how raw utilities UF become kernel entries. One module per scaling.

A scaling rewrites a float32 array of utilities in place. NaN entries (pairs a run was
allowed to skip, self pairs under ``kernel.diagonal: drop``) take no part and stay NaN;
the caller turns them into 0. It always sees the whole kernel at once (the dense matrix,
or every stored entry of a sparse one), never a block: scaling per block would make
entries of different blocks incomparable.

Every module of this package registers its scaling with :func:`register` when the package
is imported (each module is found with :mod:`pkgutil`), and ``kernel.scaling`` accepts
exactly the registered names. A new scaling is one module here and its test.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Scaling:
    name: str
    description: str  # one sentence for the config reference
    scale: Callable[[np.ndarray], None]  # in place; NaN entries stay NaN


_REGISTRY: dict[str, Scaling] = {}


def register(name: str, description: str) -> Callable[[Callable[[np.ndarray], None]], Callable[[np.ndarray], None]]:
    def add(fn: Callable[[np.ndarray], None]) -> Callable[[np.ndarray], None]:
        if name in _REGISTRY:
            raise ValueError(f"kernel scaling {name!r} is registered twice")
        _REGISTRY[name] = Scaling(name, description, fn)
        return fn

    return add


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: str) -> Scaling:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"kernel scaling must be one of {names()}, got {name!r}") from None


def finite_range(values: np.ndarray) -> tuple[float, float] | None:
    """(min, max) over the non-NaN entries; None when there are none."""
    if values.size == 0:
        return None
    lo = float(np.nanmin(values)) if np.isnan(values).any() else float(values.min())
    if np.isnan(lo):
        return None
    return lo, float(np.nanmax(values))


for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
