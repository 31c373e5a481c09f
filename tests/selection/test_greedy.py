"""Tests for delift_ray.selection: agreement with submodlib, a brute-force objective
check, the lowest-index tie rule, and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from numba import njit

from delift_ray.errors import BudgetError
from delift_ray.selection import facility_location, fl_conditional_gain, fl_mutual_information
from delift_ray.selection import greedy as _greedy

LAZY = dict(optimizer="LazyGreedy", stopIfZeroGain=False, stopIfNegativeGain=False, verbose=False, show_progress=False)


# --------------------------------------------------------------------------- helpers


def _split(result):
    """submodlib's [(index, gain), ...] -> (int64 indices, float64 gains)."""
    idx = np.array([i for i, _ in result], dtype=np.int64)
    gains = np.array([g for _, g in result], dtype=np.float64)
    return idx, gains


def _cover(K, A):
    """max(max_{j in A} K[i, j], 0) per row i, in float64."""
    K = K.toarray() if sp.issparse(K) else np.asarray(K)
    if len(A) == 0:
        return np.zeros(K.shape[0])
    return np.maximum(K[:, list(A)].astype(np.float64).max(axis=1), 0.0)


def f_fl(K, A):
    return _cover(K, A).sum()


def f_flmi(K, Q, eta, A):
    qcap = np.maximum(eta * np.asarray(Q, dtype=np.float64).max(axis=1), 0.0)
    return np.minimum(_cover(K, A), qcap).sum()


def f_flcg(K, P, nu, A):
    pmax = np.maximum(nu * np.asarray(P, dtype=np.float64).max(axis=1), 0.0)
    return np.maximum(_cover(K, A) - pmax, 0.0).sum()


@njit(cache=True)
def _naive_greedy(K, cap, cur0, budget, desc):
    """Plain (non-lazy) greedy, written independently of the package: every step
    recomputes every gain as a float64 sum of kernel-dtype terms in the given row
    order; strict '>' keeps the lowest index among equal gains."""
    n = K.shape[0]
    cur = cur0.copy()
    sel = np.zeros(n, dtype=np.bool_)
    out = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget, dtype=np.float64)
    for s in range(budget):
        best = -1.0
        bj = -1
        for j in range(n):
            if sel[j]:
                continue
            g = 0.0
            for ii in range(n):
                i = n - 1 - ii if desc else ii
                t = min(K[i, j], cap[i]) - cur[i]
                if t > 0:
                    g += t
            if g > best:
                best = g
                bj = j
        sel[bj] = True
        out[s] = bj
        gains[s] = best
        for i in range(n):
            k = min(K[i, bj], cap[i])
            if k > cur[i]:
                cur[i] = k
    return out, gains


def naive(kind, K, budget, M=None, w=1.0):
    """Reference selection for FL / FLMI / FLCG on a dense float kernel."""
    K = np.ascontiguousarray(K)
    n = K.shape[0]
    dt = K.dtype.type
    inf = np.full(n, np.inf, dtype=K.dtype)
    zero = np.zeros(n, dtype=K.dtype)
    if kind == "fl":
        return _naive_greedy(K, inf, zero, budget, True)
    rowmax = np.asarray(M).max(axis=1).astype(K.dtype)
    scaled = np.maximum(dt(w) * rowmax, dt(0)).astype(K.dtype)
    if kind == "flmi":
        return _naive_greedy(K, scaled, zero, budget, False)
    return _naive_greedy(K, inf, scaled, budget, True)


def ours(kind, K, budget, M=None, w=1.0, **kw):
    if kind == "fl":
        return facility_location(K, budget, **kw)
    if kind == "flmi":
        return fl_mutual_information(K, M, budget, eta=w, **kw)
    return fl_conditional_gain(K, M, budget, nu=w, **kw)


def objective(kind, K, A, M=None, w=1.0):
    if kind == "fl":
        return f_fl(K, A)
    if kind == "flmi":
        return f_flmi(K, M, w, A)
    return f_flcg(K, M, w, A)


# --------------------------------------------------------------------------- submodlib


@pytest.fixture(scope="module")
def sm():
    return pytest.importorskip("submodlib")


def sub_fl(sm, K, budget):
    n = K.shape[0]
    if sp.issparse(K):
        obj = sm.FacilityLocationFunction(n=n, mode="sparse", sijs=sp.csr_matrix(K), num_neighbors=n)
    else:
        obj = sm.FacilityLocationFunction(n=n, mode="dense", sijs=K, separate_rep=False)
    return _split(obj.maximize(budget=budget, **LAZY))


