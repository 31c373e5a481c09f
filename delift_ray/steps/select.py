"""Select: the stage's submodular maximisation over the assembled kernels."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from delift_ray import stages
from delift_ray.config import DeliftConfig
from delift_ray.errors import DeliftError
from delift_ray.steps.base import StepStats

log = logging.getLogger("delift_ray")


@dataclass
class Selection:
    """Pool positions in pick order and the marginal gain of each pick; ``next_indices``
    and ``next_gains``: the picks the greedy makes after the budget (the report's gain
    curve, ``selection.curve_horizon``), never part of the subset."""

    indices: np.ndarray
    gains: np.ndarray
    next_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    next_gains: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class SelectStats(StepStats):
    stage: str = ""
    budget: int = 0
    selected: int = 0
    total_gain: float = 0.0
    excluded: Optional[int] = None  # pool samples the gate left out of the picks (None: no gate option on)
    curve_picks: int = 0  # picks made in all, the budget's and those after it (selection.curve_horizon)

    def summary(self) -> str:
        left_out = f"; {self.excluded} excluded by the gate" if self.excluded is not None else ""
        after = f"; gain curve continued to {self.curve_picks} picks" if self.curve_picks > self.selected else ""
        return (
            f"{self.selected} of budget {self.budget} picked ({self.stage}), total gain {self.total_gain:.4g}"
            f"{left_out}{after}"
        )


def select(
    cfg: DeliftConfig,
    kernels: dict,
    budget: int,
    excluded: Optional[np.ndarray] = None,
    noise_gate: bool = False,
    progress: bool = False,
    curve: bool = False,
) -> tuple[Selection, SelectStats]:
    """The stage's greedy over ``kernels``; ``excluded`` pool samples are never picked.

    ``curve``: go on past the budget to ``selection.curve_horizon`` times it, for the job's
    gain curve (:class:`Selection` ``next_*``); the subset is the same either way.
    ``noise_gate``: ``excluded`` is the noise gate's. Excluded samples then leave the
    objective altogether (neither picked nor covered: ``stages.select(uncovered=True)``),
    and when fewer samples may be picked than the budget, the subset holds those (a wrong
    answer is not picked to fill a quota); the log says so.
    """
    picks = budget
    if excluded is not None and noise_gate:
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
    n = kernels["K"].shape[0]
    pickable = n - 1 if excluded is None else min(n - 1, int((~excluded).sum()))
    # The job's gain curve (curve=True) only: other callers (evaluate's arms) pay for the subset alone.
    horizon = curve_horizon(picks, cfg.selection.curve_horizon, pickable) if curve else picks
    # The greedy's picks do not depend on its budget, so the subset is the first ``picks``.
    indices, gains = stages.select(
        cfg.stage, kernels, horizon, cfg, progress, excluded=excluded, uncovered=noise_gate and excluded is not None
    )
    indices, gains = np.asarray(indices, dtype=np.int64), np.asarray(gains, dtype=np.float64)
    chosen = min(picks, indices.size)
    stats = SelectStats(
        cfg.stage,
        budget,
        chosen,
        float(gains[:chosen].sum()),
        None if excluded is None else int(excluded.sum()),
        int(indices.size),
    )
    return Selection(indices[:chosen], gains[:chosen], indices[chosen:], gains[chosen:]), stats


def curve_horizon(picks: int, factor: float, pickable: int) -> int:
    """Picks to make for the gain curve: ``factor`` times the budget's, within what may be
    picked (never fewer than the budget's own picks, which the greedy checks)."""
    return max(picks, min(int(np.ceil(picks * factor)), pickable))
