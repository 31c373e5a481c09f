"""dense: every pair of H x E is scored, and the kernel is a float32 array.

    pairs per matrix = |H| |E|,   memory = 4 |H| |E| bytes (about 10 during assembly)

Exact, and the paper's kernel; quadratic, so a memory guard stops a run before scoring
when the kernels would not fit (:func:`delift_ray.kernel.check_dense_fits`).
"""

from __future__ import annotations

from typing import Mapping

from delift_ray.kernel_types import KernelType, register


def _plan(matrices, candidates, ids, stored, stored_baselines, **kw):
    from delift_ray import planning

    return planning.plan_blocks(matrices, ids, stored, stored_baselines, **kw)


def _assemble(tables, helped_ids, example_ids, candidates, kernel, *, allow_missing, progress, name):
    from delift_ray.kernel import assemble_dense, finish_dense

    M = assemble_dense(tables, helped_ids, example_ids, name=name, allow_missing=allow_missing, progress=progress)
    return finish_dense(M, helped_ids, example_ids, diagonal=kernel.diagonal, scaling=kernel.scaling)


def _check_fits(shapes: dict[str, tuple[int, int]]) -> None:
    from delift_ray.kernel import check_dense_fits

    check_dense_fits(shapes)


def _kernel_bytes(n_rows: int, n_cols: int, per_row: int) -> int:
    from delift_ray.kernel import kernel_bytes

    return kernel_bytes(n_rows, n_cols)


def _assembly_peak_bytes(n_rows: int, n_cols: int, per_row: int) -> int:
    from delift_ray.kernel import dense_assembly_bytes

    return dense_assembly_bytes(n_rows, n_cols)


def _label(options: Mapping) -> str:
    return "dense"


DENSE = register(
    KernelType(
        name="dense",
        description="score every pair (N^2) into a dense kernel",
        needs_candidates=False,
        plan_pairs=_plan,
        assemble_matrix=_assemble,
        transpose=lambda M: M.T.copy(),
        candidates_per_row=lambda kernel, n_examples: n_examples,
        kernel_bytes=_kernel_bytes,
        assembly_peak_bytes=_assembly_peak_bytes,
        label=_label,
        check_fits=_check_fits,
    )
)
