"""Where dense and knn kernels differ: candidates, planning and assembly. Nothing else does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from delift_ray.config import DeliftConfig
from delift_ray.steps import assemble, embed, plan
from delift_ray.steps.base import StepLog


@dataclass(frozen=True)
class KernelStrategy:
    """How one kernel type finds its candidate pairs, plans them and assembles its kernels.

    ``plan`` and ``assemble`` are steps ``(cfg, sets, store, candidates) -> (result, stats)``.
    """

    name: str
    needs_candidates: bool
    plan: Callable
    assemble: Callable

    def candidates(
        self, steps: StepLog, cfg: DeliftConfig, sets: dict, progress: bool
    ) -> tuple[Optional[dict[str, np.ndarray]], Optional[dict[str, np.ndarray]]]:
        """(candidates, vectors). knn: the embed and neighbours steps; dense: every pair is a
        candidate and nothing is embedded (None, None)."""
        if not self.needs_candidates:
            return None, None
        vectors = steps.run("embed", embed.embed, cfg, sets, progress)
        return steps.run("neighbours", embed.neighbours, cfg, vectors, progress=progress), vectors


DENSE = KernelStrategy("dense", False, plan.plan_dense, assemble.assemble_dense)
KNN = KernelStrategy("knn", True, plan.plan_knn, assemble.assemble_knn)


def kernel_strategy(cfg: DeliftConfig) -> KernelStrategy:
    return KNN if cfg.kernel.type == "knn" else DENSE