def sub_flmi(sm, K, Q, budget, eta):
    obj = sm.FacilityLocationMutualInformationFunction(
        n=K.shape[0], num_queries=Q.shape[1], data_sijs=K, query_sijs=Q, magnificationEta=eta
    )
    return _split(obj.maximize(budget=budget, **LAZY))


def sub_flcg(sm, K, P, budget, nu):
    obj = sm.FacilityLocationConditionalGainFunction(
        n=K.shape[0], num_privates=P.shape[1], data_sijs=K, private_sijs=P, privacyHardness=nu
    )
    return _split(obj.maximize(budget=budget, **LAZY))


def test_submodlib_index_convention(sm):
    """submodlib's sijs / query_sijs / private_sijs are row = represented sample,
    column = candidate, exactly like our K / Q / P; the transposed reading is wrong."""
    rng = np.random.default_rng(7)
    n = 9
    K = rng.random((n, n), dtype=np.float32)
    K[:, 3] = 0.0  # candidate 3 helps nobody...
    K[3, :] = 1.0  # ...but everybody helps sample 3
    fl = sm.FacilityLocationFunction(n=n, mode="dense", sijs=K, separate_rep=False)
    for j in range(n):
        assert fl.evaluate({j}) == pytest.approx(f_fl(K, [j]), rel=1e-6)
    assert fl.evaluate({3}) == pytest.approx(1.0)  # only row 3 gains (K[3, 3] = 1)
    assert f_fl(K.T, [3]) == pytest.approx(n)  # the transposed reading would say n

    S = sp.csr_matrix(np.where(rng.random((n, n)) < 0.5, K, 0).astype(np.float32))
    S = sp.csr_matrix(S + S.T.multiply(0.5))  # symmetric pattern, asymmetric values
    fls = sm.FacilityLocationFunction(n=n, mode="sparse", sijs=S, num_neighbors=n)
    for j in range(n):
        assert fls.evaluate({j}) == pytest.approx(f_fl(S, [j]), rel=1e-6)

    Q = rng.random((n, 2), dtype=np.float32)
    mi = sm.FacilityLocationMutualInformationFunction(
        n=n, num_queries=2, data_sijs=K, query_sijs=Q, magnificationEta=1.0
    )
    P = rng.random((n, 3), dtype=np.float32) * 0.5
    cg = sm.FacilityLocationConditionalGainFunction(
        n=n, num_privates=3, data_sijs=K, private_sijs=P, privacyHardness=1.0
    )
    for A in ([0], [1, 5], [2, 4, 8]):
        assert mi.evaluate(set(A)) == pytest.approx(f_flmi(K, Q, 1.0, A), rel=1e-6)
        assert cg.evaluate(set(A)) == pytest.approx(f_flcg(K, P, 1.0, A), rel=1e-6)


@pytest.mark.parametrize("seed,n", [(0, 60), (1, 157), (2, 300), (3, 411)])
def test_fl_dense_matches_submodlib(sm, seed, n):
    rng = np.random.default_rng(seed)
    K = rng.random((n, n), dtype=np.float32)  # asymmetric
    b = n // 3
    idx, gains = facility_location(K, b)
    s_idx, s_gains = sub_fl(sm, K, b)
    np.testing.assert_array_equal(idx, s_idx)
    np.testing.assert_array_equal(gains, s_gains)  # bit-identical arithmetic
    assert idx.dtype == np.int64 and gains.dtype == np.float64


@pytest.mark.parametrize("seed,n,eta", [(0, 80, 1.0), (1, 200, 0.7), (2, 350, 2.5)])
def test_flmi_dense_matches_submodlib(sm, seed, n, eta):
    rng = np.random.default_rng(100 + seed)
    K = rng.random((n, n), dtype=np.float32)
    # caps spread over [0, 1.6 * eta]: some rows saturate early, others never
    Q = (rng.random((n, 5), dtype=np.float32) * 1.6).astype(np.float32)
    b = n // 6  # stay clear of full saturation, where tiny gains tie exactly
    idx, gains = fl_mutual_information(K, Q, b, eta=eta)
    s_idx, s_gains = sub_flmi(sm, K, Q, b, eta)
    np.testing.assert_array_equal(idx, s_idx)
    np.testing.assert_array_equal(gains, s_gains)


