"""Select: the stage's submodular maximisation over the assembled kernels."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from delift_ray import stages
from delift_ray.config import DeliftConfig
from delift_ray.errors import DeliftError
from delift_ray.steps.base import StepStats

log = logging.getLogger("delift_ray")


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
    excluded: Optional[int] = None  # pool samples the gate left out of the picks (None: no gate option on)

    def summary(self) -> str:
        left_out = f"; {self.excluded} excluded by the gate" if self.excluded is not None else ""
        return (
            f"{self.selected} of budget {self.budget} picked ({self.stage}), total gain {self.total_gain:.4g}{left_out}"
        )


def select(
    cfg: DeliftConfig,
    kernels: dict,
    budget: int,
    excluded: Optional[np.ndarray] = None,
    cap_to_kept: bool = False,
    progress: bool = False,
) -> tuple[Selection, SelectStats]:
    """The stage's greedy over ``kernels``; ``excluded`` pool samples are never picked.

    ``cap_to_kept`` (the noise gate): when fewer samples may be picked than the budget,
    the subset holds those (a wrong answer is not picked to fill a quota); the log says so.
    """
    picks = budget
    if excluded is not None and cap_to_kept:
        kept = int((~excluded).sum())
        if not kept:
            raise DeliftError(f"the noise gate excluded all {excluded.size} pool samples: nothing can be selected")
        if budget > kept:
            log.warning(
                "the noise gate keeps %d of %d pool samples, fewer than the budget %d: the subset holds those %d",
                kept,
                excluded.size,
                budget,
                kept,
            )
            picks = kept
    indices, gains = stages.select(cfg.stage, kernels, picks, cfg, progress, excluded=excluded)
    gains = np.asarray(gains, dtype=np.float64)
    stats = SelectStats(
        cfg.stage, budget, len(indices), float(gains.sum()), None if excluded is None else int(excluded.sum())
    )
    return Selection(np.asarray(indices, dtype=np.int64), gains), stats
