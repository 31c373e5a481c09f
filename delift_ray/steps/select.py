"""Select: the stage's submodular maximisation over the assembled kernels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from delift_ray import stages
from delift_ray.config import DeliftConfig
from delift_ray.steps.base import StepStats


@dataclass
class Selection:
    """Pool positions in pick order and the marginal gain of each pick."""

    indices: np.ndarray
    gains: np.ndarray


@dataclass
class SelectStats(StepStats):
    stage: str = ""
    budget: int = 0
    selected: int = 0
    total_gain: float = 0.0

    def summary(self) -> str:
        return f"{self.selected} of budget {self.budget} picked ({self.stage}), total gain {self.total_gain:.4g}"


def select(cfg: DeliftConfig, kernels: dict, budget: int, progress: bool = False) -> tuple[Selection, SelectStats]:
    indices, gains = stages.select(cfg.stage, kernels, budget, cfg, progress)
    gains = np.asarray(gains, dtype=np.float64)
    return Selection(np.asarray(indices, dtype=np.int64), gains), SelectStats(cfg.stage, budget, len(indices), float(gains.sum()))
