"""Profile: what the report shows of a selection, computed while the kernels are in memory.

It reads no more than a sample of the store and writes two small run files (see
:mod:`delift_ray.rundir`): ``map.parquet`` (a 2-D projection of a stated sample of the
pool, every selected sample included) and ``curve.parquet`` (every pick the greedy made,
the budget's and those after it, with the samples the first picks cover best). The
distributions and the knn helper shares go into run.json with this step's stats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from delift_ray import profile as pf
from delift_ray.config import DeliftConfig
from delift_ray.steps.base import StepStats
from delift_ray.storage import UTILITY, ShardStore

MAP_POINTS = 5000  # unselected samples drawn on the map at most (selected ones always)
HELPED_SAMPLE = 2000  # helped samples whose stored utilities make the distributions
COVERED = 3  # samples listed as best covered by each pick
COVER_PICKS = 1000  # picks that get that list (the report's table shows these)


@dataclass
class Profile:
    map: pa.Table  # sample_id, x, y, rank (-1: not selected)
    curve: pa.Table  # rank, sample_id, gain, in_subset, covers


@dataclass
class ProfileStats(StepStats):
    helped_sampled: int = 0
    pool: int = 0
    pairs_sampled: int = 0
    uf_diagonal: pf.Histogram = field(default_factory=pf.Histogram)
    uf_off_diagonal: pf.Histogram = field(default_factory=pf.Histogram)
    kernel: pf.Histogram = field(default_factory=pf.Histogram)
    best_helper: Optional[dict[str, int]] = None  # knn: neighbour / random / none
    map_points: int = 0
    map_source: str = ""
    curve_picks: int = 0

    def summary(self) -> str:
        return (
            f"map of {self.map_points} of {self.pool} samples ({self.map_source}), utilities of "
            f"{self.helped_sampled} helped samples ({self.pairs_sampled} pairs), gain curve of {self.curve_picks} picks"
        )


def profile(
    cfg: DeliftConfig,
    sets: dict,
    store: ShardStore,
    kernels: dict,
    selection,
    excluded: Optional[np.ndarray] = None,
    candidates: Optional[dict[str, np.ndarray]] = None,
    vectors: Optional[np.ndarray] = None,
) -> tuple[Profile, ProfileStats]:
    """The run's profile of ``selection`` (:class:`delift_ray.steps.select.Selection`). ``vectors``: the knn embedder's pool vectors (the map's source);
    without them the map projects the kernel's rows (how much each sample helps the others)."""
    ids = sets["pool"].samples.sample_ids
    K = kernels["K"]
    n = len(ids)
    rng_seed = cfg.seed
    helped = helped_sample(n, rng_seed)
    stats = ProfileStats(helped_sampled=int(helped.size), pool=n)
    _utility_histograms(stats, store, [ids[i] for i in helped], ids)
    stats.kernel = pf.histogram(_kernel_values(K, helped, excluded))
    if candidates is not None and sp.issparse(K):
        stats.best_helper = pf.best_helper_slots(K, candidates["K"], helped, cfg.kernel.k)

    picks = np.concatenate([selection.indices, selection.next_indices]).astype(np.int64)
    positions = pf.map_sample(n, selection.indices, MAP_POINTS + selection.indices.size, rng_seed)
    if vectors is not None:
        X, stats.map_source = vectors[positions], "embeddings"
    else:
        X = K[positions][:, positions] if sp.issparse(K) else K[np.ix_(positions, positions)]
        stats.map_source = "kernel rows"
    xy = pf.project_2d(X, rng_seed)
    rank = np.full(n, -1, dtype=np.int64)
    rank[selection.indices] = np.arange(selection.indices.size)
    map_table = pa.table(
        {
            "sample_id": pa.array([ids[i] for i in positions], pa.string()),
            "x": xy[:, 0].astype(np.float32),
            "y": xy[:, 1].astype(np.float32),
            "rank": rank[positions],
        }
    )
    stats.map_points = int(positions.size)

    covers = pf.top_rows(K, picks[:COVER_PICKS], COVERED)
    curve = pa.table(
        {
            "rank": np.arange(picks.size, dtype=np.int64),
            "sample_id": pa.array([ids[i] for i in picks], pa.string()),
            "gain": np.concatenate([selection.gains, selection.next_gains]).astype(np.float64),
            "in_subset": np.arange(picks.size) < selection.indices.size,
            "covers": pa.array(
                [[ids[r] for r in c] for c in covers] + [None] * (picks.size - len(covers)), pa.list_(pa.string())
            ),
        }
    )
    stats.curve_picks = int(picks.size)
    return Profile(map_table, curve), stats


def helped_sample(n: int, seed: int) -> np.ndarray:
    """Sorted pool positions whose stored utilities make the distributions (all of them up to
    HELPED_SAMPLE)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, HELPED_SAMPLE), replace=False))


def _utility_histograms(stats: ProfileStats, store: ShardStore, helped: list[str], pool: list[str]) -> None:
    """UF of every stored pair of the sampled helped samples with a pool example, split into
    the self pairs UF(i <- i) and the others."""
    want_h, want_e = pa.array(helped, pa.string()), pa.array(pool, pa.string())
    diag, off = [], []
    for t in store.iter_relevant(UTILITY, helped, pool):
        t = t.filter(pc.and_(pc.is_in(t["helped_id"], want_h), pc.is_in(t["example_id"], want_e)))
        self_pair = pc.equal(t["helped_id"], t["example_id"])
        diag.append(t["utility"].filter(self_pair).to_numpy())
        off.append(t["utility"].filter(pc.invert(self_pair)).to_numpy())
    d = np.concatenate(diag) if diag else np.zeros(0)
    o = np.concatenate(off) if off else np.zeros(0)
    stats.pairs_sampled = int(d.size + o.size)
    stats.uf_diagonal, stats.uf_off_diagonal = pf.histogram(d), pf.histogram(o)


def _kernel_values(K, rows: np.ndarray, excluded: Optional[np.ndarray]) -> np.ndarray:
    """The scaled kernel's entries K[i, j], j != i, of the sampled rows, over the columns the
    greedy could pick (the stored entries of a sparse kernel)."""
    if sp.issparse(K):
        sub = K.tocsr()[rows].tocoo()
        keep = sub.col != rows[sub.row]
        if excluded is not None:
            keep &= ~excluded[sub.col]
        return sub.data[keep]
    sub = np.asarray(K[rows])
    keep = np.ones(sub.shape, dtype=bool)
    keep[np.arange(rows.size), rows] = False
    if excluded is not None:
        keep[:, excluded] = False
    return sub[keep]
