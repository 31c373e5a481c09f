r"""Does a selection beat random subsets?  Tests, intervals and verdicts; pure numpy.

The primary metric is held-out response NLL (lower is better), fixed before any run. For
one arm (a deterministic selection, e.g. DELIFT) and one budget the inputs are

* ``arm[s, k]``: the NLL of held-out item k under the model trained on the arm's subset
  with training seed s (s = 1..S);
* ``rand[r, k]``: the same for random subset r (r = 1..R), each trained once.

With ``a = mean_{s,k} arm[s, k]`` and ``y_r = mean_k rand[r, k]``:

* **rank p** (exact, one-sided): under the null that the arm's subset is one more random
  subset, its score is exchangeable with the y_r, so

      p_rank = (1 + #{r : y_r <= a}) / (R + 1).

  Its smallest possible value is 1 / (R + 1) (0.048 for R = 20).
* **effect size** in units of the random subsets' spread:

      delta = mean_r y_r - a          (nats; > 0: the arm is better)
      z     = delta / sd_r(y_r)       (sd with ddof = 1)

* **hierarchical bootstrap**: each resample draws held-out items (k*, shared by both
  sides: the comparison is paired), the arm's training seeds (s*) and the random subsets
  (r*), each with replacement, and recomputes delta* = mean_{r*,k*} rand - mean_{s*,k*} arm.
  The interval is the percentile interval of delta*; the one-sided bootstrap p is
  (1 + #{delta* <= 0}) / (B + 1).
* **Holm** step-down correction of the bootstrap p-values across every arm and budget
  of the study (the family), and, reported next to it, of the rank p-values.

**Verdict** (alpha = 0.05, equivalence bound ``eq_bound`` in units of sd_r(y_r)):

* "better than random": Holm-adjusted bootstrap p <= alpha;
* "no better than random": the interval's upper end is below eq_bound * sd_r(y_r), i.e.
  any advantage over random is smaller than the stated bound (this includes "worse");
* "inconclusive": neither.

Every verdict is reported with its interval. The rank p is the assumption-free check: with
R random subsets and m tests in the family it cannot pass Holm unless R + 1 >= m / alpha,
which is why the verdict rests on the bootstrap p (more random subsets lift that floor).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

BETTER = "better than random"
NO_BETTER = "no better than random"
INCONCLUSIVE = "inconclusive"


def _as_2d(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(
            f"{name} must be a (runs, items) array with at least one run and one item, got shape {a.shape}"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds non-finite values")
    return a


def rank_p(arm_score: float, random_scores: Sequence[float]) -> float:
    """Exact one-sided p that the arm's score (lower is better) is as good as it is by chance:
    (1 + #{random scores <= arm_score}) / (R + 1)."""
    y = np.asarray(random_scores, dtype=np.float64)
    if y.size < 1:
        raise ValueError("rank_p needs at least one random subset")
    return float((1 + np.count_nonzero(y <= arm_score)) / (y.size + 1))


def effect_size(arm_score: float, random_scores: Sequence[float]) -> tuple[float, float, float]:
    """(delta, sd, z): delta = mean(random) - arm (> 0: the arm is better), sd of the random
    scores (ddof 1; needs R >= 2), z = delta / sd (inf sign-wise when sd is 0)."""
    y = np.asarray(random_scores, dtype=np.float64)
    if y.size < 2:
        raise ValueError("an effect size in units of the random spread needs at least two random subsets")
    delta = float(y.mean() - arm_score)
    sd = float(y.std(ddof=1))
    z = delta / sd if sd > 0 else (0.0 if delta == 0 else float(np.sign(delta) * np.inf))
    return delta, sd, z


def hierarchical_bootstrap(arm, rand, *, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """delta* for ``resamples`` hierarchical resamples (items, arm seeds, random subsets).

    Vectorised: an item resample is a weight vector w (counts / n), so a run's mean over the
    resampled items is ``run @ w``; seed and subset resamples are count vectors likewise.
    """
    X, Y = _as_2d(arm, "arm"), _as_2d(rand, "rand")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"arm and rand must score the same held-out items: {X.shape[1]} vs {Y.shape[1]}")
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    rng = np.random.default_rng(seed)
    S, n = X.shape
    R = Y.shape[0]
    out = np.empty(resamples, dtype=np.float64)
    chunk = 500
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        W = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(b)]).astype(np.float64) / n
        CS = np.stack([np.bincount(rng.integers(0, S, S), minlength=S) for _ in range(b)]).astype(np.float64) / S
        CR = np.stack([np.bincount(rng.integers(0, R, R), minlength=R) for _ in range(b)]).astype(np.float64) / R
        xa = np.einsum("bs,sb->b", CS, X @ W.T)  # resampled arm mean per resample
        yr = np.einsum("br,rb->b", CR, Y @ W.T)
        out[start : start + b] = yr - xa
    return out


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (same order as given):
    adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)) over the ascending order."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adj = np.maximum.accumulate(scaled)
    out = np.empty(m, dtype=np.float64)
    out[order] = adj
    return out


