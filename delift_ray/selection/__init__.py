r"""Greedy submodular subset selection: facility location and two of its variants.

Pure computation (numpy / scipy / numba); no Ray, no vLLM.

Conventions
-----------
``n`` is the pool size. All kernels are indexed **row = the sample being represented,
column = the candidate doing the representing**:

* ``K`` (n x n): ``K[i, j]`` = how much pool sample ``j`` helps pool sample ``i``.
  Not assumed symmetric.
* ``Q`` (n x |T|): ``Q[i, q]`` = how much pool sample ``i`` helps target ``q``.
* ``P`` (n x |E|): ``P[i, e]`` = how much existing sample ``e`` helps pool sample ``i``.

Each of ``K``, ``Q``, ``P`` may be a dense numpy array or a scipy.sparse matrix (CSR
expected; other formats are converted); entries that are not stored are 0.

Objectives (A is the selected subset of the pool V)
---------------------------------------------------
* Facility location (FL)::

      f(A) = sum_{i in V} max_{j in A} K[i, j]

* FL mutual information (FLMI, submodlib's FacilityLocationMutualInformationFunction)::

      f(A) = sum_{i in V} min( max_{j in A} K[i, j],  eta * max_q Q[i, q] )

* FL conditional gain (FLCG, submodlib's FacilityLocationConditionalGainFunction)::

      f(A) = sum_{i in V} max( max_{j in A} K[i, j] - nu * max_p P[i, p],  0 )

As in submodlib, every maximum above is floored at 0 (the maximum over the empty set is
0, so negative entries never contribute). For non-negative kernels that is exactly the
formulas as written. All three are monotone submodular.

Algorithm
---------
Greedy maximisation with lazy evaluation (upper bounds on marginal gains; the best
bound is re-evaluated exactly and accepted if it still beats every other bound). Each
step adds the element with the largest marginal gain ``f(A + j) - f(A)``.
**Tie rule:** among elements with equal marginal gain the lowest index wins.
``budget`` elements are chosen (``0 < budget < n``, else
:class:`~delift_ray.errors.BudgetError`). With ``stop_if_zero_gain=True`` selection
stops before the first element whose marginal gain is exactly 0 (gains are never
negative), so fewer than ``budget`` may come back.

Each function returns ``(indices, gains)``: int64 indices in selection order and the
float64 marginal gain of each pick, so ``gains.sum() == f(indices)`` up to rounding.

Numerics mirror submodlib so that selections agree exactly: each term
``K[i, j] - current_cover[i]`` is formed in the kernel's dtype (float32 kernels stay
float32, as submodlib converts every kernel to float32) and summed in float64 in
submodlib's row order. ``eta * Q`` and ``nu * P`` are also formed in the kernel dtype.

Dense kernels are used in place (``np.asarray``; no copy when the kernel is float32 or
float64 and C-contiguous, otherwise one converted copy). Sparse kernels are never
densified; one CSC copy of the structure is made.

Mapping onto submodlib 0.0.3 (verified empirically, see tests/selection/test_greedy.py)
--------------------------------------------------------------------------------
Our convention is submodlib's; nothing is transposed:

* ``facility_location(K, b)`` ==
  ``FacilityLocationFunction(n, mode="dense", sijs=K, separate_rep=False)
  .maximize(budget=b, optimizer="LazyGreedy", stopIfZeroGain=False,
  stopIfNegativeGain=False)``; submodlib's ``sijs[i][j]`` is also "j represents i".
  For a sparse K: ``FacilityLocationFunction(n, mode="sparse", sijs=K_csr,
  num_neighbors=k)``. Caveat: submodlib's sparse kernel looks up a missing ``(i, j)``
  as the stored ``(j, i)`` (it treats the sparsity pattern as symmetric), whereas
  here a missing entry is 0; the two agree whenever the pattern of K is symmetric
  (values may be asymmetric), e.g. a symmetrised kNN graph.
* ``fl_mutual_information(K, Q, b, eta)`` ==
  ``FacilityLocationMutualInformationFunction(n, num_queries=|T|, data_sijs=K,
  query_sijs=Q, magnificationEta=eta)`` (``query_sijs`` is n x |T|, row = pool
  sample). submodlib floors ``eta * max_q Q[i, q]`` at float32's smallest normal
  (1.2e-38) rather than 0, which only matters for exact zero-gain ties.
* ``fl_conditional_gain(K, P, b, nu)`` ==
  ``FacilityLocationConditionalGainFunction(n, num_privates=|E|, data_sijs=K,
  private_sijs=P, privacyHardness=nu)`` (``private_sijs`` is n x |E|, row = pool
  sample).
* submodlib returns ``[(index, gain), ...]``; we return two arrays.
* Ties differ: submodlib's lazy greedy does not break ties by lowest index (its heap
  prefers the highest index, and a re-evaluated element is accepted on an equal
  bound), so selections are only comparable on kernels without exact gain ties.
  submodlib's ``stopIfZeroGain`` treats ``|gain| < 1e-5`` as zero; ours means
  exactly zero. submodlib also refuses ``budget >= n``, as we do.
"""

