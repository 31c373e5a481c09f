"""Kernel assembly: utility shards in, one dense matrix per kernel out.

``assemble_dense(table, helped_ids, example_ids)`` places every stored UF(h <- e) at
``M[row of h, column of e]``. Pairs outside the requested sets are ignored (a shared
cache holds more than one run needs); a pair that is missing is an error, never a
silent zero. The caller scales the raw matrix with
:func:`delift_ray.utility.minmax_scale` over the whole kernel.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from delift_ray.errors import ScoringError

BYTES_PER_ENTRY = 4  # float32


def kernel_bytes(n_rows: int, n_cols: int) -> int:
    return n_rows * n_cols * BYTES_PER_ENTRY


def locate(table: pa.Table, helped_ids: list[str], example_ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values) of the stored pairs that fall inside the requested sets."""
    h = pc.index_in(table.column("helped_id"), value_set=pa.array(helped_ids, pa.string()))
    e = pc.index_in(table.column("example_id"), value_set=pa.array(example_ids, pa.string()))
    keep = pc.and_(pc.is_valid(h), pc.is_valid(e))
    rows = pc.filter(h, keep).to_numpy(zero_copy_only=False).astype(np.int64)
    cols = pc.filter(e, keep).to_numpy(zero_copy_only=False).astype(np.int64)
    vals = pc.filter(table.column("utility"), keep).to_numpy(zero_copy_only=False).astype(np.float32)
    return rows, cols, vals


def assemble_dense(
    table: pa.Table, helped_ids: list[str], example_ids: list[str], *, name: str = "K", allow_missing: bool = False
) -> np.ndarray:
    """Dense float32 matrix M[h, e] = UF(h <- e).

    A missing pair raises, unless ``allow_missing`` (failed blocks were skipped on
    request): then it is NaN, and scaling later turns it into the kernel's minimum.
    """
    rows, cols, vals = locate(table, helped_ids, example_ids)
    M = np.zeros((len(helped_ids), len(example_ids)), dtype=np.float32)
    seen = np.zeros(M.shape, dtype=bool)
    M[rows, cols] = vals
    seen[rows, cols] = True
    missing = int(seen.size - seen.sum())
    if missing and allow_missing:
        M[~seen] = np.nan
    elif missing:
        h, e = np.argwhere(~seen)[0]
        raise ScoringError(
            f"kernel {name} is missing {missing} of {seen.size} pairs (first: helped {helped_ids[h]}, "
            f"example {example_ids[e]}); re-run the same command to score them"
        )
    return M
