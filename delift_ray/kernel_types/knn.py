"""knn: each helped sample's k nearest examples plus ``random`` random ones; the kernel is sparse.

    pairs per matrix = |H| min(k + r, |E|),   memory = 8 bytes per stored entry (CSR)

The candidates come from the embed and neighbours steps. Assembly keeps exactly the run's
candidate pairs (a shared cache may hold others) and scales over the stored entries
(:func:`delift_ray.kernel.assemble_sparse_from_tables`).
"""

from __future__ import annotations

from typing import Mapping

from delift_ray.kernel_types import KernelType, register


def _plan(matrices, candidates, ids, stored, stored_baselines, **kw):
    from delift_ray import planning

    return planning.plan_knn(matrices, candidates, ids, stored, stored_baselines, **kw)


def _assemble(tables, helped_ids, example_ids, candidates, kernel, *, allow_missing, progress, name):
    from delift_ray.kernel import assemble_sparse_from_tables, candidate_keys

    return assemble_sparse_from_tables(
        tables,
        helped_ids,
        example_ids,
        allowed=candidate_keys(candidates, len(example_ids)),
        diagonal=kernel.diagonal,
        scaling=kernel.scaling,
        progress=progress,
        name=name,
    )


def _kernel_bytes(n_rows: int, n_cols: int, per_row: int) -> int:
    from delift_ray.kernel import sparse_kernel_bytes

    return sparse_kernel_bytes(n_rows * per_row, n_rows)


def _assembly_peak_bytes(n_rows: int, n_cols: int, per_row: int) -> int:
    # Positions and values with their sort keys, the CSR, and the selector's CSC copy.
    return 3 * _kernel_bytes(n_rows, n_cols, per_row)


def _label(options: Mapping) -> str:
    return f"knn k {options.get('k')} + random {options.get('random')}"


def _validate(kernel) -> None:
    if kernel.diagonal == "drop" and kernel.k == 1 and kernel.random == 0:
        raise ValueError(
            "kernel.k 1 with kernel.random 0 and kernel.diagonal drop leaves K no pair (a sample is its "
            "own nearest neighbour): raise kernel.k or kernel.random, or set kernel.diagonal keep"
        )


KNN = register(
    KernelType(
        name="knn",
        description="score each helped sample's k nearest examples plus `random` random ones (N*(k+r)) "
        "into a sparse kernel",
        needs_candidates=True,
        plan_pairs=_plan,
        assemble_matrix=_assemble,
        transpose=lambda M: M.T.tocsr(),
        candidates_per_row=lambda kernel, n_examples: min(kernel.k + kernel.random, n_examples),
        kernel_bytes=_kernel_bytes,
        assembly_peak_bytes=_assembly_peak_bytes,
        label=_label,
        validate=_validate,
    )
)
