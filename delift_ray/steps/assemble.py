"""Assemble: the stage's kernels from the stored utility shards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from delift_ray.config import DeliftConfig
from delift_ray.stages import STAGE_MATRICES
from delift_ray.steps.base import StepStats
from delift_ray.steps.ingest import IngestedSet
from delift_ray.storage import UTILITY, ShardStore


@dataclass
class AssembleStats(StepStats):
    kernel: str = "dense"
    shapes: dict[str, list[int]] = field(default_factory=dict)
    kernel_nnz: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return ", ".join(
            f"{m} {'x'.join(map(str, s))} ({self.kernel}"
            + (f", {self.kernel_nnz[m]} entries" if m in self.kernel_nnz else "")
            + ")"
            for m, s in self.shapes.items()
        )


def assemble_dense(
    cfg: DeliftConfig,
    sets: dict[str, IngestedSet],
    store: ShardStore,
    candidates: Optional[dict[str, np.ndarray]] = None,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], AssembleStats]:
    """Dense UF matrices of the stage with the kernel options (``kernel.diagonal``,
    ``kernel.scaling``) applied over each whole matrix (:func:`delift_ray.kernel.finish_dense`)."""
    from delift_ray.kernel import assemble_dense as assemble
    from delift_ray.kernel import finish_dense

    kernels, stats = {}, AssembleStats("dense")
    for m in STAGE_MATRICES[cfg.stage]:
        H, E = sets[m.helped].samples.sample_ids, sets[m.example].samples.sample_ids
        M = assemble(
            store.iter_relevant(UTILITY, H, E),
            H,
            E,
            name=m.name,
            allow_missing=cfg.scoring.skip_failed_blocks,
            progress=progress,
        )
        M = finish_dense(M, H, E, diagonal=cfg.kernel.diagonal, scaling=cfg.kernel.scaling)
        kernels[m.name] = M.T.copy() if m.transpose else M
        stats.shapes[m.name] = list(kernels[m.name].shape)
    return kernels, stats


def assemble_knn(
    cfg: DeliftConfig,
    sets: dict[str, IngestedSet],
    store: ShardStore,
    candidates: dict[str, np.ndarray],
    progress: bool = False,
) -> tuple[dict, AssembleStats]:
    """CSR kernels of the stage over exactly the run's candidate pairs, scaled over the
    stored entries (:func:`delift_ray.kernel.assemble_sparse`)."""
    from delift_ray.kernel import assemble_sparse_from_tables, candidate_keys

    kernels, stats = {}, AssembleStats("knn")
    for m in STAGE_MATRICES[cfg.stage]:
        H, E = sets[m.helped].samples.sample_ids, sets[m.example].samples.sample_ids
        M = assemble_sparse_from_tables(
            store.iter_relevant(UTILITY, H, E),
            H,
            E,
            allowed=candidate_keys(candidates[m.name], len(E)),
            diagonal=cfg.kernel.diagonal,
            scaling=cfg.kernel.scaling,
            progress=progress,
            name=m.name,
        )
        kernels[m.name] = M.T.tocsr() if m.transpose else M
        stats.shapes[m.name] = list(kernels[m.name].shape)
        stats.kernel_nnz[m.name] = int(M.nnz)
    return kernels, stats
