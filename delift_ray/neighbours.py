"""Candidate examples for the knn kernel: nearest neighbours plus seeded random ones.

Pure computation (numpy + faiss); no Ray, no vLLM.

For helped vectors x_i (queries) and example vectors y_j (base), both L2-normalised, the
similarity is the inner product (cosine). Row i of :func:`candidates` holds

* the ``k' = min(k, |Y|)`` base indices with the largest <x_i, y_j> (faiss; exact
  ``IndexFlatIP`` up to ``exact_max`` base vectors, an ``IndexIVFFlat`` beyond), and
* ``r' = min(r, |Y| - k')`` further base indices drawn uniformly without replacement
  from the ones not already in the row (numpy ``default_rng(seed)``),

so every row has exactly ``k' + r'`` distinct entries. Nothing is excluded: when the
queries are the base itself (kernel K), i is normally its own nearest neighbour, just
as the diagonal is scored in dense mode.
"""

from __future__ import annotations

import math

import numpy as np


def normalise(x: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    """Row-wise L2-normalised float32 C-contiguous rows (zero rows stay zero).

    ``x`` itself when it already is that (the embed step's vectors are: at 1M x 576 a
    copy is 2.3 GB), else a normalised copy; ``x`` is never modified.
    """
    if isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous and x.ndim == 2:
        sq = np.einsum("ij,ij->i", x, x)
        if np.all((np.abs(sq - 1) <= tol) | (sq == 0)):
            return x
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def on_gpus(index):
    """The index moved to every GPU faiss sees (a faiss-gpu build), else unchanged."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    if get is None or get() < 1:
        return index
    return faiss.index_cpu_to_all_gpus(index)


def build_index(base: np.ndarray, exact_max: int, seed: int = 0):
    """A faiss inner-product index over ``base`` (normalised float32 rows).

    Exact (``IndexFlatIP``) when ``len(base) <= exact_max``; else IVF-Flat with
    ``nlist = 4 sqrt(n)`` lists trained on at most 39 samples per list, searched with
    ``nprobe = 16`` (recall of the top-k is high for clustered data, not exact). With a
    faiss-gpu build and visible GPUs the index is trained and searched on them.
    """
    import faiss

    n, d = base.shape
    if n <= exact_max:
        index = on_gpus(faiss.IndexFlatIP(d))
        index.add(base)
        return index
    nlist = max(16, int(4 * math.sqrt(n)))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    n_train = min(n, nlist * 39)  # faiss warns below 39 points per centroid
    train = base[np.sort(rng.choice(n, n_train, replace=False))] if n_train < n else base
    index.cp.seed = seed
    index.nprobe = min(16, nlist)
    index = on_gpus(index)
    index.train(train)
    index.add(base)
    return index


def nearest(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    exact_max: int,
    seed: int = 0,
    batch: int = 16384,
    progress: bool = False,
) -> np.ndarray:
    """(n_queries, min(k, n_base)) int64 indices of each query's nearest base vectors.

    An approximate index may return fewer than k hits for a query; those slots are -1.
    ``progress``: a bar over the searched queries (index training shows none).
    """
    from tqdm import tqdm

    k = min(k, len(base))
    index = build_index(base, exact_max, seed)
    out = np.empty((len(queries), k), dtype=np.int64)
    with tqdm(total=len(queries), unit="sample", desc="neighbours", disable=not progress, dynamic_ncols=True) as bar:
        for s in range(0, len(queries), batch):
            _, out[s : s + batch] = index.search(queries[s : s + batch], k)
            bar.update(min(batch, len(queries) - s))
    return out


def _distinct_uniform(n_rows: int, m: int, r: int, rng: np.random.Generator) -> np.ndarray:
    """(n_rows, r) values in [0, m), distinct within each row, uniform; vectorised."""
    if r == 0:
        return np.empty((n_rows, 0), dtype=np.int64)
    if m <= 4 * r:  # small range: a random permutation per row
        return np.argsort(rng.random((n_rows, m)), axis=1)[:, :r].astype(np.int64)
    out = rng.integers(0, m, size=(n_rows, r), dtype=np.int64)
    bad = np.arange(n_rows)
    while bad.size:  # redraw the rows that drew a value twice (rare when m >> r)
        s = np.sort(out[bad], axis=1)
        dup = (s[:, 1:] == s[:, :-1]).any(axis=1)
        bad = bad[dup]
        out[bad] = rng.integers(0, m, size=(bad.size, r), dtype=np.int64)
    return out


def random_excluding(exclude: np.ndarray, m: int, r: int, rng: np.random.Generator, chunk: int = 1 << 16) -> np.ndarray:
    """(n_rows, r') values in [0, m) avoiding each row's ``exclude`` entries, distinct per row.

    ``exclude`` is (n_rows, c) with distinct valid entries per row (or -1 for none);
    r' = min(r, m - c). Draws v uniformly from [0, m - c) and maps it to the v-th
    non-excluded value: v + #{excluded e : e - rank(e) <= v}. The draws are made for all
    rows at once and the mapping ``chunk`` rows at a time: the same values as one pass,
    without four (n_rows, c) int64 temporaries (1 GB at 1M rows and c = 32).
    """
    n_rows, c = exclude.shape
    r = min(r, m - c)
    if r <= 0:
        return np.empty((n_rows, 0), dtype=np.int64)
    v = _distinct_uniform(n_rows, m - c, r, rng)
    if c == 0:
        return v
    for s in range(0, n_rows, chunk):
        v[s : s + chunk] = _skip_excluded(exclude[s : s + chunk], v[s : s + chunk], m)
    return v


def _skip_excluded(exclude: np.ndarray, v: np.ndarray, m: int) -> np.ndarray:
    """v + #{excluded e : e - rank(e) <= v}, row by row (see :func:`random_excluding`)."""
    n_rows, c = exclude.shape
    r = v.shape[1]
    ex = np.sort(np.where(exclude < 0, np.iinfo(np.int64).max // 4, exclude), axis=1)
    shifted = ex - np.arange(c)  # non-decreasing per row
    # Row-wise searchsorted in one call: offset each row by a multiple of a big stride.
    stride = np.int64(4 * (m + c + 1))
    off = (np.arange(n_rows, dtype=np.int64) * stride)[:, None]
    flat = np.minimum(shifted, m + c) + off
    pos = np.searchsorted(flat.ravel(), (v + off).ravel(), side="right").reshape(n_rows, r)
    return v + (pos - (np.arange(n_rows) * c)[:, None])


def candidates(
    queries: np.ndarray, base: np.ndarray, k: int, r: int, *, exact_max: int, seed: int, progress: bool = False
) -> np.ndarray:
    """(n_queries, k' + r') int64 candidate base indices per query; distinct per row.

    Slots an approximate index leaves empty (-1) are filled with extra random draws,
    so the row count stays k' + r'.
    """
    q = normalise(queries)
    b = q if base is queries else normalise(base)  # K's queries are its base: one copy at 1M
    nn = nearest(q, b, k, exact_max, seed, progress=progress)
    rng = np.random.default_rng(seed)
    missing = nn < 0
    extra = int(missing.sum(axis=1).max()) if missing.any() else 0
    rnd = random_excluding(nn, len(b), r + extra, rng)
    if extra and rnd.shape[1] == r + extra:
        # Slot t of a row's empty slots takes that row's extra random column r + t.
        rows, cols = np.nonzero(missing)
        nn[rows, cols] = rnd[rows, r + (np.cumsum(missing, axis=1) - 1)[rows, cols]]
    return np.concatenate([nn, rnd[:, :r]], axis=1)  # any slot still -1 is dropped by the planner