from __future__ import annotations

from . import greedy as _g

__all__ = ["facility_location", "fl_mutual_information", "fl_conditional_gain"]


def facility_location(K, budget, *, stop_if_zero_gain=False, progress=False):
    r"""Greedy facility location: ``f(A) = sum_{i in V} max_{j in A} K[i, j]``.

    Parameters
    ----------
    K : (n, n) ndarray or scipy.sparse matrix
        ``K[i, j]`` = how much sample ``j`` helps sample ``i`` (missing sparse
        entries are 0). float32 / float64 dense kernels are used without copying.
    budget : int
        Number of samples to pick, ``0 < budget < n``.
    stop_if_zero_gain : bool
        Stop before adding an element whose marginal gain is exactly 0.
    progress : bool
        A progress bar over the picks (stderr); the same in the two functions below.

    Returns
    -------
    (indices, gains) : (ndarray[int64], ndarray[float64])
        Picks in selection order and their marginal gains ``f(A + j) - f(A)``.
        Ties are broken by the lowest index.

    Raises
    ------
    BudgetError
        ``budget`` is not an integer with ``0 < budget < n``.
    ValueError
        ``K`` is not square or contains NaN / infinite values.
    """
    kernel = _g.Kernel(K, "K")
    b = _g.check_budget(budget, kernel.n)
    # submodlib sums FL gains over rows in descending index order.
    return _g.run(kernel, None, None, b, True, stop_if_zero_gain, progress=progress)


def fl_mutual_information(K, Q, budget, eta=1.0, *, stop_if_zero_gain=False, progress=False):
    r"""Greedy FL mutual information with a target set T.

    ``f(A) = sum_{i in V} min(max_{j in A} K[i, j], eta * max_{q in T} Q[i, q])``
    (maxima floored at 0).

    Parameters
    ----------
    K : (n, n) ndarray or scipy.sparse matrix
        ``K[i, j]`` = how much pool sample ``j`` helps pool sample ``i``.
    Q : (n, |T|) ndarray or scipy.sparse matrix, |T| >= 1
        ``Q[i, q]`` = how much pool sample ``i`` helps target ``q``.
    budget : int
        Number of samples to pick, ``0 < budget < n``.
    eta : float, >= 0
        Magnification of the query term (submodlib's ``magnificationEta``).
    stop_if_zero_gain : bool
        Stop before adding an element whose marginal gain is exactly 0 (FLMI
        saturates once every pool sample's query cap is reached).

    Returns
    -------
    (indices, gains) : (ndarray[int64], ndarray[float64])
        Picks in selection order and their marginal gains; ties -> lowest index.
    """
    kernel = _g.Kernel(K, "K")
    eta = _g.check_weight(eta, "eta")
    qmax = _g.row_max(Q, kernel.n, "Q", "K", allow_no_columns=False)
    b = _g.check_budget(budget, kernel.n)
    cap = _g.scaled_floor(qmax, eta, kernel.dtype)
    # f = FL on the capped kernel min(K[i, j], cap[i]); submodlib sums rows ascending.
    return _g.run(kernel, cap, None, b, False, stop_if_zero_gain, progress=progress)


def fl_conditional_gain(K, P, budget, nu=1.0, *, stop_if_zero_gain=False, progress=False):
    r"""Greedy FL conditional gain given an existing set E.

    ``f(A) = sum_{i in V} max(max_{j in A} K[i, j] - nu * max_{p in E} P[i, p], 0)``
    (maxima floored at 0; with no columns in P this is plain facility location).

    Parameters
    ----------
    K : (n, n) ndarray or scipy.sparse matrix
        ``K[i, j]`` = how much pool sample ``j`` helps pool sample ``i``.
    P : (n, |E|) ndarray or scipy.sparse matrix
        ``P[i, e]`` = how much existing sample ``e`` helps pool sample ``i``.
    budget : int
        Number of samples to pick, ``0 < budget < n``.
    nu : float, >= 0
        Privacy hardness (submodlib's ``privacyHardness``).
    stop_if_zero_gain : bool
        Stop before adding an element whose marginal gain is exactly 0.

    Returns
    -------
    (indices, gains) : (ndarray[int64], ndarray[float64])
        Picks in selection order and their marginal gains; ties -> lowest index.
    """
    kernel = _g.Kernel(K, "K")
    nu = _g.check_weight(nu, "nu")
    pmax = _g.row_max(P, kernel.n, "P", "K", allow_no_columns=True)
    b = _g.check_budget(budget, kernel.n)
    cur0 = _g.scaled_floor(pmax, nu, kernel.dtype)
    # f = FL started from coverage cur0[i]; submodlib sums rows descending.
    return _g.run(kernel, None, cur0, b, True, stop_if_zero_gain, progress=progress)
