"""Gate: the pool samples the selection may not pick, and why, from the stored baselines.

Two options, both read from baseline-only sets the score step scored
(:func:`delift_ray.steps.ingest.baseline_only_sets`):

* ``selection.noise_gate: contrastive``: the contrastive gain against a null from the same
  run (:mod:`delift_ray.gate`), status ``excluded_noise_gate``;
* ``selection.min_prompt_gain``: an absolute threshold on d(r | empty prompt) - d(r | p),
  status ``excluded_low_prompt_gain``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from delift_ray.config import SelectionConfig
from delift_ray.data import SampleSet
from delift_ray.rundir import LOW_PROMPT_GAIN, NOISE_GATE, OK
from delift_ray.steps.base import StepStats
from delift_ray.storage import ShardStore, baseline_lookup


@dataclass
class Exclusions:
    """Per pool sample: its status (``ok`` or the reason it may not be picked) and the
    contrastive gate's gain and q-value (NaN when the gate is off or the sample untested)."""

    status: np.ndarray  # object array of str
    gate_gain: np.ndarray
    gate_q: np.ndarray
    active: bool = False  # an option is on
    noise_gate: bool = False  # the contrastive gate is on: a budget beyond what it keeps is capped

    @property
    def mask(self) -> Optional[np.ndarray]:
        """Pool samples that may not be picked, or None when no option is on."""
        return self.status != OK if self.active else None


@dataclass
class GateStats(StepStats):
    excluded_noise_gate: Optional[int] = None
    untested_noise_gate: Optional[int] = None  # no mismatched prompt fitted: kept
    null_share: Optional[float] = None  # Storey's estimate of the share the null explains
    null_draws: Optional[int] = None
    excluded_low_prompt_gain: Optional[int] = None

    def summary(self) -> str:
        parts = []
        if self.excluded_noise_gate is not None:
            parts.append(
                f"noise gate excluded {self.excluded_noise_gate} (null share {self.null_share:.2f}, "
                f"{self.null_draws} null draws, {self.untested_noise_gate} untested)"
            )
        if self.excluded_low_prompt_gain is not None:
            parts.append(f"min_prompt_gain excluded {self.excluded_low_prompt_gain}")
        return "; ".join(parts) or "off"


def prompt_gains(pool_ids: list[str], free_ids: list[str], store: ShardStore) -> np.ndarray:
    """Per pool sample, d(r_i | empty prompt) - d(r_i | p_i) from the stored baselines (NaN if one is missing).

    How much the sample's own prompt makes its response predictable: about 0 for a
    response that belongs to another prompt.
    """
    d = baseline_lookup(store, set(pool_ids) | set(free_ids))
    return np.array([d.get(f, np.nan) - d.get(p, np.nan) for p, f in zip(pool_ids, free_ids)], dtype=np.float64)


def low_prompt_gain(min_gain: float, gains: np.ndarray) -> np.ndarray:
    """The pool samples ``selection.min_prompt_gain`` excludes (a missing gain excludes nothing)."""
    with np.errstate(invalid="ignore"):
        return gains < min_gain


def gate(selection: SelectionConfig, pool: SampleSet, store: ShardStore) -> tuple[Exclusions, GateStats]:
    """What each selection option excludes from ``pool``, read from ``store``'s baselines."""
    from delift_ray.gate import contrastive_gate, mismatched_ids, prompt_free_id

    n = len(pool)
    status = np.full(n, OK, dtype=object)
    gain = np.full(n, np.nan)
    q = np.full(n, np.nan)
    stats = GateStats()
    gated = selection.noise_gate == "contrastive"
    if gated:
        mm = mismatched_ids(pool, selection.gate_prompts, selection.gate_donors)
        d = baseline_lookup(store, set(pool.sample_ids) | set(mm.ravel()))
        d_own = np.array([d.get(s, np.nan) for s in pool.sample_ids], dtype=np.float64)
        d_mm = np.vectorize(lambda s: np.nan if s is None else d.get(s, np.nan), otypes=[np.float64])(mm)
        res = contrastive_gate(d_own, d_mm, selection.gate_fdr)
        status[~res.keep] = NOISE_GATE
        gain, q = res.gain, res.q_value
        stats.excluded_noise_gate = int((~res.keep).sum())
        stats.untested_noise_gate = int(res.untested.sum())
        stats.null_share = round(res.null_share, 4)
        stats.null_draws = res.null_size
    if selection.min_prompt_gain is not None:
        free = [prompt_free_id(r) for r in pool.responses]
        low = low_prompt_gain(selection.min_prompt_gain, prompt_gains(pool.sample_ids, free, store))
        status[low & (status == OK)] = LOW_PROMPT_GAIN
        stats.excluded_low_prompt_gain = int(low.sum())
    active = gated or selection.min_prompt_gain is not None
    return Exclusions(status, gain, q, active=active, noise_gate=gated), stats
