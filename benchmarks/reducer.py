"""Benchmark of the selection reducer (delift_ray.selection) against submodlib.

Prints one JSON line per case on stdout (progress goes to stderr) and writes it to
``benchmarks/results/reducer_<case>.json``:

    case, n, k | density, budget, seconds, cpu_seconds, peak_rss_gb, input_rss_gb,
    and for compared cases submodlib_seconds, submodlib_cpu_seconds,
    submodlib_peak_rss_gb, speedup, cpu_speedup, identical, identical_prefix (picks
    equal up to there), same_set, and when they differ first_divergence with both
    picks' exact marginal gains (``tie`` = equal gains: submodlib does not break ties
    by lowest index, so exact float32 gain ties are the only expected divergence).

Every measured run happens in its own fresh process (multiprocessing "spawn"); the
child generates its input from a fixed seed, warms up the numba kernels on a tiny
input, times one call, and reports its own peak RSS (``ru_maxrss``), which includes
the input it generated. ``input_rss_gb`` is the RSS just before the timed call.

Cases (sizes can be overridden with --n / --k / --budget-frac):

* ``dense_fl``: dense float32 FL, n=20,000, budget 30%, vs submodlib's
  FacilityLocationFunction(mode="dense") with LazyGreedy, run in a separate child
  on the same kernel. The kernel is an asymmetric Gaussian similarity of random 8-d
  points with a per-row bandwidth (K[i, j] = exp(-|x_i - x_j|^2 / (2 s_i^2))).
* ``sparse_fl``: CSR FL, n=1,000,000, k=64 random columns per row, uniform values.
* ``sparse_flmi`` / ``sparse_flcg``: n=200,000, k=64; Q / P are n x 2,000 CSR with
  16 entries per row, values uniform in [0, 0.6).

Examples::

    python -m benchmarks.reducer                       # everything, full size
    python -m benchmarks.reducer --cases dense_fl --n 3000
    python -m benchmarks.reducer --cases sparse_fl,sparse_flcg --n 50000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

from benchmarks.results import write_result

# One BLAS thread: kernel generation is then bit-reproducible across the children
# (ours / submodlib) and the benchmark does not fight the selection for the 2 cores.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

LAZY = dict(optimizer="LazyGreedy", stopIfZeroGain=False, stopIfNegativeGain=False, verbose=False, show_progress=False)

DEFAULTS = {
    "dense_fl": dict(n=20_000),
    "sparse_fl": dict(n=1_000_000, k=64),
    "sparse_flmi": dict(n=200_000, k=64, m=2_000, mk=16),
    "sparse_flcg": dict(n=200_000, k=64, m=2_000, mk=16),
}


# --------------------------------------------------------------------------- inputs


def dense_kernel(n: int, seed: int, d: int = 8):
    """Asymmetric RBF kernel (float32, C order), built in row chunks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    sq = (X * X).sum(axis=1)
    inv = (1.0 / (2.0 * (rng.uniform(0.5, 1.5, n) * np.sqrt(d)) ** 2)).astype(np.float32)
    K = np.empty((n, n), dtype=np.float32)
    for a in range(0, n, 1024):
        b = min(n, a + 1024)
        D = X[a:b] @ X.T
        D *= -2.0
        D += sq[a:b, None]
        D += sq[None, :]
        np.maximum(D, 0.0, out=D)
        D *= -inv[a:b, None]
        np.exp(D, out=K[a:b])
    return K


def sparse_rows(n: int, ncols: int, k: int, rng, scale: float = 1.0):
    """CSR n x ncols with k random columns per row (duplicates summed), uniform values."""
    import numpy as np
    import scipy.sparse as sp

    cols = rng.integers(0, ncols, size=(n, k), dtype=np.int32)
    cols.sort(axis=1)
    data = rng.random(n * k, dtype=np.float32)
    if scale != 1.0:
        data *= np.float32(scale)
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    if n * k < 2**31:
        indptr = indptr.astype(np.int32)
    S = sp.csr_matrix((data, cols.reshape(-1), indptr), shape=(n, ncols))
    del cols
    S.sum_duplicates()
    return S


