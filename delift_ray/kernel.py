"""Kernel assembly: utility shards in, one matrix per kernel out.

Dense: ``assemble_dense(tables, helped_ids, example_ids)`` places every stored
UF(h <- e) at ``M[row of h, column of e]``. Pairs outside the requested sets are ignored
(a shared cache holds more than one run needs); a pair that is missing is an error,
never a silent zero. :func:`finish_dense` then applies the kernel options over the whole
matrix.

Sparse (knn): ``assemble_sparse_from_tables`` keeps exactly the run's candidate pairs
and builds a CSR matrix scaled over its stored entries (:func:`assemble_sparse`).

Kernel options (``kernel.diagonal``, ``kernel.scaling``; both act on stored utilities,
nothing is re-scored):

* diagonal ``keep`` | ``drop``: ``drop`` removes the self pairs UF(i <- i), a sample shown
  as its own example (same sample id as helped and as example), before scaling; they
  become 0. Self-utility dwarfs every off-diagonal entry (0.43 vs 0.0006 on the demo),
  so with ``keep`` facility location mostly ranks samples by their self-utility. The
  config's default is ``drop``: in the quality study (docs/quality.md) drop-minmax was no
  worse than any other variant at both budgets of both pools, and ``keep`` (the paper's
  kernel) worse than it at three of the four.
* scaling ``minmax`` | ``clip``: ``minmax`` maps [min UF, max UF] to [0, 1], so UF = 0
  lands above 0 and a harmful example (UF < 0) still counts as coverage. ``clip`` is
  max(UF, 0) / max UF: a harmful or useless example covers nothing. A kernel whose
  largest entry is <= 0 becomes all zeros.

Both take the shards as a stream of tables (``ShardStore.iter_relevant``), so only one
batch of id strings is in memory at a time.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from delift_ray import scalings
from delift_ray.errors import ScoringError
from delift_ray.planning import isin_sorted, table_stream

BYTES_PER_ENTRY = 4  # float32

DIAGONALS = ("keep", "drop")
SCALINGS = scalings.names()  # one module each in delift_ray/scalings/


def _check_options(diagonal: str, scaling: str) -> None:
    if diagonal not in DIAGONALS:
        raise ValueError(f"kernel diagonal must be one of {DIAGONALS}, got {diagonal!r}")
    scalings.get(scaling)


def scale_values(vals: np.ndarray, scaling: str) -> np.ndarray:
    """A scaled float32 copy of a 1-d array of utilities (:mod:`delift_ray.scalings`)."""
    out = np.array(vals, dtype=np.float32, copy=True)
    scalings.get(scaling).scale(out)
    return out


def self_positions(helped_ids: list[str], example_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) where the helped sample and the example are the same sample (same id).

    For K (pool x pool) this is the diagonal; for Q or P it is whatever the two sets share.
    """
    where = {sid: c for c, sid in enumerate(example_ids)}
    pairs = [(r, where[sid]) for r, sid in enumerate(helped_ids) if sid in where]
    if not pairs:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rows, cols = np.array(pairs, dtype=np.int64).T
    return rows, cols


def finish_dense(
    M: np.ndarray, helped_ids: list[str], example_ids: list[str], *, diagonal: str, scaling: str
) -> np.ndarray:
    """Apply the kernel options to a raw dense UF matrix in place and return it.

    NaN entries (missing pairs a run was allowed to skip) and, with ``diagonal="drop"``,
    the self pairs take no part in scaling and end as 0; everything else is scaled over
    the whole matrix (never per block) by the registered scaling (:mod:`delift_ray.scalings`).
    """
    _check_options(diagonal, scaling)
    if diagonal == "drop":
        r, c = self_positions(helped_ids, example_ids)
        M[r, c] = np.nan
    # In place, no copy of the kernel: at 20k x 20k a copy is 1.6 GB.
    missing = np.isnan(M)
    scalings.get(scaling).scale(M)
    M[missing] = 0.0
    return M


def kernel_bytes(n_rows: int, n_cols: int) -> int:
    return n_rows * n_cols * BYTES_PER_ENTRY


Tables = Union[pa.Table, Iterable[pa.Table]]


