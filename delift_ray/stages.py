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
from typing import Optional

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


def select(
    stage: str,
    kernels: dict[str, np.ndarray],
    budget: int,
    cfg: DeliftConfig,
    progress: bool = False,
    excluded: Optional[np.ndarray] = None,
    uncovered: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the stage's submodular maximisation; (indices into the pool, gains).

    ``excluded``: a mask of pool positions that may not be picked. Their columns of K are
    set to 0 in place, so they add nothing in any of the three objectives (a pool sample
    enters each only as a column of K) while still counting as samples to cover. Once
    every gain is 0 the greedy's tie rule would take them by index; those zero-gain picks
    go to the lowest-index samples not excluded instead.

    ``uncovered``: the excluded samples also stop counting as samples to cover: their rows
    of K are set to 0 too, so their term of each objective is 0 whatever is picked (FL's
    max over A, FLMI's min with it, FLCG's max(. - nu * P, 0)). The noise gate does this:
    a wrong answer left as something to cover rewards the samples that best "explain" wrong
    answers, which are the near-miss wrong answers the gate let through.
    """
    # Imported here: the selection code loads numba, after which a vLLM CPU engine can no
    # longer start in the same process ('_lib_fn_wrapper' object has no attribute 'get').
    from delift_ray import selection

    s = cfg.selection
    K = kernels["K"]
    if excluded is not None and excluded.any():
        allowed = int(excluded.size - excluded.sum())
        if budget > allowed:
            from delift_ray.errors import BudgetError

            raise BudgetError(
                f"budget {budget} exceeds the {allowed} pool samples that may be picked "
                f"({int(excluded.sum())} of {excluded.size} excluded by selection.min_prompt_gain)"
            )
        K = zero_columns(K, excluded)
        if uncovered:
            K = zero_rows(K, excluded)
    if stage == "instruction":
        idx, gains = selection.facility_location(K, budget, stop_if_zero_gain=s.stop_if_zero_gain, progress=progress)
    elif stage == "task":
        idx, gains = selection.fl_mutual_information(
            K, kernels["Q"], budget, eta=s.eta, stop_if_zero_gain=s.stop_if_zero_gain, progress=progress
        )
    elif stage == "continual":
        idx, gains = selection.fl_conditional_gain(
            K, kernels["P"], budget, nu=s.nu, stop_if_zero_gain=s.stop_if_zero_gain, progress=progress
        )
    else:
        raise ValueError(f"unknown stage {stage!r}")
    if excluded is not None and excluded[idx].any():
        idx, gains = _refill_zero_gain_picks(np.asarray(idx), np.asarray(gains), excluded)
    return idx, gains


def zero_columns(K, excluded: np.ndarray):
    """K with the columns of ``excluded`` set to 0, in place (a dense array or scipy CSR)."""
    if isinstance(K, np.ndarray):
        K[:, excluded] = 0
        return K
    K = K.tocsr()
    K.data[excluded[K.indices]] = 0
    K.eliminate_zeros()
    return K


def zero_rows(K, excluded: np.ndarray):
    """K with the rows of ``excluded`` set to 0, in place (a dense array or scipy CSR)."""
    if isinstance(K, np.ndarray):
        K[excluded, :] = 0
        return K
    K = K.tocsr()
    K.data[np.repeat(excluded, np.diff(K.indptr))] = 0
    K.eliminate_zeros()
    return K


def _refill_zero_gain_picks(idx: np.ndarray, gains: np.ndarray, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Picks up to the first excluded one, then the lowest-index unpicked samples not excluded.

    An excluded sample adds exactly 0, so the greedy takes one only when every gain left
    is 0; each later pick also gains 0, so the objective is unchanged.
    """
    first = int(np.flatnonzero(excluded[idx])[0])
    kept = idx[:first]
    free = np.flatnonzero(~excluded)
    fill = free[~np.isin(free, kept)][: idx.size - first]
    return np.concatenate([kept, fill]).astype(np.int64), np.concatenate([gains[:first], np.zeros(fill.size)])


def budget_count(budget: int | float, n: int) -> int:
    """A fraction in (0, 1) or a count -> a count k with 0 < k < n, else BudgetError."""
    from delift_ray.errors import BudgetError

    k = int(round(budget * n)) if isinstance(budget, float) else int(budget)
    if isinstance(budget, float):
        k = max(k, 1)
    if not 0 < k < n:
        raise BudgetError(
            f"budget {budget} gives {k} samples, but it must lie in [1, {n - 1}] for a pool of {n} valid samples"
        )
    return k