@pytest.mark.parametrize("seed,n,nu", [(0, 90, 1.0), (1, 210, 0.5), (2, 330, 1.3)])
def test_flcg_dense_matches_submodlib(sm, seed, n, nu):
    rng = np.random.default_rng(200 + seed)
    K = rng.random((n, n), dtype=np.float32)
    P = rng.random((n, 4), dtype=np.float32) * 0.8
    b = n // 3
    idx, gains = fl_conditional_gain(K, P, b, nu=nu)
    s_idx, s_gains = sub_flcg(sm, K, P, b, nu)
    np.testing.assert_array_equal(idx, s_idx)
    np.testing.assert_array_equal(gains, s_gains)


@pytest.mark.parametrize("seed,n,density", [(0, 120, 0.05), (1, 300, 0.02), (2, 400, 0.1)])
def test_fl_sparse_matches_submodlib(sm, seed, n, density):
    rng = np.random.default_rng(300 + seed)
    mask = rng.random((n, n)) < density
    mask |= mask.T  # submodlib's sparse mode needs a symmetric pattern (see docs)
    K = np.where(mask, rng.random((n, n), dtype=np.float32), 0).astype(np.float32)
    S = sp.csr_matrix(K)
    b = n // 3
    idx, gains = facility_location(S, b)
    s_idx, s_gains = sub_fl(sm, S, b)
    np.testing.assert_array_equal(idx, s_idx)
    np.testing.assert_array_equal(gains, s_gains)


@pytest.mark.parametrize("kind", ["fl", "flmi", "flcg"])
def test_integer_kernel_ties_differ_from_submodlib_only_at_ties(sm, kind):
    """Integer kernels have exact gain ties. We follow plain greedy with the lowest
    index; submodlib does not, so wherever its selection first departs from ours both
    picks must have the same marginal gain (and ours the lower index)."""
    rng = np.random.default_rng(11)
    n = 120
    K = rng.integers(0, 4, size=(n, n)).astype(np.float32)
    M = rng.integers(1, 4, size=(n, 3)).astype(np.float32)
    if kind == "flcg":
        M = M * np.float32(0.5)
    b = 30
    idx, gains = ours(kind, K, b, M)
    ref_idx, ref_gains = naive(kind, K, b, M)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(gains, ref_gains)
    if kind == "fl":
        s_idx, _ = sub_fl(sm, K, b)
    elif kind == "flmi":
        s_idx, _ = sub_flmi(sm, K, M, b, 1.0)
    else:
        s_idx, _ = sub_flcg(sm, K, M, b, 1.0)
    diff = np.nonzero(idx != s_idx)[0]
    if diff.size:
        k = int(diff[0])
        A = idx[:k].tolist()
        base = objective(kind, K, A, M)
        g_ours = objective(kind, K, A + [int(idx[k])], M) - base
        g_sub = objective(kind, K, A + [int(s_idx[k])], M) - base
        assert g_ours == g_sub  # integer kernel: exact arithmetic
        assert idx[k] < s_idx[k]


# --------------------------------------------------------------------------- reference


@pytest.mark.parametrize("kind", ["fl", "flmi", "flcg"])
@pytest.mark.parametrize("quantized", [False, True], ids=["uniform", "integer"])
def test_matches_plain_greedy_at_scale(kind, quantized):
    """The lazy engine (incremental bounds, shortlist, rounding band) must reproduce
    plain greedy pick for pick and gain for gain: on uniform float32 kernels (no
    ties) and on integer kernels, where most steps have tied best gains and the
    lowest index must win."""
    rng = np.random.default_rng(400 + quantized)
    n = 800
    if quantized:
        K = rng.integers(0, 64, size=(n, n)).astype(np.float32)
        M = rng.integers(0, 64 if kind == "flmi" else 40, size=(n, 3)).astype(np.float32)
    else:
        K = rng.random((n, n), dtype=np.float32)
        M = (rng.random((n, 3), dtype=np.float32) * (1.6 if kind == "flmi" else 0.6)).astype(np.float32)
    b = 130 if kind == "flmi" else 240
    idx, gains = ours(kind, K, b, M, 0.9)
    ref_idx, ref_gains = naive(kind, K, b, M, 0.9)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(gains, ref_gains)
    if kind != "flmi":  # the sparse engine too
        s_idx, s_gains = ours(kind, sp.csr_matrix(K), b, M, 0.9)
        np.testing.assert_array_equal(s_idx, ref_idx)
        np.testing.assert_array_equal(s_gains, ref_gains)


