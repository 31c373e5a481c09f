r"""The contrastive noise gate: keep a sample only if its own prompt predicts its response
better than other samples' prompts do, judged against a null built from the same run.

Pure computation (numpy); no Ray, no vLLM.

For pool sample i with response r_i and prompt p_i, let ``d0_i = d(r_i | p_i)`` (its
baseline distance, mean response NLL) and ``D_ik = d(r_i | p_{pi_k(i)})`` the same
response after the prompt of another sample, for m fixed derangements pi_1..pi_m. The
contrastive gain is

    g_i = mean_k D_ik - d0_i.

Format effects cancel: any question makes "a short answer" likely; only the right one
makes the right answer likely. A response swapped in from another sample is no better
predicted by its nominal prompt than by a random one, so under that null d0_i is
exchangeable with the D_ik and g_i is distributed like

    h_ia = mean_{k != a} D_ik - D_ia      (a mismatched prompt playing "own"),

rescaled by sqrt((1 + 1/c) / (1 + 1/(c - 1))) for c available mismatches, which makes
its variance that of g under exchangeability (equal variances and pairwise covariances).
Every sample contributes its h_ia to one pooled null. The p-value of g_i is
``(1 + #{h >= g_i}) / (1 + #h)``, and the gate keeps the samples that Storey's adaptive
Benjamini-Hochberg procedure rejects at the false-discovery rate ``fdr``: among the kept
samples, the expected share whose prompt does not predict the response is at most
``fdr``. No constant in distance units: the threshold comes from the run's own null.

A sample with no usable mismatch (none fitted the context, or its baseline is missing)
is untested and kept.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from delift_ray.data import sample_id

# Storey's lambda: p-values above it estimate the share of null samples.
STOREY_LAMBDA = 0.5


def derangements(sample_ids: list[str], m: int) -> np.ndarray:
    """(m, n) donors: row k maps pool position i to the position whose prompt it is scored after.

    The samples are ordered by id (a content hash, so the order is random-looking yet
    independent of input order and seedless); row k maps each sample to the one k places
    after it in that cycle. Each row is a derangement, and the m donors of a sample are
    distinct, for n > m.
    """
    n = len(sample_ids)
    if not 0 < m < n:
        raise ValueError(f"the noise gate needs more pool samples ({n}) than mismatched prompts per sample ({m})")
    order = np.argsort(np.asarray(sample_ids), kind="stable")
    donors = np.empty((m, n), dtype=np.int64)
    for k in range(1, m + 1):
        donors[k - 1, order] = order[(np.arange(n) + k) % n]
    return donors


def prompt_free_id(response: str) -> str:
    """The sample id of a response after an empty prompt."""
    return sample_id("", response)


# Cells of the (rows, n) similarity block computed at once: bounds its memory (8 bytes a cell).
SIMILAR_CHUNK_CELLS = 2**24


# similar donors: each sample's m donors are drawn from its NEIGHBOURHOOD * m nearest prompts.
NEIGHBOURHOOD = 2


def similar_donors(prompts: list[str], sample_ids: list[str], m: int) -> np.ndarray:
    """(m, n) donors: row k maps pool position i to the k-th of m samples drawn from the
    ``NEIGHBOURHOOD * m`` whose prompts are most similar to its own; -1 where too few other
    prompts exist.

    Similarity is the cosine of word TF-IDF vectors (sublinear term frequency). Prompts equal
    to the sample's own are never donors: their mismatched copy would be the sample itself.
    The neighbourhood is ranked on similarities rounded to 1e-6, ties to the lower sample id;
    the draw from it is a hash of the two sample ids. So the donors depend neither on input
    order nor on the last bits of a sparse product.

    Why similar: a random donor is usually another *kind* of prompt, so a response that
    answers a neighbouring question ("How many legs does a spider have?" answered "An insect
    has six legs.") is better predicted by its nominal prompt than by random ones and passes
    the gate. Against donors of the same kind only the right prompt earns gain.
    Why drawn: the null treats a sample's donors as exchangeable. The m nearest, in rank
    order, are not (the nearest predicts a response systematically better than the m-th),
    which fattens the null's tail and costs intact samples; m drawn from a wider
    neighbourhood are exchangeable given it.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    n = len(prompts)
    if not 0 < m < n:
        raise ValueError(f"the noise gate needs more pool samples ({n}) than mismatched prompts per sample ({m})")
    try:
        X = TfidfVectorizer(sublinear_tf=True).fit_transform(prompts).tocsr()
    except ValueError:  # no word in any prompt: every donor is as good as another
        X = None
    _, group = np.unique(np.asarray(prompts, dtype=object).astype(str), return_inverse=True)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(np.asarray(sample_ids), kind="stable")] = np.arange(n)
    tie = n - 1 - rank  # larger wins: the lower sample id
    wide = min(n - 1, NEIGHBOURHOOD * m)
    donors = np.full((m, n), -1, dtype=np.int64)
    step = max(1, SIMILAR_CHUNK_CELLS // n)
    for lo in range(0, n, step):
        rows = np.arange(lo, min(n, lo + step))
        sim = np.zeros((rows.size, n)) if X is None else (X[rows] @ X.T).toarray()
        key = np.rint(sim * 1e6).astype(np.int64) * n + tie[None, :]
        key[group[rows][:, None] == group[None, :]] = -1  # the sample itself and equal prompts
        top = np.argpartition(-key, wide - 1, axis=1)[:, :wide]
        for r, i in enumerate(rows):
            near = [int(j) for j in top[r] if key[r, j] >= 0]
            near.sort(key=lambda j: _draw(sample_ids[i], sample_ids[j]))
            donors[: min(m, len(near)), i] = near[:m]
    return donors


def _draw(a: str, b: str) -> int:
    """A seedless, order-free pseudo-random key of the pair (a, b)."""
    return zlib.crc32(f"{a}\x1f{b}".encode())


# The last similar-donor search: the job's ingest (which plans the mismatched baselines) and
# its gate step (which reads them) ask for the same pool's donors, and the search is quadratic.
_LAST_SIMILAR: dict = {}


def donors_for(pool, m: int, rule: str = "random") -> np.ndarray:
    """(m, n) donor positions of the gate's mismatched prompts by ``rule``: ``random``
    (:func:`derangements`) or ``similar`` (:func:`similar_donors`); -1 for none."""
    if rule == "random":
        return derangements(pool.sample_ids, m)
    if rule == "similar":
        key = (m, tuple(pool.sample_ids))  # a sample id is a hash of its prompt and response
        if _LAST_SIMILAR.get("key") != key:
            _LAST_SIMILAR.update(key=key, donors=similar_donors(list(pool.prompts), pool.sample_ids, m))
        return _LAST_SIMILAR["donors"]
    raise ValueError(f"unknown gate donor rule {rule!r}")


def mismatched_pairs(pool, m: int, rule: str = "random") -> list[tuple[int, int]]:
    """(pool position i, donor position) for each of the gate's m mismatched prompts of each sample."""
    donors = donors_for(pool, m, rule)
    return [(i, int(donors[k, i])) for i in range(len(pool.sample_ids)) for k in range(m) if donors[k, i] >= 0]


def mismatched_ids(pool, m: int, rule: str = "random") -> np.ndarray:
    """(n, m) sample ids of d(r_i | p_donor), None where a sample has no k-th donor: where the
    gate finds each sample's mismatched baselines."""
    donors = donors_for(pool, m, rule)
    ids = np.full((len(pool.sample_ids), m), None, dtype=object)
    for k in range(m):
        for i, d in enumerate(donors[k]):
            if d >= 0:
                ids[i, k] = sample_id(pool.prompts[d], pool.responses[i])
    return ids


@dataclass
class GateResult:
    """Per pool sample: the contrastive gain, its p-value and q-value, and whether it is kept."""

    gain: np.ndarray  # g_i; NaN when untested
    p_value: np.ndarray  # NaN when untested
    q_value: np.ndarray  # NaN when untested
    keep: np.ndarray  # bool
    null_size: int  # mismatched-against-mismatched draws in the null
    null_share: float  # Storey's estimate of the share of samples the null explains

    @property
    def untested(self) -> np.ndarray:
        return np.isnan(self.gain)


def null_gains(d_mismatched: np.ndarray) -> np.ndarray:
    """The pooled null: every sample's h_ia, rescaled to the variance of g (see the module)."""
    D = np.asarray(d_mismatched, dtype=np.float64)
    ok = ~np.isnan(D)
    c = ok.sum(axis=1)
    rows = c >= 2
    D, ok, c = D[rows], ok[rows], c[rows]
    if not D.size:
        return np.empty(0)
    total = np.where(ok, D, 0.0).sum(axis=1, keepdims=True)
    others = (total - np.where(ok, D, 0.0)) / (c[:, None] - 1)
    scale = np.sqrt((1 + 1 / c) / (1 + 1 / (c - 1)))[:, None]
    return ((others - D) * scale)[ok]


def p_values(gain: np.ndarray, null: np.ndarray) -> np.ndarray:
    """One-sided empirical p-values, (1 + #{null >= g}) / (1 + #null); NaN for NaN gains."""
    null = np.sort(null)
    above = null.size - np.searchsorted(null, gain, side="left")
    p = (1.0 + above) / (1.0 + null.size)
    return np.where(np.isnan(gain), np.nan, p)


def storey_bh(p: np.ndarray, lam: float = STOREY_LAMBDA) -> tuple[np.ndarray, float]:
    """Adaptive Benjamini-Hochberg q-values (NaN stays NaN) and the estimated null share pi0."""
    q = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    n = tested.size
    if not n:
        return q, 1.0
    pt = p[tested]
    pi0 = float(min(1.0, (np.count_nonzero(pt > lam) + 1) / ((1 - lam) * n)))
    order = np.argsort(pt, kind="stable")
    ranked = pt[order] * pi0 * n / np.arange(1, n + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q[tested[order]] = np.minimum(ranked, 1.0)
    return q, pi0


def contrastive_gate(d_own: np.ndarray, d_mismatched: np.ndarray, fdr: float) -> GateResult:
    """The gate over a pool: ``d_own`` (n,) baselines, ``d_mismatched`` (n, m) with NaN where missing."""
    if not 0 < fdr < 1:
        raise ValueError(f"fdr must lie in (0, 1), got {fdr}")
    d_own = np.asarray(d_own, dtype=np.float64)
    D = np.asarray(d_mismatched, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != d_own.shape[0]:
        raise ValueError(f"d_mismatched must be (n, m) for n = {d_own.shape[0]}, got {D.shape}")
    have = (~np.isnan(D)).any(axis=1) & ~np.isnan(d_own)
    gain = np.full(d_own.shape, np.nan)
    with np.errstate(invalid="ignore"):
        gain[have] = np.nanmean(D[have], axis=1) - d_own[have]
    null = null_gains(D)
    if not null.size:  # nothing to compare with: every sample is untested and kept
        nan = np.full(d_own.shape, np.nan)
        return GateResult(np.full(d_own.shape, np.nan), nan, nan.copy(), np.ones(d_own.shape, bool), 0, 1.0)
    p = p_values(gain, null)
    q, pi0 = storey_bh(p)
    keep = np.isnan(q) | (q <= fdr)
    return GateResult(gain, p, q, keep, int(null.size), pi0)
