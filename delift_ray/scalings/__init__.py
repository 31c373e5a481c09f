"""Kernel scalings: how raw utilities UF become kernel entries. One module per scaling.

A scaling rewrites a float32 array of utilities in place. NaN entries (pairs a run was
allowed to skip, self pairs under ``kernel.diagonal: drop``) take no part and stay NaN;
the caller turns them into 0. It always sees the whole kernel at once (the dense matrix,
or every stored entry of a sparse one), never a block: scaling per block would make
entries of different blocks incomparable.

Every module of this package registers its scaling with :func:`register` when the package
is imported (:class:`delift_ray.registry.Registry`), and ``kernel.scaling`` accepts
exactly the registered names. A new scaling is one module here and its test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from delift_ray.registry import Registry


@dataclass(frozen=True)
class Scaling:
    name: str
    description: str  # one sentence for the config reference
    scale: Callable[[np.ndarray], None]  # in place; NaN entries stay NaN


REGISTRY: Registry[Scaling] = Registry("kernel scaling")


def register(name: str, description: str) -> Callable[[Callable[[np.ndarray], None]], Callable[[np.ndarray], None]]:
    def add(fn: Callable[[np.ndarray], None]) -> Callable[[np.ndarray], None]:
        REGISTRY.add(name, Scaling(name, description, fn))
        return fn

    return add


names, get = REGISTRY.names, REGISTRY.get


def finite_range(values: np.ndarray) -> tuple[float, float] | None:
    """(min, max) over the non-NaN entries; None when there are none."""
    if values.size == 0:
        return None
    lo = float(np.nanmin(values)) if np.isnan(values).any() else float(values.min())
    if np.isnan(lo):
        return None
    return lo, float(np.nanmax(values))


REGISTRY.load(__name__, __path__)