def make_input(case: str, p: dict, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    if case == "dense_fl":
        return dense_kernel(p["n"], seed), None
    K = sparse_rows(p["n"], p["n"], p["k"], rng)
    if case == "sparse_fl":
        return K, None
    M = sparse_rows(p["n"], p["m"], p["mk"], rng, scale=0.6)
    return K, M


def checksum(K) -> str:
    import hashlib

    import numpy as np

    h = hashlib.sha1()
    h.update(np.ascontiguousarray(K[:: max(1, K.shape[0] // 97), :]).tobytes())
    h.update(np.float64(K.sum(dtype=np.float64)).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- children


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9


def _peak_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_ours(case: str, p: dict, seed: int) -> dict:
    import numpy as np
    import scipy.sparse as sp

    from delift_ray import selection

    t = time.perf_counter()
    K, M = make_input(case, p, seed)
    gen = time.perf_counter() - t
    budget = p["budget"]

    def call(K_, M_, b_):
        if case in ("dense_fl", "sparse_fl"):
            return selection.facility_location(K_, b_)
        if case == "sparse_flmi":
            return selection.fl_mutual_information(K_, M_, b_, eta=1.0)
        return selection.fl_conditional_gain(K_, M_, b_, nu=1.0)

    # warm-up (numba cache load / compile) on a tiny input of the same kind
    small = np.random.default_rng(1).random((64, 64), dtype=np.float32)
    if sp.issparse(K):
        small = sp.csr_matrix(small)
    call(small, None if M is None else sp.csr_matrix(np.ones((64, 3), np.float32)), 8)

    rss_in = _rss_gb()
    c0 = _cpu()
    t = time.perf_counter()
    idx, gains = call(K, M, budget)
    secs = time.perf_counter() - t
    cpu = _cpu() - c0
    out = dict(
        seconds=round(secs, 3),
        cpu_seconds=round(cpu, 3),
        peak_rss_gb=round(_peak_gb(), 3),
        input_rss_gb=round(rss_in, 3),
        generate_seconds=round(gen, 2),
        selected=int(len(idx)),
        objective=float(gains.sum()),
    )
    if case == "dense_fl":
        out["indices"] = idx.tolist()
        out["kernel_checksum"] = checksum(K)
    return out


def child_submodlib(case: str, p: dict, seed: int, ours_idx: list) -> dict:
    import numpy as np
    from submodlib import FacilityLocationFunction

    K, _ = make_input(case, p, seed)
    n, budget = p["n"], p["budget"]
    rss_in = _rss_gb()
    c0 = _cpu()
    t = time.perf_counter()
    obj = FacilityLocationFunction(n=n, mode="dense", sijs=K, separate_rep=False)
    res = obj.maximize(budget=budget, **LAZY)
    secs = time.perf_counter() - t
    cpu = _cpu() - c0
    sub_idx = np.array([i for i, _ in res], dtype=np.int64)
    sub_gains = np.array([g for _, g in res], dtype=np.float64)
    peak = _peak_gb()
    ours = np.asarray(ours_idx, dtype=np.int64)
    out = dict(
        submodlib_seconds=round(secs, 3),
        submodlib_cpu_seconds=round(cpu, 3),
        submodlib_peak_rss_gb=round(peak, 3),
        submodlib_input_rss_gb=round(rss_in, 3),
        submodlib_objective=float(sub_gains.sum()),
        identical=bool(np.array_equal(ours, sub_idx)),
        kernel_checksum=checksum(K),
    )
    m = min(len(ours), len(sub_idx))
    neq = np.nonzero(ours[:m] != sub_idx[:m])[0]
    out["identical_prefix"] = int(neq[0]) if neq.size else m
    out["same_set"] = bool(set(ours.tolist()) == set(sub_idx.tolist()))
    if not out["identical"]:
        k = out["identical_prefix"]
        info = dict(step=k)
        if neq.size:
            cover = np.zeros(n, dtype=np.float32)
            for j in ours[:k]:
                np.maximum(cover, K[:, j], out=cover)

            def gain(j):
                t_ = K[:, j] - cover
                return float(t_[t_ > 0].astype(np.float64).sum())

            a, b = int(ours[k]), int(sub_idx[k])
            info.update(ours=a, submodlib=b, gain_ours=gain(a), gain_submodlib=gain(b))
            info["tie"] = info["gain_ours"] == info["gain_submodlib"]
        out["first_divergence"] = info
    return out


def run_child(fn, *args):
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes=1, maxtasksperchild=1) as pool:
        return pool.apply(fn, args)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(DEFAULTS), help="comma list of " + ", ".join(DEFAULTS))
    ap.add_argument("--n", type=int, help="pool size for every selected case")
    ap.add_argument("--k", type=int, help="nonzeros per row of the sparse kernels")
    ap.add_argument("--budget-frac", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-submodlib", action="store_true", help="skip the submodlib comparison")
    args = ap.parse_args(argv)

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in DEFAULTS]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {list(DEFAULTS)}")

    for case in cases:
        p = dict(DEFAULTS[case])
        if args.n:
            p["n"] = args.n
        if args.k and "k" in p:
            p["k"] = args.k
        p["budget"] = max(1, min(p["n"] - 1, int(args.budget_frac * p["n"])))
        row = dict(case=case, n=p["n"])
        if "k" in p:
            row["k"] = p["k"]
        else:
            row["density"] = 1.0
        row["budget"] = p["budget"]
        if "m" in p:
            row["m"] = p["m"]
        print(f"[reducer] {case}: n={p['n']} budget={p['budget']} ...", file=sys.stderr, flush=True)
        load0 = os.getloadavg()[0]
        res = run_child(child_ours, case, p, args.seed)
        ours_idx = res.pop("indices", None)
        ours_sum = res.pop("kernel_checksum", None)
        row.update(res)
        if case == "dense_fl" and not args.no_submodlib:
            print(f"[reducer] {case}: submodlib ...", file=sys.stderr, flush=True)
            sub = run_child(child_submodlib, case, p, args.seed, ours_idx)
            if sub.pop("kernel_checksum") != ours_sum:
                sub["identical"] = None
                sub["note"] = "kernels differ between the two children; comparison void"
            row.update(sub)
            row["speedup"] = round(sub["submodlib_seconds"] / max(res["seconds"], 1e-9), 2)
            row["cpu_speedup"] = round(sub["submodlib_cpu_seconds"] / max(res["cpu_seconds"], 1e-9), 2)
        row["loadavg_1min"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
        print(json.dumps(row), flush=True)
        write_result(f"reducer_{case}", row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
