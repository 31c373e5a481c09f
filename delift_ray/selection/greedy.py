"""Input checks and dispatch for the greedy selectors (see the package docstring)."""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp

from ..errors import BudgetError
from . import _kernels

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _shape_str(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def check_budget(budget, n: int) -> int:
    """Return ``budget`` as an int, or raise BudgetError unless 0 < budget < n."""
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, numbers.Integral):
        raise BudgetError(f"budget must be an integer number of samples, got {budget!r} ({type(budget).__name__})")
    b = int(budget)
    if b <= 0 or b >= n:
        raise BudgetError(f"budget {b} does not fit a pool of {n} samples: need 0 < budget < {n}")
    return b


def check_weight(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {v}")
    return v


class Kernel:
    """A validated pool kernel: dense C-contiguous array or a CSC copy of a sparse one."""

    __slots__ = ("n", "dtype", "dense", "csc")

    def __init__(self, K, name: str = "K"):
        self.dense = None
        self.csc = None
        if sp.issparse(K):
            shape = K.shape
            if len(shape) != 2 or shape[0] != shape[1]:
                raise ValueError(f"{name} must be a square n x n kernel, got shape {_shape_str(shape)}")
            # One copy of the sparse structure, column-major: column j lists the
            # samples that j helps, which is what the gain of j and the coverage
            # update after picking j need.
            csc = K.tocsc(copy=True) if K.format == "csc" else K.tocsc()
            if csc.dtype not in _FLOATS:
                csc.data = csc.data.astype(np.float64)
            if not csc.has_canonical_format:
                csc.sum_duplicates()
            if not _kernels.all_finite_1d(csc.data):
                raise ValueError(f"{name} contains NaN or infinite entries")
            self.csc = csc
            self.dtype = csc.dtype
        else:
            A = np.asarray(K)
            if A.ndim != 2 or A.shape[0] != A.shape[1]:
                raise ValueError(f"{name} must be a square n x n kernel, got shape {_shape_str(A.shape)}")
            if A.dtype not in _FLOATS:
                A = A.astype(np.float64)
            if not A.flags.c_contiguous:
                A = np.ascontiguousarray(A)
            # (finiteness is checked during the first pass over the kernel)
            self.dense = A
            self.dtype = A.dtype
        self.n = int((self.csc if self.csc is not None else self.dense).shape[0])


def row_max(M, n: int, name: str, kernel_name: str, allow_no_columns: bool) -> np.ndarray:
    """max_q M[i, q] per row (float64; -inf for zero columns), validating the shape."""
    shape = M.shape if sp.issparse(M) else np.shape(M)
    if len(shape) != 2 or shape[0] != n:
        raise ValueError(
            f"{name} must have shape {n} x m to match {kernel_name} ({n} x {n}), got shape {_shape_str(shape)}"
        )
    m = int(shape[1])
    if m == 0:
        if not allow_no_columns:
            raise ValueError(f"{name} has no columns (shape {_shape_str(shape)})")
        return np.full(n, -np.inf)
    if sp.issparse(M):
        csr = M.tocsr()
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()
        out = np.empty(n, dtype=np.float64)
        _kernels.sparse_row_max(csr.indptr, csr.data, n, out)
        # Rows with fewer stored entries than columns also hold implicit zeros; the
        # callers floor the maxima at 0, so that is already accounted for.
    else:
        A = np.asarray(M)
        if A.dtype == np.bool_ or not np.issubdtype(A.dtype, np.number):
            A = A.astype(np.float64)
        out = A.max(axis=1).astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or infinite entries")
    return out


def scaled_floor(rowmax: np.ndarray, weight: float, dtype) -> np.ndarray:
    """(weight * rowmax)+ formed in the kernel dtype, as submodlib does in float32."""
    q = np.where(np.isneginf(rowmax), 0.0, rowmax).astype(dtype)
    # Rounding to the kernel dtype is monotone, so it commutes with the row maximum.
    out = dtype.type(weight) * q
    return np.maximum(out, dtype.type(0)).astype(dtype, copy=False)


def run(kernel: Kernel, cap, cur0, budget: int, desc: bool, stop_if_zero: bool, stats=None, progress: bool = False):
    """Run the greedy engine; ``stats`` (optional dict) receives work counters.

    ``progress``: a bar over the picks, fed by a thread that reads the engine's pick
    counter while the (GIL-free) engine runs.
    """
    n = kernel.n
    dtype = kernel.dtype
    cap = np.full(n, np.inf, dtype=dtype) if cap is None else np.ascontiguousarray(cap, dtype)
    cur = np.zeros(n, dtype=dtype) if cur0 is None else np.array(cur0, dtype=dtype, copy=True)
    if kernel.dense is not None:
        counters = np.zeros(5, dtype=np.int64)
        idx, gains, ok = _with_progress(
            progress,
            budget,
            counters,
            4,
            _kernels.dense_greedy,
            kernel.dense,
            cap,
            cur,
            budget,
            bool(desc),
            bool(stop_if_zero),
            counters,
        )
        if stats is not None:
            names = ("scans", "exact_evals", "rows_walked", "row_updates")
            stats.update(zip(names, counters.tolist()))
        if not ok:
            raise ValueError("K contains NaN or infinite entries")
    else:
        c = kernel.csc
        counters = np.zeros(3, dtype=np.int64)
        idx, gains = _with_progress(
            progress,
            budget,
            counters,
            2,
            _kernels.sparse_greedy,
            c.indptr,
            c.indices,
            c.data,
            n,
            cap,
            cur,
            budget,
            bool(desc),
            bool(stop_if_zero),
            counters,
        )
        if stats is not None:
            stats.update(zip(("exact_evals", "entries_read"), counters.tolist()))
    return np.asarray(idx, dtype=np.int64), np.asarray(gains, dtype=np.float64)


def _with_progress(progress: bool, budget: int, counters: np.ndarray, slot: int, fn, *args):
    """``fn(*args)``, with a progress bar of ``counters[slot]`` picks out of ``budget``."""
    if not progress:
        return fn(*args)
    import threading

    from tqdm import tqdm

    done: dict = {}

    def target():
        try:
            done["result"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            done["error"] = exc

    worker = threading.Thread(target=target, name="greedy", daemon=True)
    with tqdm(total=budget, unit="pick", desc="select", dynamic_ncols=True) as bar:
        worker.start()
        while worker.is_alive():
            worker.join(0.25)
            if int(counters[slot]) > bar.n:  # no redraw while nothing moved (the first call compiles)
                bar.update(int(counters[slot]) - bar.n)
        bar.update(int(counters[slot]) - bar.n)
    if "error" in done:
        raise done["error"]
    return done["result"]
