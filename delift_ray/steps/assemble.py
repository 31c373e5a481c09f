"""Assemble: the stage's kernels from the stored utility shards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from delift_ray import kernel_types
from delift_ray.config import DeliftConfig
from delift_ray.prompts import IngestedSet
from delift_ray.stages import STAGE_MATRICES
from delift_ray.steps.base import StepStats
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


def assemble(
    cfg: DeliftConfig,
    sets: dict[str, IngestedSet],
    store: ShardStore,
    candidates: Optional[dict[str, np.ndarray]] = None,
    progress: bool = False,
) -> tuple[dict, AssembleStats]:
    """The stage's kernels from the stored utilities, in the kernel type's representation,
    with ``kernel.diagonal`` and ``kernel.scaling`` applied over each whole kernel
    (:mod:`delift_ray.kernel_types`)."""
    kind = kernel_types.get(cfg.kernel.type)
    kernels, stats = {}, AssembleStats(kind.name)
    for m in STAGE_MATRICES[cfg.stage]:
        H, E = sets[m.helped].samples.sample_ids, sets[m.example].samples.sample_ids
        M = kind.assemble_matrix(
            store.iter_relevant(UTILITY, H, E),
            H,
            E,
            None if candidates is None else candidates[m.name],
            cfg.kernel,
            allow_missing=cfg.scoring.skip_failed_blocks,
            progress=progress,
            name=m.name,
        )
        kernels[m.name] = kind.transpose(M) if m.transpose else M
        stats.shapes[m.name] = list(kernels[m.name].shape)
        stored = kind.stored_entries(M)
        if stored is not None:
            stats.kernel_nnz[m.name] = stored
    return kernels, stats
