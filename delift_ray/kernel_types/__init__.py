"""Kernel types: which pairs a run scores and how their utilities become a kernel. One module per type.

A kernel type answers, for one matrix of the stage (helped set H, example set E):

* **candidates**: does it need the embed and neighbours steps first (``needs_candidates``);
* **plan**: which pairs of H x E to score (:attr:`KernelType.plan_pairs`), after a check that
  the kernel will fit in memory (:attr:`KernelType.check_fits`);
* **assemble**: the kernel from the stored utilities with ``kernel.diagonal`` and
  ``kernel.scaling`` applied (:attr:`KernelType.assemble_matrix`), and its transpose;
* **estimate**: candidate pairs per helped sample and the kernel's bytes, for
  ``delift-ray estimate`` and the dry run;
* **docs**: a one-sentence description (the config reference) and a label of its options
  (the report, the estimate and the dry run).

The steps (:mod:`delift_ray.steps.plan`, :mod:`delift_ray.steps.assemble`), the estimate and
the report ask the registry; none of them names a type. Every module of this package
registers its type with :func:`register` when the package is imported, and ``kernel.type``
accepts exactly the registered names. Type modules import the heavy modules (planning,
kernel assembly) inside their functions: the config imports this package to validate
``kernel.type``, and those modules import the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np

from delift_ray.registry import Registry


def _fits_anything(shapes: dict[str, tuple[int, int]]) -> None:
    return None


def _no_rule(kernel: Any) -> None:
    return None


@dataclass(frozen=True)
class KernelType:
    """One kernel type. ``kernel`` arguments are the run's :class:`delift_ray.config.KernelConfig`.

    * ``plan_pairs(matrices, candidates, ids, stored, stored_baselines, *, index, fingerprint,
      block_size) -> planning.Plan``: the blocks that score what the store lacks;
    * ``assemble_matrix(tables, helped_ids, example_ids, candidates, kernel, *, allow_missing,
      progress, name)``: one kernel M[h, e] (``candidates`` is this matrix's candidate array,
      or None);
    * ``transpose(M)``: M.T in the same representation;
    * ``candidates_per_row(kernel, n_examples)``: pairs scored per helped sample;
    * ``kernel_bytes(n_rows, n_cols, per_row)`` and ``assembly_peak_bytes(...)``: memory;
    * ``label(options)``: its options as the report shows them, from a config mapping
      (``kernel`` of run.json, or ``KernelConfig.model_dump()``);
    * ``check_fits(shapes)``: raise before scoring when the kernels cannot be held;
    * ``validate(kernel)``: raise ``ValueError`` for options this type cannot run.
    """

    name: str
    description: str
    needs_candidates: bool
    plan_pairs: Callable[..., Any]
    assemble_matrix: Callable[..., Any]
    transpose: Callable[[Any], Any]
    candidates_per_row: Callable[[Any, int], int]
    kernel_bytes: Callable[[int, int, int], int]
    assembly_peak_bytes: Callable[[int, int, int], int]
    label: Callable[[Mapping], str]
    check_fits: Callable[[dict[str, tuple[int, int]]], None] = _fits_anything
    validate: Callable[[Any], None] = _no_rule

    def stored_entries(self, M: Any) -> Optional[int]:
        """Entries a sparse kernel stores (None for a dense array, which stores every pair)."""
        return None if isinstance(M, np.ndarray) else int(M.nnz)


REGISTRY: Registry[KernelType] = Registry("kernel type")


def register(kind: KernelType) -> KernelType:
    return REGISTRY.add(kind.name, kind)


names, get, all_types = REGISTRY.names, REGISTRY.get, REGISTRY.entries


def label(options: Mapping) -> str:
    """The options of a recorded kernel (``config.kernel`` of a run.json) in one phrase.

    A type this version does not know is shown by its name, so an old or newer run still
    reads."""
    name = options.get("type", "dense")
    kind = REGISTRY.find(name)
    return kind.label(options) if kind else str(name)


# Dense first: the registry's order is the estimate table's column order.
REGISTRY.load(__name__, __path__, first=("dense",))
