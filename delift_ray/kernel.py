"""Kernel assembly: utility shards in, one matrix per kernel out.

Dense: ``assemble_dense(tables, helped_ids, example_ids)`` places every stored
UF(h <- e) at ``M[row of h, column of e]``. Pairs outside the requested sets are ignored
(a shared cache holds more than one run needs); a pair that is missing is an error,
never a silent zero. The caller scales the raw matrix with
:func:`delift_ray.utility.minmax_scale` over the whole kernel.

Sparse (knn): ``assemble_sparse_from_tables`` keeps exactly the run's candidate pairs
and builds a CSR matrix scaled over its stored entries (:func:`assemble_sparse`).

Both take the shards as a stream of tables (``ShardStore.iter_relevant``), so only one
batch of id strings is in memory at a time.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from delift_ray.errors import ScoringError
from delift_ray.planning import isin_sorted, table_stream

BYTES_PER_ENTRY = 4  # float32


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


def iter_located(tables: Tables, helped_ids: list[str], example_ids: list[str], *, progress: bool = False,
                 total: int | None = None, desc: str = "assemble") -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
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
    tables: Tables, helped_ids: list[str], example_ids: list[str], *, name: str = "K", allow_missing: bool = False,
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
    for rows, cols, vals in iter_located(tables, helped_ids, example_ids, progress=progress, total=M.size, desc=f"assemble {name}"):
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
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int], *, drop_diagonal: bool = False
):
    """CSR float32 kernel from stored entries, min-max scaled over the stored entries only.

        M[h, e] = (UF(h <- e) - lo) / (hi - lo)   for stored (h, e),  lo/hi = min/max over stored
        M[h, e] = 0                                for pairs never scored

    so a pair that was not scored counts like the least useful scored pair (the stored
    minimum also becomes 0 and is then not stored). A pair stored twice (two shards)
    keeps its first value. ``drop_diagonal`` removes (i, i) before scaling (exclude_self).

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
    order = np.argsort(key, kind="stable")
    key = key[order]
    first = np.ones(key.size, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, vals = key[first], vals[order[first]]
    del order, first
    if vals.size:
        lo, hi = float(vals.min()), float(vals.max())
        vals = ((vals - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(vals)
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


def assemble_sparse_from_tables(tables: Tables, helped_ids: list[str], example_ids: list[str], *,
                                allowed: np.ndarray | None = None, drop_diagonal: bool = False,
                                progress: bool = False, name: str = "K"):
    """CSR kernel M[h, e] of the stored pairs inside the requested sets (see :func:`assemble_sparse`).

    ``allowed`` (sorted keys from :func:`candidate_keys`) keeps only the run's own
    candidate pairs: a shared cache may hold other pairs of the same samples (a dense run,
    another k), and taking them in would make the selection depend on the cache's history.
    ``tables`` may be an iterable (``ShardStore.iter_relevant``): only the int32
    positions and float32 values of the pairs are accumulated, never their id strings.
    """
    n_cols = len(example_ids)
    parts = []
    total = None if allowed is None else int(allowed.size)
    for rows, cols, vals in iter_located(tables, helped_ids, example_ids, progress=progress, total=total, desc=f"assemble {name}"):
        if allowed is not None:
            keep = isin_sorted(rows.astype(np.int64) * n_cols + cols, allowed)
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
        parts.append((rows, cols, vals))
    if parts:
        rows, cols, vals = (np.concatenate(x) for x in zip(*parts))
    else:
        rows, cols, vals = np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.float32)
    return assemble_sparse(rows, cols, vals, (len(helped_ids), n_cols), drop_diagonal=drop_diagonal)