def _locate_batch(table: pa.Table, helped: pa.Array, examples: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = pc.index_in(table.column("helped_id"), value_set=helped)
    e = pc.index_in(table.column("example_id"), value_set=examples)
    keep = pc.and_(pc.is_valid(h), pc.is_valid(e))
    rows = pc.filter(h, keep).to_numpy(zero_copy_only=False).astype(np.int32)
    cols = pc.filter(e, keep).to_numpy(zero_copy_only=False).astype(np.int32)
    vals = pc.filter(table.column("utility"), keep).to_numpy(zero_copy_only=False).astype(np.float32)
    return rows, cols, vals


def iter_located(
    tables: Tables,
    helped_ids: list[str],
    example_ids: list[str],
    *,
    progress: bool = False,
    total: int | None = None,
    desc: str = "assemble",
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, cols, values) per table, of the stored pairs inside the requested sets.

    Rows and columns are int32 positions in ``helped_ids`` / ``example_ids`` (12 bytes a
    pair, instead of the ~50 bytes of the two id strings). ``progress``: a bar over the
    stored rows read (``total``: the rows expected, where known).
    """
    from tqdm import tqdm

    helped, examples = pa.array(helped_ids, pa.string()), pa.array(example_ids, pa.string())
    with tqdm(total=total, unit="pair", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for table in table_stream(tables):
            yield _locate_batch(table, helped, examples)
            bar.update(table.num_rows)


def assemble_dense(
    tables: Tables,
    helped_ids: list[str],
    example_ids: list[str],
    *,
    name: str = "K",
    allow_missing: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """Dense float32 matrix M[h, e] = UF(h <- e), filled table by table.

    ``tables`` is one table or an iterable of them (``ShardStore.iter_relevant``), so only
    one batch of id strings is in memory next to M. A missing pair raises, unless
    ``allow_missing`` (failed blocks were skipped on request): then it is NaN, and
    scaling later turns it into the kernel's minimum.
    """
    M = np.zeros((len(helped_ids), len(example_ids)), dtype=np.float32)
    seen = np.zeros(M.shape, dtype=bool)
    for rows, cols, vals in iter_located(
        tables, helped_ids, example_ids, progress=progress, total=M.size, desc=f"assemble {name}"
    ):
        M[rows, cols] = vals
        seen[rows, cols] = True
    missing = int(seen.size - np.count_nonzero(seen))
    if missing and allow_missing:
        M[~seen] = np.nan
    elif missing:
        h, e = np.argwhere(~seen)[0]
        raise ScoringError(
            f"kernel {name} is missing {missing} of {seen.size} pairs (first: helped {helped_ids[h]}, "
            f"example {example_ids[e]}); re-run the same command to score them"
        )
    return M


# --------------------------------------------------------------------------- memory guard

# assemble_dense holds M (float32) and a seen-mask (bool), scaling builds a NaN mask
# (bool) and a transposed kernel is copied once more (float32): about 10 bytes a pair.
DENSE_ASSEMBLY_BYTES_PER_ENTRY = 10


class KernelMemoryError(ScoringError):
    """A dense kernel would not fit in memory."""


def dense_assembly_bytes(n_rows: int, n_cols: int) -> int:
    return n_rows * n_cols * DENSE_ASSEMBLY_BYTES_PER_ENTRY


def available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def check_dense_fits(shapes: dict[str, tuple[int, int]], available: int | None = None) -> int:
    """Raise :class:`KernelMemoryError` unless the dense kernels fit in available memory.

    ``shapes`` maps kernel name -> (rows, cols); returns the estimated bytes.
    """
    need = sum(dense_assembly_bytes(r, c) for r, c in shapes.values())
    have = available_bytes() if available is None else available
    if need > have:
        desc = ", ".join(f"{n} {r}x{c}" for n, (r, c) in shapes.items())
        raise KernelMemoryError(
            f"dense kernels ({desc}) need about {need / 2**30:.1f} GiB to assemble but only "
            f"{have / 2**30:.1f} GiB is available; use kernel.type: knn (--kernel.type knn) for a sparse kernel"
        )
    return need


# --------------------------------------------------------------------------- sparse (knn) kernels


def sparse_kernel_bytes(nnz: int, n_rows: int) -> int:
    """CSR bytes: float32 data + int32 indices per entry, int64 row pointers."""
    return nnz * (4 + 4) + (n_rows + 1) * 8


def assemble_sparse(
    rows: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    shape: tuple[int, int],
    *,
    drop_diagonal: bool = False,
    scaling: str = "minmax",
    drop_keys: np.ndarray | None = None,
):
    """CSR float32 kernel from stored entries, scaled over the stored entries only.

        M[h, e] = scale(UF(h <- e))   for stored (h, e)   (:func:`scale_values`)
        M[h, e] = 0                   for pairs never scored

    With minmax a pair that was not scored counts like the least useful scored pair (the
    stored minimum also becomes 0 and is then not stored); with clip it counts like any
    example that does not help (UF <= 0). A pair stored twice (two shards) keeps its first
    value. ``drop_diagonal`` removes (i, i), and ``drop_keys`` (int64 keys
    ``row * n_cols + col``) removes those pairs, before scaling (kernel.diagonal drop).

    Built directly in CSR from one stable sort of the int64 pair keys: scipy's COO route
    would hold two more copies of the entries, which at 36M pairs is the peak.
    """
    import scipy.sparse as sp

    n_rows, n_cols = shape
    key = np.asarray(rows, dtype=np.int64) * n_cols + np.asarray(cols, dtype=np.int64)
    vals = np.asarray(vals, dtype=np.float32)
    if drop_diagonal:
        off = key // n_cols != key % n_cols
        key, vals = key[off], vals[off]
    if drop_keys is not None and len(drop_keys):
        off = ~np.isin(key, np.asarray(drop_keys, dtype=np.int64))
        key, vals = key[off], vals[off]
    order = np.argsort(key, kind="stable")
    key = key[order]
    first = np.ones(key.size, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, vals = key[first], vals[order[first]]
    del order, first
    vals = scale_values(vals, scaling)
    nz = vals != 0
    key, vals = key[nz], vals[nz]
    idx_dtype = np.int32 if max(key.size, n_cols) < 2**31 else np.int64
    indptr = np.zeros(n_rows + 1, dtype=idx_dtype)
    np.cumsum(np.bincount(key // n_cols, minlength=n_rows), out=indptr[1:])
    indices = (key % n_cols).astype(idx_dtype)
    return sp.csr_matrix((vals, indices, indptr), shape=shape)


def candidate_keys(candidates: np.ndarray, n_cols: int) -> np.ndarray:
    """Sorted int64 keys ``h * n_cols + e`` of a (n_helped, c) candidate matrix (-1 = none)."""
    # Sorting within rows (c entries each) orders the row-major keys globally: no
    # global sort of N*c keys (np.unique took about a minute at 36M here).
    C = np.sort(np.asarray(candidates), axis=1).astype(np.int64)
    keys = (np.arange(C.shape[0], dtype=np.int64)[:, None] * n_cols + C)[C >= 0]
    if keys.size:
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    return keys


def assemble_sparse_from_tables(
    tables: Tables,
    helped_ids: list[str],
    example_ids: list[str],
    *,
    allowed: np.ndarray | None = None,
    diagonal: str,
    scaling: str,
    progress: bool = False,
    name: str = "K",
):
    """CSR kernel M[h, e] of the stored pairs inside the requested sets (see :func:`assemble_sparse`).

    ``diagonal="drop"`` removes every self pair (:func:`self_positions`).

    ``allowed`` (sorted keys from :func:`candidate_keys`) keeps only the run's own
    candidate pairs: a shared cache may hold other pairs of the same samples (a dense run,
    another k), and taking them in would make the selection depend on the cache's history.
    ``tables`` may be an iterable (``ShardStore.iter_relevant``): only the int32
    positions and float32 values of the pairs are accumulated, never their id strings.
    """
    n_cols = len(example_ids)
    parts = []
    total = None if allowed is None else int(allowed.size)
    for rows, cols, vals in iter_located(
        tables, helped_ids, example_ids, progress=progress, total=total, desc=f"assemble {name}"
    ):
        if allowed is not None:
            keep = isin_sorted(rows.astype(np.int64) * n_cols + cols, allowed)
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
        parts.append((rows, cols, vals))
    if parts:
        rows, cols, vals = (np.concatenate(x) for x in zip(*parts))
    else:
        rows, cols, vals = np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.float32)
    _check_options(diagonal, scaling)
    # Ids are unique within a set (ingest merges duplicates), so over one set (K) the self pairs
    # are the positional diagonal: one vectorised pass, where matching ids costs a dict of the
    # set and a set-membership test of every stored key (seconds at 36M pairs).
    same_set = helped_ids is example_ids or (
        len(helped_ids) == len(example_ids) and list(helped_ids) == list(example_ids)
    )
    drop = None
    if diagonal == "drop" and not same_set:
        r, c = self_positions(helped_ids, example_ids)
        drop = r * n_cols + c
    return assemble_sparse(
        rows,
        cols,
        vals,
        (len(helped_ids), n_cols),
        drop_diagonal=diagonal == "drop" and same_set,
        scaling=scaling,
        drop_keys=drop,
    )