@pytest.mark.parametrize("kind", ["fl", "flmi", "flcg"])
def test_sparse_equals_dense(kind):
    rng = np.random.default_rng(5)
    n = 700
    mask = rng.random((n, n)) < 0.03  # asymmetric pattern is fine for us
    K = np.where(mask, rng.random((n, n), dtype=np.float32), 0).astype(np.float32)
    M = rng.random((n, 4), dtype=np.float32)
    M[rng.random((n, 4)) < 0.5] = 0
    b = 200
    d_idx, d_gains = ours(kind, K, b, M, 0.8)
    for S, MS in ((sp.csr_matrix(K), M), (sp.csr_matrix(K), sp.csr_matrix(M)), (sp.coo_matrix(K), M)):
        s_idx, s_gains = ours(kind, S, b, MS, 0.8)
        np.testing.assert_array_equal(s_idx, d_idx)
        np.testing.assert_array_equal(s_gains, d_gains)


def test_sparse_unsorted_and_duplicate_entries():
    rng = np.random.default_rng(6)
    n = 50
    rows = np.sort(rng.integers(0, n, 400))
    cols = rng.integers(0, n, 400)  # unsorted within rows, with duplicates
    vals = rng.random(400).astype(np.float32)
    indptr = np.searchsorted(rows, np.arange(n + 1))
    raw = sp.csr_matrix((vals, cols, indptr), shape=(n, n))
    assert not raw.has_canonical_format
    canon = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))  # duplicates summed
    a = facility_location(canon, 20)
    b = facility_location(raw, 20)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(b[0], facility_location(canon.toarray(), 20)[0])
    assert not raw.has_canonical_format  # the caller's matrix is left alone


# --------------------------------------------------------------------------- objective


@pytest.mark.parametrize("kind", ["fl", "flmi", "flcg"])
@pytest.mark.parametrize("integer", [False, True])
def test_brute_force_objective(kind, integer):
    rng = np.random.default_rng(8 if integer else 9)
    n = 9
    if integer:
        K = rng.integers(-1, 4, size=(n, n)).astype(np.float64)
        M = rng.integers(0, 3, size=(n, 2)).astype(np.float64)
    else:
        K = rng.random((n, n)) - 0.1
        M = rng.random((n, 2))
    w = 0.8
    idx, gains = ours(kind, K, n - 1, M, w)
    assert len(set(idx.tolist())) == n - 1
    A: list[int] = []
    for j, g in zip(idx.tolist(), gains.tolist()):
        base = objective(kind, K, A, M, w)
        cand = {c: objective(kind, K, A + [c], M, w) - base for c in range(n) if c not in A}
        assert g == pytest.approx(cand[j], abs=1e-12)
        best = max(cand.values())
        assert cand[j] == pytest.approx(best, abs=1e-12)  # greedy choice
        if integer:  # exact arithmetic: lowest index among the tied best
            assert j == min(c for c, v in cand.items() if v == best)
        A.append(j)
    assert gains.sum() == pytest.approx(objective(kind, K, A, M, w), abs=1e-9)
    assert np.all(gains >= 0)


def test_tie_rule_lowest_index():
    n = 6
    K = np.ones((n, n), dtype=np.float32)
    idx, gains = facility_location(K, 4)
    np.testing.assert_array_equal(idx, [0, 1, 2, 3])
    np.testing.assert_array_equal(gains, [6.0, 0.0, 0.0, 0.0])
    # two identical columns: the lower index goes first
    rng = np.random.default_rng(3)
    K = rng.random((8, 8)).astype(np.float32)
    K[:, 5] = K[:, 2] = K.max() + 1.0
    idx, _ = facility_location(K, 2)
    assert idx[0] == 2
    idx, _ = facility_location(sp.csr_matrix(K), 2)
    assert idx[0] == 2


def test_stop_if_zero_gain():
    rng = np.random.default_rng(4)
    n = 40
    K = rng.random((n, n), dtype=np.float32)
    Q = np.full((n, 1), 0.05, dtype=np.float32)  # saturates after a few picks
    idx, gains = fl_mutual_information(K, Q, n - 1)
    assert len(idx) == n - 1 and gains[-1] == 0.0
    s_idx, s_gains = fl_mutual_information(K, Q, n - 1, stop_if_zero_gain=True)
    assert 0 < len(s_idx) < n - 1 and np.all(s_gains > 0)
    np.testing.assert_array_equal(s_idx, idx[: len(s_idx)])
    s_idx2, _ = fl_mutual_information(sp.csr_matrix(K), Q, n - 1, stop_if_zero_gain=True)
    np.testing.assert_array_equal(s_idx2, s_idx)
    f_idx, f_gains = facility_location(np.eye(n, dtype=np.float32), n - 1, stop_if_zero_gain=True)
    assert len(f_idx) == n - 1 and np.all(f_gains == 1.0)


