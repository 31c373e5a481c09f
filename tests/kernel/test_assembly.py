"""Kernel assembly without an engine: dense and sparse kernels from shards, the memory guard."""

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from delift_ray import planning
from delift_ray.errors import DeliftError, ScoringError
from delift_ray.kernel import KernelMemoryError, assemble_dense, assemble_sparse, check_dense_fits, dense_assembly_bytes


def ids_of(prefix, n):
    return [f"{prefix}{i:015x}" for i in range(n)]


def pairs_table(h, e, u):
    return pa.table(
        {
            "helped_id": h,
            "example_id": e,
            "utility": np.asarray(u, np.float32),
            "distance": np.zeros(len(u), np.float32),
        }
    )


def test_assemble_sparse_scales_over_stored_entries_only():
    rows = np.array([0, 0, 1, 2, 2, 0])
    cols = np.array([0, 2, 1, 0, 2, 0])  # (0, 0) stored twice: one value kept
    vals = np.array([1.0, -1.0, 3.0, 0.0, 2.0, 1.0], dtype=np.float32)
    M = assemble_sparse(rows, cols, vals, (3, 4))
    assert sp.isspmatrix_csr(M) and M.shape == (3, 4) and M.dtype == np.float32
    D = M.toarray()
    want = np.zeros((3, 4), np.float32)
    for r, c, v in zip(rows, cols, vals):
        want[r, c] = (v + 1) / 4
    assert np.allclose(D, want)
    assert M.nnz == 4  # the minimum scales to 0 and is not stored
    M2 = assemble_sparse(rows, cols, vals, (3, 4), drop_diagonal=True)
    # without the diagonal only (0, 2) = -1 and (2, 0) = 0 remain: they scale to 0 and 1
    assert M2.nnz == 1 and M2.toarray()[2, 0] == 1.0 and np.diag(M2.toarray()).sum() == 0


def test_assemble_sparse_matches_a_scipy_reference_on_random_entries():
    rng = np.random.default_rng(3)
    n_rows, n_cols, nnz = 70, 50, 900  # many duplicate keys
    rows, cols = rng.integers(0, n_rows, nnz), rng.integers(0, n_cols, nnz)
    vals = rng.normal(size=nnz).astype(np.float32)
    M = assemble_sparse(rows.astype(np.int32), cols.astype(np.int32), vals, (n_rows, n_cols))
    want = np.zeros((n_rows, n_cols), np.float32)
    seen = np.zeros_like(want, dtype=bool)
    for r, c, v in zip(rows, cols, vals):  # first stored value of a pair wins
        if not seen[r, c]:
            want[r, c], seen[r, c] = v, True
    lo, hi = vals[np.unique(rows * n_cols + cols, return_index=True)[1]].min(), want[seen].max()
    want[seen] = (want[seen] - lo) / (hi - lo)
    assert np.allclose(M.toarray(), want, atol=1e-7)
    assert M.has_sorted_indices and M.nnz == int(seen.sum()) - 1  # the minimum becomes 0
    M.check_format(full_check=True)


def test_streamed_sparse_assembly_and_stored_keys_equal_one_table(tmp_path):
    from delift_ray.kernel import assemble_sparse_from_tables
    from delift_ray.storage import UTILITY, ShardStore

    ids = ids_of("p", 20)
    rng = np.random.default_rng(0)
    store = ShardStore(str(tmp_path), "fp")
    for b in range(5):
        h, e = rng.integers(0, 20, 30), rng.integers(0, 20, 30)
        store.write(
            UTILITY,
            f"b{b}",
            pa.table(
                {
                    "helped_id": [ids[i] for i in h],
                    "example_id": [ids[i] for i in e],
                    "utility": rng.normal(size=30).astype(np.float32),
                    "distance": np.zeros(30, np.float32),
                }
            ),
        )
    whole = store.read_relevant(UTILITY, ids, ids)
    options = {"diagonal": "keep", "scaling": "minmax"}
    M1 = assemble_sparse_from_tables(store.iter_relevant(UTILITY, ids, ids, batch_rows=40), ids, ids, **options)
    M2 = assemble_sparse_from_tables(whole, ids, ids, **options)
    assert (M1 != M2).nnz == 0 and M1.nnz > 0
    # Only the run's candidate pairs enter the kernel, whatever else the store holds.
    from delift_ray.kernel import candidate_keys

    cand = np.full((20, 2), -1, dtype=np.int64)
    cand[:, 0] = (np.arange(20) + 1) % 20
    allowed = candidate_keys(cand, 20)
    M3 = assemble_sparse_from_tables(
        store.iter_relevant(UTILITY, ids, ids, batch_rows=40), ids, ids, allowed=allowed, **options
    )
    r3, c3 = M3.nonzero()
    assert M3.nnz > 0 and np.all(c3 == (r3 + 1) % 20)
    index = planning.IdIndex({"pool": ids})
    k1 = planning.stored_pair_keys(store.iter_relevant(UTILITY, ids, ids, batch_rows=40), index)
    assert np.array_equal(k1, planning.stored_pair_keys(whole, index)) and np.all(np.diff(k1) > 0)


def test_memory_guard_suggests_knn():
    assert check_dense_fits({"K": (100, 100)}, available=10**9) == dense_assembly_bytes(100, 100)
    with pytest.raises(KernelMemoryError, match="kernel.type: knn") as e:
        check_dense_fits({"K": (1_000_000, 1_000_000)}, available=24 * 2**30)
    assert isinstance(e.value, DeliftError) and "\n" not in str(e.value)


def test_candidate_keys_are_sorted_unique_and_skip_empty_slots():
    from delift_ray.kernel import candidate_keys

    rng = np.random.default_rng(1)
    C = rng.integers(-1, 30, size=(50, 7))
    want = np.unique([h * 30 + e for h in range(50) for e in C[h] if e >= 0])
    assert np.array_equal(candidate_keys(C, 30), want)
    assert candidate_keys(np.full((3, 2), -1), 5).size == 0


def test_assembly_places_pairs_and_refuses_holes():
    t = pairs_table(["a", "a", "b", "b", "z"], ["a", "b", "a", "b", "a"], [1, 2, 3, 4, 9])
    K = assemble_dense(t, ["a", "b"], ["a", "b"])
    assert K.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(ScoringError, match="missing 1 of 4"):
        assemble_dense(t.slice(0, 3), ["a", "b"], ["a", "b"])
    K = assemble_dense(t.slice(0, 3), ["a", "b"], ["a", "b"], allow_missing=True)
    assert np.isnan(K[1, 1])
