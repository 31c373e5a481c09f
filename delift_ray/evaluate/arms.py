"""Selections to compare against random, computed from a run's stored shards (no re-scoring).

* ``delift:<diagonal>-<scaling>`` -- the run's stage function (FL / FLMI / FLCG) on kernels
  built with the given kernel options (:mod:`delift_ray.kernel`), e.g. ``delift:drop-clip``;
* ``self_utility`` -- the k samples with the largest UF(i <- i), a sample as its own example:
  what a kernel dominated by its diagonal degenerates to;
* ``hardness`` -- the k samples with the largest d(i, no example): the ones the model
  predicts worst without help (the simplest "hard examples" ranking);
* ``example_utility`` -- the k samples j that help the other samples most as an in-context
  example: the largest sum over i != j of UF(i <- j) - lo, where lo is the smallest stored
  utility off the diagonal and a missing pair counts as lo. On a dense run with every pair
  stored this ranks by the mean UF(i <- j) over i != j. It is, up to a positive factor,
  the first-pick gain of facility location (the instruction stage) on the ``drop-minmax``
  kernel, dense or knn, so it is the simplest ranking that kernel could reduce to, as
  ``self_utility`` is for ``keep`` (``drop-clip``'s first pick ranks by the mean of
  max(UF, 0) instead, which orders the samples much the same way, not identically);
* ``ifd`` -- the k samples with the largest d(i, no example) / d(r_i | empty prompt), an
  IFD-style ratio (Li et al., NAACL 2024): how little the sample's own prompt helps the model
  predict its response. As in IFD, a ratio above 1 (the prompt hurts) marks a sample to
  drop: those rank after every ratio <= 1. It needs the prompt-free baselines, which a run stores when
  ``selection.min_prompt_gain`` is set (with ``--baselines auto`` it is left out otherwise);
* ``longest`` -- the k samples with the longest responses (in characters): free, needs no
  model, and reported as hard to beat for instruction tuning (Zhao et al., "Long Is More
  for Alignment", ICML 2024).

Ties are broken by the lower pool index, so every arm is deterministic. A baseline whose
scores are stored for fewer than k pool samples (a run whose cache was moved, say) raises
instead of ranking missing values.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import numpy as np

from delift_ray.errors import DeliftError
from delift_ray.evaluate.inputs import RunData
from delift_ray.kernel import DIAGONALS, SCALINGS

BASELINE_ARMS = ("self_utility", "hardness", "example_utility", "ifd", "longest")


@dataclass(frozen=True)
class Variant:
    diagonal: str
    scaling: str

    @property
    def name(self) -> str:
        return f"{self.diagonal}-{self.scaling}"


def parse_variants(text: Optional[str]) -> list[Variant]:
    """'keep-minmax,drop-clip' -> variants; DeliftError on a bad name."""
    out: list[Variant] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        d, _, s = part.partition("-")
        if d not in DIAGONALS or s not in SCALINGS:
            raise DeliftError(
                f"unknown kernel variant {part!r}: use <diagonal>-<scaling> with diagonal in "
                f"{'|'.join(DIAGONALS)} and scaling in {'|'.join(SCALINGS)}, e.g. drop-clip"
            )
        if Variant(d, s) not in out:
            out.append(Variant(d, s))
    return out


def run_store(run: RunData):
    """The run's shard store (its ``cache`` and scorer fingerprint from run.json)."""
    from delift_ray.storage import ShardStore

    root, fp = (run.doc.cache, run.doc.fingerprint) if run.doc is not None else (None, None)
    if not root or not fp:
        raise DeliftError(f"{run.run_dir}/run.json names no cache or fingerprint; cannot read its utilities")
    return ShardStore(str(root), str(fp))


def _ids(run: RunData, name: str) -> list[str]:
    if name == "pool":
        return run.pool.sample_ids
    if name not in run.others:
        raise DeliftError(f"the run has no {name} set")
    return run.others[name].sample_ids


def raw_matrix(run: RunData, helped: str, example: str, store=None) -> np.ndarray:
    """Dense raw UF(helped <- example) from the stored shards; NaN where a pair is missing."""
    from delift_ray.kernel import assemble_dense
    from delift_ray.storage import UTILITY

    store = store or run_store(run)
    H, E = _ids(run, helped), _ids(run, example)
    return assemble_dense(store.iter_relevant(UTILITY, H, E), H, E, name=f"{helped}x{example}", allow_missing=True)


def pool_pair_scores(run: RunData, store=None) -> tuple[np.ndarray, np.ndarray]:
    """Per pool sample, from one pass over the pool x pool shards: UF(i <- i) (``self_utility``;
    NaN where it was not stored) and, for sample j, the sum over the other pool samples i of
    UF(i <- j) - lo (``example_utility``), where lo is the smallest stored off-diagonal utility
    and a missing pair adds 0 (counts as lo), as in the ``drop-minmax`` kernel; all NaN when no
    off-diagonal pair is stored.

    A pair stored twice (two concurrent jobs on one cache) is counted twice; the kernels keep one.
    """
    from delift_ray.kernel import iter_located
    from delift_ray.storage import UTILITY

    store = store or run_store(run)
    ids = run.pool.sample_ids
    own = np.full(len(ids), np.nan)
    total = np.zeros(len(ids))
    count = np.zeros(len(ids))
    lo = np.inf
    for rows, cols, vals in iter_located(store.iter_relevant(UTILITY, ids, ids), ids, ids):
        self_pair = rows == cols
        own[rows[self_pair]] = vals[self_pair]
        other = ~self_pair
        if other.any():
            total += np.bincount(cols[other], weights=vals[other], minlength=len(ids))
            count += np.bincount(cols[other], minlength=len(ids))
            lo = min(lo, float(vals[other].min()))
    helps = total - count * lo if np.isfinite(lo) else np.full(len(ids), np.nan)
    return own, helps