def test_dtypes_and_layouts():
    rng = np.random.default_rng(12)
    n = 64
    K32 = rng.random((n, n), dtype=np.float32)
    ref = facility_location(K32, 20)
    assert _greedy.Kernel(K32).dense is K32  # used in place, no copy
    K64 = K32.astype(np.float64)
    assert _greedy.Kernel(K64).dense is K64
    np.testing.assert_array_equal(facility_location(np.asfortranarray(K32), 20)[0], ref[0])
    np.testing.assert_array_equal(facility_location(K64, 20)[0], ref[0])
    Ki = rng.integers(0, 5, size=(n, n))
    np.testing.assert_array_equal(facility_location(Ki, 20)[0], facility_location(Ki.astype(np.float64), 20)[0])
    np.testing.assert_array_equal(facility_location(K32.tolist(), 20)[0], facility_location(K64, 20)[0])


def test_fl_conditional_gain_without_existing_set_is_fl():
    rng = np.random.default_rng(13)
    K = rng.random((50, 50), dtype=np.float32)
    a = facility_location(K, 15)
    b = fl_conditional_gain(K, np.zeros((50, 0), dtype=np.float32), 15)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("budget", [0, -3, 10, 11, 1000])
@pytest.mark.parametrize("sparse", [False, True])
def test_budget_errors(budget, sparse):
    K = np.ones((10, 10), dtype=np.float32)
    K = sp.csr_matrix(K) if sparse else K
    for call in (
        lambda: facility_location(K, budget),
        lambda: fl_mutual_information(K, np.ones((10, 2)), budget),
        lambda: fl_conditional_gain(K, np.ones((10, 2)), budget),
    ):
        with pytest.raises(BudgetError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and str(budget) in msg and "10" in msg


@pytest.mark.parametrize("budget", [2.0, 2.5, "3", None, True])
def test_budget_must_be_integer(budget):
    with pytest.raises(BudgetError, match="integer"):
        facility_location(np.ones((5, 5)), budget)


def test_budget_numpy_integer_ok():
    idx, _ = facility_location(np.eye(5), np.int64(2))
    assert len(idx) == 2


def test_single_sample_pool_has_no_valid_budget():
    with pytest.raises(BudgetError):
        facility_location(np.ones((1, 1)), 1)


@pytest.mark.parametrize(
    "K",
    [np.ones((4, 5)), np.ones(4), np.ones((2, 2, 2)), sp.csr_matrix(np.ones((3, 4)))],
    ids=["4x5", "1d", "3d", "sparse-3x4"],
)
def test_kernel_shape_errors(K):
    with pytest.raises(ValueError, match="square") as e:
        facility_location(K, 1)
    assert "x".join(str(d) for d in np.shape(K)) in str(e.value)


def test_query_and_private_shape_errors():
    K = np.ones((6, 6), dtype=np.float32)
    with pytest.raises(ValueError, match=r"Q must have shape 6 x m .*got shape 5x2"):
        fl_mutual_information(K, np.ones((5, 2)), 2)
    with pytest.raises(ValueError, match=r"Q must have shape 6 x m .*got shape 6"):
        fl_mutual_information(K, np.ones(6), 2)
    with pytest.raises(ValueError, match="no columns"):
        fl_mutual_information(K, np.ones((6, 0)), 2)
    with pytest.raises(ValueError, match=r"P must have shape 6 x m .*got shape 7x3"):
        fl_conditional_gain(K, sp.csr_matrix(np.ones((7, 3))), 2)


def test_value_errors():
    K = np.ones((6, 6), dtype=np.float32)
    bad = K.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        facility_location(bad, 2)
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        facility_location(bad, 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        facility_location(sp.csr_matrix(bad), 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        fl_mutual_information(K, np.full((6, 2), np.nan), 2)
    with pytest.raises(ValueError, match="eta"):
        fl_mutual_information(K, np.ones((6, 2)), 2, eta=-1.0)
    with pytest.raises(ValueError, match="nu"):
        fl_conditional_gain(K, np.ones((6, 2)), 2, nu=float("nan"))
