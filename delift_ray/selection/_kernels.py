"""Numba kernels behind :mod:`delift_ray.selection` (internal).

All three objectives (FL, FLMI, FLCG) are run by one engine: facility location over a
per-row *capped* kernel ``K'[i, j] = min(K[i, j], cap[i])`` starting from a per-row
*initial coverage* ``cur0[i]``:

    f(A) = sum_i max(max_{j in A} K'[i, j] - cur0[i], 0)      (maxima floored at cur0)

FL is ``cap = +inf, cur0 = 0``; FLMI is ``cap = (eta * max_q Q[i, q])+, cur0 = 0``;
FLCG is ``cap = +inf, cur0 = (nu * max_p P[i, p])+``.

Arithmetic mirrors submodlib so that marginal gains are bit-identical to its own:
each term ``K'[i, j] - cur[i]`` is formed in the kernel's dtype (float32 for float32
kernels), only positive terms are added, and the sum runs in a float64 accumulator
over the rows in a fixed order (descending row index for FL and FLCG, ascending for
FLMI -- the iteration orders submodlib 0.0.3 uses).

Dense path ("lazy greedy with incrementally refreshed bounds"). Reading a column of a
C-ordered kernel is a strided walk costing a cache line per row, so plain lazy greedy
(tens of stale candidates re-evaluated per step on flat kernels) is slow. Instead:

* every candidate c carries an estimate ``g[c]`` of its current gain, kept up to date
  row by row: when row i's coverage rises from ``old`` to ``new``, each c with
  ``K'[i, c] > old`` changes by ``max(K'-new, 0) - (K'-old)`` (contiguous reads of
  row i; chunks of the row with no entry above ``old`` are skipped);
* a rigorous bound on |g[c] - (exact gain)| (init sum, one rounding per update,
  rounding of the exact evaluation itself) gives ``band``; ``min(last exact gain,
  g[c] + band)`` is then a valid upper bound, and the usual lazy rule applies: take
  the candidate with the largest bound (lowest index on ties), evaluate it exactly,
  accept it if it still beats every other bound. A scan keeps a sorted shortlist of
  the best bounds so one O(n) scan usually serves a whole step;
* exact evaluations walk column j only through row blocks that can contain a
  positive term: ``bmax[rb, j] = max_{i in block} K[i, j]`` (built in the first
  pass, n*n/64 entries) is compared with the block's minimum coverage. Skipped terms
  are zeros, so the float64 sum is unchanged bit for bit.

Typically about one exact evaluation per step; its walk also yields the rows to
update when the candidate is accepted.

Sparse path: classic lazy greedy with a binary max-heap of stale exact gains; exact
gains are read from a CSC copy of the kernel (column j = the rows j helps).

Tie rule everywhere: among equal gains the lowest index wins. Heap / scan keys compare
(gain descending, index ascending).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Unit roundoff of float64.
_U = 2.0**-53


@njit(cache=True, inline="always")
def _better(ka, ia, kb, ib):
    """Heap/scan order: larger key first, lower index on equal keys."""
    return ka > kb or (ka == kb and ia < ib)


# --------------------------------------------------------------------------- checks


@njit(cache=True)
def all_finite_1d(a):
    bad = 0
    for x in a:
        bad += (x - x) != 0.0  # NaN and +-inf give NaN
    return bad == 0


# --------------------------------------------------------------------------- dense

# Exact gains need column j of a C-ordered kernel: a strided walk costing one cache
# line per row. To skip most of it, the first pass also builds a block summary
# ``bmax[rb, j] = max_{i in block rb} K[i, j]`` (blocks of _H rows; n*n/_H entries,
# 1/_H of the kernel). With ``bmin[rb] = min_{i in block rb} cur[i]``, a block with
# bmax <= bmin holds no positive term and is skipped; skipping zero terms leaves the
# float64 sum bit-identical.
_H = 64  # rows per summary block
_SHORTLIST = 16  # candidates kept from one scan
_W = 64  # chunk width of the row-update skip test


@njit(cache=True)
def _dense_first_pass(K, cap, cur, desc, g, bmax):
    """g[c] = sum_i max(min(K[i,c], cap[i]) - cur[i], 0) and the block summary.

    Row-major pass (contiguous reads). Per column the additions happen in the same row
    order as a column walk, so g is bit-identical to :func:`_exact_gain`.
    Returns False if K holds NaN or an infinity.
    """
    n = K.shape[0]
    for ii in range(n):
        i = n - 1 - ii if desc else ii
        q = cap[i]
        old = cur[i]
        row = K[i]
        bm = bmax[i // _H]
        first = (i % _H == _H - 1 or i == n - 1) if desc else (i % _H == 0)
        bad = 0
        if first:
            for c in range(n):
                k = row[c]
                bad += (k - k) != 0.0  # NaN and +-inf give NaN
                g[c] += max(np.float64(min(k, q) - old), 0.0)  # + 0.0 is exact
                bm[c] = k
        else:
            for c in range(n):
                k = row[c]
                bad += (k - k) != 0.0
                g[c] += max(np.float64(min(k, q) - old), 0.0)
                b = bm[c]
                bm[c] = k if k > b else b
        if bad > 0:
            return False
    return True


@njit(cache=True)
def _exact_gain(K, j, cap, cur, desc, bmax, bmin, rows):
    """Exact marginal gain of column j in submodlib's row order.

    Also lists the rows j improves in ``rows``; returns (gain, number of rows).
    """
    n = K.shape[0]
    nbk = bmax.shape[0]
    gain = 0.0
    m = 0
    for bb in range(nbk):
        rb = nbk - 1 - bb if desc else bb
        if bmax[rb, j] <= bmin[rb]:
            continue
        r0 = rb * _H
        r1 = min(n, r0 + _H)
        for ii in range(r1 - r0):
            i = r1 - 1 - ii if desc else r0 + ii
            t = min(K[i, j], cap[i]) - cur[i]
            if t > 0:
                gain += t
                rows[m] = i
                m += 1
    return gain, m


@njit(cache=True)
def _dense_row_updates(K, rows, olds, news, qs, m, g):
    """Refresh the estimates g after rows ``rows[:m]`` went from olds to news.

    A column c only changes if K[i, c] > old (old < new <= cap), so chunks of the row
    without such an entry are skipped after a cheap vectorised count.
    """
    n = K.shape[1]
    nfull = n // _W * _W
    for r in range(m):
        i = rows[r]
        old = olds[r]
        new = news[r]
        q = qs[r]
        row = K[i]
        for c0 in range(0, nfull, _W):
            cnt = 0
            for c in range(c0, c0 + _W):
                cnt += row[c] > old
            if cnt > 0:
                for c in range(c0, c0 + _W):
                    k = min(row[c], q)
                    g[c] += max(np.float64(k - new), 0.0) - max(np.float64(k - old), 0.0)
        for c in range(nfull, n):
            k = min(row[c], q)
            g[c] += max(np.float64(k - new), 0.0) - max(np.float64(k - old), 0.0)


@njit(cache=True)
def _scan(g, stale, fstep, s, band, Lk, Li, Lx):
    """Fill the shortlist with the len(Lk) best (upper bound, index) pairs, sorted.

    Upper bound of candidate c: its exact gain if computed at this step (or if its
    last exact gain is 0), else min(last exact gain, g[c] + band). Selected candidates
    have stale == -inf. Returns (entries filled, max g over unselected candidates).
    """
    n = g.shape[0]
    cap_ = Lk.shape[0]
    cnt = 0
    gm = 0.0
    for c in range(n):
        st = stale[c]
        if st == -np.inf:
            continue
        gc = g[c]
        if gc > gm:
            gm = gc
        if fstep[c] == s or st == 0.0:
            u = st
            ex = True
        else:
            u = min(st, gc + band)
            ex = False
        # c ascends, so an equal key never beats an entry already listed.
        if cnt < cap_ or u > Lk[cnt - 1]:
            p = cnt if cnt < cap_ else cap_ - 1
            while p > 0 and u > Lk[p - 1]:
                Lk[p] = Lk[p - 1]
                Li[p] = Li[p - 1]
                Lx[p] = Lx[p - 1]
                p -= 1
            Lk[p] = u
            Li[p] = c
            Lx[p] = ex
            if cnt < cap_:
                cnt += 1
    return cnt, gm


@njit(cache=True, nogil=True)  # nogil: a progress thread reads ``stats`` meanwhile
def dense_greedy(K, cap, cur, budget, desc, stop_if_zero, stats):
    """Greedy maximisation on a dense C-contiguous kernel. ``cur`` is modified.

    Returns (indices, gains, ok); ok is False when K holds NaN/inf (nothing selected).
    ``stats`` (int64[5]) receives counters: scans, exact evaluations, rows walked in
    exact evaluations, row updates, picks so far.
    """
    n = K.shape[0]
    out_idx = np.empty(budget, dtype=np.int64)
    out_gain = np.empty(budget, dtype=np.float64)
    g = np.zeros(n, dtype=np.float64)
    nbk = (n + _H - 1) // _H
    bmax = np.empty((nbk, n), dtype=K.dtype)
    if not _dense_first_pass(K, cap, cur, desc, g, bmax):
        return out_idx[:0], out_gain[:0], False
    bmin = np.empty(nbk, dtype=K.dtype)
    for rb in range(nbk):
        bmin[rb] = cur[rb * _H : min(n, rb * _H + _H)].min()
    g0 = 0.0
    for c in range(n):
        if g[c] > g0:
            g0 = g[c]
    stale = g.copy()  # last exact gain (a valid upper bound: gains only decrease)
    fstep = np.zeros(n, dtype=np.int64)  # step at which stale[c] was computed

    T = _SHORTLIST
    Lk = np.empty(T + 1, dtype=np.float64)
    Li = np.empty(T + 1, dtype=np.int64)
    Lx = np.empty(T + 1, dtype=np.bool_)

    rows = np.empty(n, dtype=np.int64)
    olds = np.empty(n, dtype=K.dtype)
    news = np.empty(n, dtype=K.dtype)
    qs = np.empty(n, dtype=K.dtype)
    buf_owner = -1  # candidate whose improved rows are in rows[:buf_m]
    buf_m = 0

    # Rounding-error bookkeeping for g (see module docstring): |g[c] - exact sum of
    # the current terms| <= e_init + e_upd, and an exact evaluation itself is within
    # n*u*(that sum) of the exact sum.
    e_init = _U * (n + 2.0) * g0
    e_upd = 0.0
    gm = g0
    count = 0
    for s in range(budget):
        err = e_init + e_upd
        band = 2.0 * (err + _U * n * (gm + err))
        need_scan = True
        cnt = 0
        wl = 0
        rk = -np.inf
        ri = n
        buf_owner = -1
        while True:
            if need_scan:
                cnt, gm = _scan(g, stale, fstep, s, band, Lk, Li, Lx)
                stats[0] += 1
                wl = min(cnt, T)
                if cnt == T + 1:
                    rk = Lk[T]
                    ri = Li[T]
                else:
                    rk = -np.inf
                    ri = n
                need_scan = False
            if wl == 0 or not _better(Lk[0], Li[0], rk, ri):
                need_scan = True
                continue
            c = Li[0]
            if Lx[0]:
                break
            v, mm = _exact_gain(K, c, cap, cur, desc, bmax, bmin, rows)
            stats[1] += 1
            stats[2] += mm
            buf_owner = c
            buf_m = mm
            stale[c] = v
            fstep[c] = s
            # re-insert the now exact entry into the sorted working list
            p = 0
            while p + 1 < wl and _better(Lk[p + 1], Li[p + 1], v, c):
                Lk[p] = Lk[p + 1]
                Li[p] = Li[p + 1]
                Lx[p] = Lx[p + 1]
                p += 1
            Lk[p] = v
            Li[p] = c
            Lx[p] = True
        gain = stale[c]
        if stop_if_zero and gain == 0.0:
            break
        out_idx[count] = c
        out_gain[count] = gain
        count += 1
        stats[4] = count
        stale[c] = -np.inf
        if s + 1 == budget:
            break
        if buf_owner != c:
            v, buf_m = _exact_gain(K, c, cap, cur, desc, bmax, bmin, rows)
        m = buf_m
        for r in range(m):
            i = rows[r]
            q = cap[i]
            olds[r] = cur[i]
            news[r] = min(K[i, c], q)
            qs[r] = q
            cur[i] = news[r]
        for r in range(m):
            rb = rows[r] // _H
            bmin[rb] = cur[rb * _H : min(n, rb * _H + _H)].min()
        _dense_row_updates(K, rows, olds, news, qs, m, g)
        e_upd += _U * m * (gm + err)
        stats[3] += m
    return out_idx[:count], out_gain[:count], True


# --------------------------------------------------------------------------- sparse


@njit(cache=True)
def _sparse_exact_gain(indptr, indices, data, j, cap, cur, desc):
    a = indptr[j]
    b = indptr[j + 1]
    gain = 0.0
    if desc:
        for p in range(b - 1, a - 1, -1):
            i = indices[p]
            t = min(data[p], cap[i]) - cur[i]
            if t > 0:
                gain += t
    else:
        for p in range(a, b):
            i = indices[p]
            t = min(data[p], cap[i]) - cur[i]
            if t > 0:
                gain += t
    return gain


@njit(cache=True)
def _sift_down(hk, hi, size, pos):
    k = hk[pos]
    x = hi[pos]
    while True:
        left = 2 * pos + 1
        if left >= size:
            break
        m = left
        right = left + 1
        if right < size and _better(hk[right], hi[right], hk[left], hi[left]):
            m = right
        if _better(hk[m], hi[m], k, x):
            hk[pos] = hk[m]
            hi[pos] = hi[m]
            pos = m
        else:
            break
    hk[pos] = k
    hi[pos] = x


@njit(cache=True, nogil=True)  # nogil: a progress thread reads ``stats`` meanwhile
def sparse_greedy(indptr, indices, data, n, cap, cur, budget, desc, stop_if_zero, stats):
    """Lazy greedy on a CSC kernel (column j = rows helped by j). ``cur`` is modified.

    ``stats`` (int64[3]) receives counters: exact re-evaluations, entries read by them,
    picks so far.
    """
    hk = np.empty(n, dtype=np.float64)
    hi = np.arange(n, dtype=np.int64)
    for j in range(n):
        hk[j] = _sparse_exact_gain(indptr, indices, data, j, cap, cur, desc)
    size = n
    for p in range(n // 2 - 1, -1, -1):
        _sift_down(hk, hi, size, p)
    out_idx = np.empty(budget, dtype=np.int64)
    out_gain = np.empty(budget, dtype=np.float64)
    count = 0
    fresh_top = True  # the heap top's key is exact (initial keys are all exact)
    while count < budget:
        c = hi[0]
        if fresh_top:
            v = hk[0]
        else:
            v = _sparse_exact_gain(indptr, indices, data, c, cap, cur, desc)
            stats[0] += 1
            stats[1] += indptr[c + 1] - indptr[c]
        # Is (v, c) still at least as good as the best other bound?
        if size == 1:
            accept = True
        else:
            m = 1
            if size > 2 and _better(hk[2], hi[2], hk[1], hi[1]):
                m = 2
            accept = _better(v, c, hk[m], hi[m])
        if accept:
            if stop_if_zero and v == 0.0:
                break
            out_idx[count] = c
            out_gain[count] = v
            count += 1
            stats[2] = count
            for p in range(indptr[c], indptr[c + 1]):
                i = indices[p]
                k = min(data[p], cap[i])
                if k > cur[i]:
                    cur[i] = k
            size -= 1
            hk[0] = hk[size]
            hi[0] = hi[size]
            if size > 0:
                _sift_down(hk, hi, size, 0)
            fresh_top = False
        else:
            hk[0] = v
            _sift_down(hk, hi, size, 0)
            fresh_top = False
    return out_idx[:count], out_gain[:count]


# --------------------------------------------------------------------------- helpers


@njit(cache=True)
def sparse_row_max(indptr, data, nrows, out):
    """out[i] = max stored value of CSR row i (or 0 for an empty row)."""
    for i in range(nrows):
        a = indptr[i]
        b = indptr[i + 1]
        m = 0.0
        if b > a:
            m = data[a]
            for p in range(a + 1, b):
                if data[p] > m:
                    m = data[p]
        out[i] = m