def baseline_distances(run: RunData, store=None, ids: Optional[list[str]] = None) -> np.ndarray:
    """d(i, no example) per pool sample, or per sample id of ``ids`` (NaN where it was not stored)."""
    from delift_ray.storage import BASELINE

    store = store or run_store(run)
    ids = run.pool.sample_ids if ids is None else ids
    t = store.read_relevant(BASELINE, ids)
    d = dict(zip(t.column("sample_id").to_pylist(), t.column("distance").to_pylist()))
    return np.array([d.get(s, np.nan) for s in ids], dtype=np.float64)


def ifd_priority(ratio: np.ndarray) -> np.ndarray:
    """IFD's ranking key: a ratio above 1 (the prompt makes the response harder to predict)
    marks a sample IFD discards, so every such sample ranks after all ratios <= 1; among
    those kept, the highest ratio first (NaN stays NaN: not stored)."""
    return np.where(ratio > 1, -ratio, ratio)


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest scores (NaN last), ties to the lower index."""
    s = np.asarray(scores, dtype=np.float64)
    if not 0 < k <= s.size:
        raise DeliftError(f"cannot take the top {k} of {s.size} samples")
    key = np.where(np.isnan(s), -np.inf, s)
    order = np.lexsort((np.arange(s.size), -key))
    return [int(i) for i in order[:k]]


def delift_variant(
    run: RunData, variant: Variant, budget: int, store=None, raw: Optional[dict[str, np.ndarray]] = None
) -> list[int]:
    """The run's stage selection on kernels built with ``variant``'s options.

    Dense kernels over the run's sets from the stored shards. For a knn run, pairs that were
    not scored are missing here and count as 0 after scaling, like unscored pairs of its
    sparse kernel (pairs of the same samples from other runs in a shared cache take part).
    ``raw`` (name -> raw UF matrix) skips re-reading the shards when called repeatedly.
    """
    from delift_ray import stages
    from delift_ray.config import SelectionConfig
    from delift_ray.kernel import finish_dense
    from delift_ray.steps.gate import gate
    from delift_ray.steps.select import select

    store = store or run_store(run)
    kernels = {}
    for m in stages.STAGE_MATRICES[run.stage]:
        M = (raw or {}).get(m.name)
        M = raw_matrix(run, m.helped, m.example, store) if M is None else M
        M = finish_dense(
            M.copy(), _ids(run, m.helped), _ids(run, m.example), diagonal=variant.diagonal, scaling=variant.scaling
        )
        kernels[m.name] = np.ascontiguousarray(M.T) if m.transpose else M
    # The select step reads only cfg.stage and cfg.selection (eta, nu, stop_if_zero_gain, the gate's options).
    cfg = SimpleNamespace(stage=run.stage, selection=SelectionConfig(**((run.config or {}).get("selection") or {})))
    excluded, _ = gate(cfg.selection, run.pool, store)
    chosen, _ = select(cfg, kernels, budget, excluded.mask, excluded.noise_gate)
    return [int(i) for i in chosen.indices]


def raw_matrices(run: RunData, store=None) -> dict[str, np.ndarray]:
    """Every raw UF matrix of the run's stage, by kernel name (read once, reused per variant)."""
    from delift_ray import stages

    store = store or run_store(run)
    return {m.name: raw_matrix(run, m.helped, m.example, store) for m in stages.STAGE_MATRICES[run.stage]}


def arm_subsets(
    run: RunData, budget: int, variants: list[Variant], baselines: tuple[str, ...] = BASELINE_ARMS
) -> dict[str, list[int]]:
    """name -> pool indices of every requested arm at ``budget``."""
    store = run_store(run)
    out: dict[str, list[int]] = {}
    if variants:
        raw = raw_matrices(run, store)
        for v in variants:
            out[f"delift:{v.name}"] = delift_variant(run, v, budget, store, raw)
    scores = BaselineScores(run, store)
    for b in baselines:
        out[b] = scores.subset(b, budget)
    return out


class BaselineScores:
    """Every baseline's per-pool-sample scores, read from the run's shards on first use: one
    pass over the pool x pool utilities serves both ``self_utility`` and ``example_utility``."""

    def __init__(self, run: RunData, store=None):
        self.run = run
        self.store = store or run_store(run)
        self._scores: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in BASELINE_ARMS:
            raise DeliftError(f"unknown baseline {name!r}; choose from {', '.join(BASELINE_ARMS)}")
        if name not in self._scores:
            if name == "longest":
                self._scores[name] = np.array([len(r) for r in self.run.pool.responses], dtype=np.float64)
            elif name == "ifd":
                from delift_ray.gate import prompt_free_id

                free = baseline_distances(self.run, self.store, [prompt_free_id(r) for r in self.run.pool.responses])
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(free > 0, self["hardness"] / free, np.nan)
                self._scores[name] = ifd_priority(ratio)
            elif name == "hardness":
                self._scores[name] = baseline_distances(self.run, self.store)
            else:
                self._scores["self_utility"], self._scores["example_utility"] = pool_pair_scores(self.run, self.store)
        return self._scores[name]

    def subset(self, name: str, budget: int) -> list[int]:
        """The top ``budget`` pool samples of baseline ``name``; DeliftError when fewer are stored."""
        scores = self[name]
        stored = int(np.isfinite(scores).sum())
        if stored < budget:
            raise DeliftError(
                f"baseline {name}: the run's cache holds its scores for {stored} of {len(scores)} pool "
                f"samples, fewer than the {budget} to pick; is the cache named in run.json still there?"
            )
        return top_k(scores, budget)
