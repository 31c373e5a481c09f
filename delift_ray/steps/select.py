"""Select: the stage's submodular maximisation over the assembled kernels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from delift_ray import stages
from delift_ray.config import DeliftConfig
from delift_ray.steps.base import StepStats
from delift_ray.storage import ShardStore


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
    excluded: Optional[int] = None  # pool samples selection.min_prompt_gain left out of the picks

    def summary(self) -> str:
        left_out = f"; {self.excluded} excluded by min_prompt_gain" if self.excluded is not None else ""
        return (
            f"{self.selected} of budget {self.budget} picked ({self.stage}), total gain {self.total_gain:.4g}{left_out}"
        )


def prompt_gains(pool_ids: list[str], free_ids: list[str], store: ShardStore) -> np.ndarray:
    """Per pool sample, d(r_i | empty prompt) - d(r_i | p_i) from the stored baselines (NaN if one is missing).

    How much the sample's own prompt makes its response predictable: about 0 for a
    response that belongs to another prompt.
    """
    from delift_ray.steps.score import baseline_lookup

    d = baseline_lookup(store, set(pool_ids) | set(free_ids))
    return np.array([d.get(f, np.nan) - d.get(p, np.nan) for p, f in zip(pool_ids, free_ids)], dtype=np.float64)


def low_prompt_gain(min_gain: float, gains: np.ndarray) -> np.ndarray:
    """The pool samples ``selection.min_prompt_gain`` excludes (a missing gain excludes nothing)."""
    with np.errstate(invalid="ignore"):
        return gains < min_gain


def select(
    cfg: DeliftConfig, kernels: dict, budget: int, excluded: Optional[np.ndarray] = None, progress: bool = False
) -> tuple[Selection, SelectStats]:
    """The stage's greedy over ``kernels``; ``excluded`` pool samples are never picked."""
    indices, gains = stages.select(cfg.stage, kernels, budget, cfg, progress, excluded=excluded)
    gains = np.asarray(gains, dtype=np.float64)
    stats = SelectStats(
        cfg.stage, budget, len(indices), float(gains.sum()), None if excluded is None else int(excluded.sum())
    )
    return Selection(np.asarray(indices, dtype=np.int64), gains), stats