@dataclass
class Comparison:
    """One arm against the random subsets of the same budget (NLL: lower is better)."""

    arm_nll: float
    random_nll_mean: float
    random_nll_sd: float
    delta: float  # mean random NLL - arm NLL; > 0: the arm is better
    z: float  # delta in units of the random subsets' sd
    rank: int  # 1 + number of random subsets at least as good as the arm
    n_random: int
    n_seeds: int
    n_items: int
    p_rank: float
    p_boot: float
    ci_low: float
    ci_high: float
    confidence: float
    p_rank_holm: float = float("nan")
    p_boot_holm: float = float("nan")
    eq_bound: float = float("nan")  # in nats: eq_bound_sd * random sd
    verdict: str = INCONCLUSIVE

    def to_dict(self) -> dict:
        return asdict(self)


def compare(arm, rand, *, resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Rank p, effect size and hierarchical bootstrap interval of one arm vs random.

    ``arm``: (seeds, items) NLLs; ``rand``: (R, items) NLLs, the same items in the same order.
    Holm adjustment and the verdict need the whole family: see :func:`decide`.
    """
    X, Y = _as_2d(arm, "arm"), _as_2d(rand, "rand")
    if not 0 < confidence < 1:
        raise ValueError("confidence must lie in (0, 1)")
    a = float(X.mean())
    y = Y.mean(axis=1)
    delta, sd, z = effect_size(a, y)
    boot = hierarchical_bootstrap(X, Y, resamples=resamples, seed=seed)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail])
    return Comparison(
        arm_nll=a,
        random_nll_mean=float(y.mean()),
        random_nll_sd=sd,
        delta=delta,
        z=z,
        rank=int(1 + np.count_nonzero(y <= a)),
        n_random=int(y.size),
        n_seeds=int(X.shape[0]),
        n_items=int(X.shape[1]),
        p_rank=rank_p(a, y),
        p_boot=float((1 + np.count_nonzero(boot <= 0)) / (boot.size + 1)),
        ci_low=float(lo),
        ci_high=float(hi),
        confidence=confidence,
    )


def verdict(p_boot_holm: float, ci_high: float, eq_bound: float, alpha: float = 0.05) -> str:
    """The verdict rule of the module docstring (eq_bound in nats)."""
    if p_boot_holm <= alpha:
        return BETTER
    if ci_high < eq_bound:
        return NO_BETTER
    return INCONCLUSIVE


def decide(comparisons: Sequence[Comparison], *, alpha: float = 0.05, eq_bound_sd: float = 0.5) -> list[Comparison]:
    """Holm-adjust the family's p-values and set each comparison's verdict (in place; returned)."""
    comps = list(comparisons)
    if not comps:
        return comps
    pr = holm([c.p_rank for c in comps])
    pb = holm([c.p_boot for c in comps])
    for c, a, b in zip(comps, pr, pb):
        c.p_rank_holm, c.p_boot_holm = float(a), float(b)
        c.eq_bound = float(eq_bound_sd * c.random_nll_sd)
        c.verdict = verdict(c.p_boot_holm, c.ci_high, c.eq_bound, alpha)
    return comps
