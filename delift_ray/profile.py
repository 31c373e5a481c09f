"""What a selection looks like: the pure maths behind a run's profile and its report.

No Ray, no vLLM, no storage: arrays in, arrays out. The profile step
(:mod:`delift_ray.steps.profile`) feeds these from the assembled kernels.

* :func:`histogram`: counts over equal-width bins of the finite values.
* :func:`map_sample`: the pool positions a map draws, every selected one included.
* :func:`project_2d`: the leading two principal components of some rows (dense or CSR),
  by a seeded randomized range finder (Halko, Martinsson and Tropp 2011).
* :func:`top_rows`: for a column j of K (how much j helps each i), the rows i != j it
  helps most: the samples pick j covers best.
* :func:`best_helper_slots`: for knn kernels, whether each sampled row's best helper
  (argmax over j != i of K[i, j]) came from its nearest-neighbour slots or its random ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


@dataclass
class Histogram:
    """``counts[b]`` values fell in ``[edges[b], edges[b + 1])`` (the last bin is closed)."""

    edges: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    values: int = 0  # finite values counted


def histogram(values: np.ndarray, bins: int = 40) -> Histogram:
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Histogram()
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:
        hi = lo + 1e-12
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return Histogram([float(e) for e in edges], [int(c) for c in counts], int(v.size))


def map_sample(n: int, selected: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Sorted pool positions for the map: every selected position, then a seeded uniform
    sample of the others, ``cap`` positions in all (or more, when the selection alone is more)."""
    chosen = np.zeros(n, dtype=bool)
    chosen[np.asarray(selected, dtype=np.int64)] = True
    rest = np.flatnonzero(~chosen)
    room = max(cap - int(chosen.sum()), 0)
    if room < rest.size:
        rest = np.random.default_rng(seed).choice(rest, size=room, replace=False)
    chosen[rest] = True
    return np.flatnonzero(chosen)


def project_2d(X, seed: int, oversample: int = 8, power_iters: int = 3) -> np.ndarray:
    """(m, 2) coordinates of the rows of ``X`` (dense or scipy sparse) on their two leading
    principal directions; each axis' sign is fixed so its largest-magnitude coordinate is
    positive (the same rows give the same map)."""
    m = X.shape[0]
    if m == 0:
        return np.zeros((0, 2))
    # float32 rows stay float32 (a dense map of 10,000 samples is 10,000^2 entries); the
    # products with the (d, 10) test matrices come out in float64.
    X = X.tocsr() if sp.issparse(X) else np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    mu = np.asarray(X.mean(axis=0)).ravel()

    def times(M: np.ndarray) -> np.ndarray:  # (X - 1 mu^T) M without forming the centred X
        return np.asarray(X @ M) - np.outer(np.ones(m), mu @ M)

    def times_t(M: np.ndarray) -> np.ndarray:  # (X - 1 mu^T)^T M
        return np.asarray(X.T @ M) - np.outer(mu, M.sum(axis=0))

    width = min(2 + oversample, *X.shape)
    rng = np.random.default_rng(seed)
    Y = times(rng.standard_normal((X.shape[1], width)))
    for _ in range(power_iters):
        Y, _ = np.linalg.qr(Y)
        Y = times(times_t(Y))
    Q, _ = np.linalg.qr(Y)
    B = times_t(Q).T  # (width, d)
    U, S, _ = np.linalg.svd(B, full_matrices=False)
    coords = (Q @ U[:, :2]) * S[:2]
    if coords.shape[1] < 2:
        coords = np.hstack([coords, np.zeros((m, 2 - coords.shape[1]))])
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), [0, 1]])
    return coords * np.where(signs == 0, 1.0, signs)


def top_rows(K, cols: np.ndarray, m: int) -> list[list[int]]:
    """For each column j in ``cols``: up to ``m`` rows i != j with the largest K[i, j] > 0,
    largest first (ties by row index)."""
    out = []
    csc = K.tocsc() if sp.issparse(K) else None
    for j in np.asarray(cols, dtype=np.int64):
        if csc is not None:
            lo, hi = csc.indptr[j], csc.indptr[j + 1]
            rows, vals = csc.indices[lo:hi].astype(np.int64), csc.data[lo:hi].astype(np.float64)
        else:
            vals = np.asarray(K[:, j], dtype=np.float64)
            rows = np.arange(vals.size)
        keep = (rows != j) & (vals > 0)
        rows, vals = rows[keep], vals[keep]
        order = np.lexsort((rows, -vals))[:m]
        out.append(rows[order].tolist())
    return out


def best_helper_slots(K: sp.csr_matrix, candidates: np.ndarray, rows: np.ndarray, k: int) -> dict[str, int]:
    """For each row i in ``rows`` of a knn kernel: in which of i's candidate slots its best
    helper (argmax over j != i of K[i, j] > 0) lies. ``candidates[i]`` lists the k
    neighbour slots first, then the random ones. Returns counts of neighbour, random and
    none (the row has no helper above 0)."""
    K = K.tocsr()
    out = {"neighbour": 0, "random": 0, "none": 0}
    for i in np.asarray(rows, dtype=np.int64):
        lo, hi = K.indptr[i], K.indptr[i + 1]
        cols, vals = K.indices[lo:hi], K.data[lo:hi]
        keep = (cols != i) & (vals > 0)
        if not keep.any():
            out["none"] += 1
            continue
        cols, vals = cols[keep], vals[keep]
        best = cols[np.lexsort((cols, -vals))[0]]
        slot = np.flatnonzero(candidates[i] == best)
        out["neighbour" if slot.size and slot[0] < k else "random"] += 1
    return out
