"""The three DELIFT stages: which utility matrices each needs and which function selects.

K[i][j] always means "how much j helps i".

* ``instruction``: K = UF(i <- j) over the pool; facility location.
* ``task``: K over the pool and Q[i][q] = UF(q <- i) (pool sample i as the example for
  target q); FL mutual information with eta.
* ``continual``: K over the pool and P[i][e] = UF(i <- e) (existing e as the example for
  pool sample i); FL conditional gain with nu.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from delift_ray.config import DeliftConfig


@dataclass(frozen=True)
class MatrixSpec:
    """A utility matrix: entries UF(helped <- example); ``transpose`` stores it example-major."""

    name: str
    helped: str  # set whose samples are helped (scored)
    example: str  # set whose samples are the in-context examples
    transpose: bool = False  # kernel rows are examples (Q: rows = pool examples, cols = targets)


STAGE_MATRICES: dict[str, tuple[MatrixSpec, ...]] = {
    "instruction": (MatrixSpec("K", "pool", "pool"),),
    "task": (MatrixSpec("K", "pool", "pool"), MatrixSpec("Q", "target", "pool", transpose=True)),
    "continual": (MatrixSpec("K", "pool", "pool"), MatrixSpec("P", "pool", "existing")),
}


def select(stage: str, kernels: dict[str, np.ndarray], budget: int, cfg: DeliftConfig,
           progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Run the stage's submodular maximisation; (indices into the pool, gains)."""
    # Imported here: the selection code loads numba, after which a vLLM CPU engine can no
    # longer start in the same process ('_lib_fn_wrapper' object has no attribute 'get').
    from delift_ray import selection

    s = cfg.selection
    K = kernels["K"]
    if stage == "instruction":
        return selection.facility_location(K, budget, stop_if_zero_gain=s.stop_if_zero_gain, progress=progress)
    if stage == "task":
        return selection.fl_mutual_information(K, kernels["Q"], budget, eta=s.eta, stop_if_zero_gain=s.stop_if_zero_gain, progress=progress)
    if stage == "continual":
        return selection.fl_conditional_gain(K, kernels["P"], budget, nu=s.nu, stop_if_zero_gain=s.stop_if_zero_gain, progress=progress)
    raise ValueError(f"unknown stage {stage!r}")


def budget_count(budget: int | float, n: int) -> int:
    """A fraction in (0, 1) or a count -> a count k with 0 < k < n, else BudgetError."""
    from delift_ray.errors import BudgetError

    k = int(round(budget * n)) if isinstance(budget, float) else int(budget)
    if isinstance(budget, float):
        k = max(k, 1)
    if not 0 < k < n:
        raise BudgetError(f"budget {budget} gives {k} samples, but it must lie in [1, {n - 1}] for a pool of {n} valid samples")
    return k
