"""delift_ray.evaluate.statistics: values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from delift_ray.evaluate import statistics as st


def test_rank_p_by_hand():
    rand = [0.4, 0.6, 0.7, 0.5]
    assert st.rank_p(0.5, rand) == pytest.approx(3 / 5)  # 0.4 and 0.5 are at least as good
    assert st.rank_p(0.1, rand) == pytest.approx(1 / 5)  # the floor 1 / (R + 1)
    assert st.rank_p(0.9, rand) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        st.rank_p(0.5, [])


def test_effect_size_by_hand():
    delta, sd, z = st.effect_size(1.0, [1.1, 1.3])
    assert (
        delta == pytest.approx(0.2) and sd == pytest.approx(np.sqrt(0.02)) and z == pytest.approx(0.2 / np.sqrt(0.02))
    )
    assert st.effect_size(1.0, [1.0, 1.0]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        st.effect_size(1.0, [1.0])


def test_holm_by_hand():
    # sorted 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> max-accumulated 0.06
    assert np.allclose(st.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    assert np.allclose(st.holm([0.5, 0.9]), [1.0, 1.0])
    assert st.holm([]).size == 0


def test_bootstrap_constant_shift_is_exact():
    rng = np.random.default_rng(1)
    base = rng.normal(2.0, 0.3, size=50)
    rand = np.stack([base] * 5)
    arm = np.stack([base - 0.1] * 3)
    boot = st.hierarchical_bootstrap(arm, rand, resamples=300, seed=0)
    assert np.allclose(boot, 0.1)


def test_bootstrap_resamples_training_seeds():
    base = np.linspace(1.0, 2.0, 40)
    rand = np.stack([base] * 4)
    arm = np.stack([base, base + 0.2])  # seed offsets 0 and 0.2
    boot = st.hierarchical_bootstrap(arm, rand, resamples=4000, seed=0)
    # Two seeds drawn with replacement: mean offset 0 (1/4), 0.1 (1/2) or 0.2 (1/4).
    vals, counts = np.unique(np.round(boot, 9), return_counts=True)
    assert np.allclose(vals, [-0.2, -0.1, 0.0])
    assert np.allclose(counts / counts.sum(), [0.25, 0.5, 0.25], atol=0.03)


def test_bootstrap_resamples_items_and_random_subsets():
    rng = np.random.default_rng(2)
    n = 400
    diff = rng.normal(0.05, 0.5, size=n)
    arm = rng.normal(2.0, 0.2, size=(1, n))
    rand = arm + diff
    boot = st.hierarchical_bootstrap(arm, rand, resamples=3000, seed=0)
    assert boot.mean() == pytest.approx(diff.mean(), abs=0.01)
    assert boot.std() == pytest.approx(diff.std() / np.sqrt(n), rel=0.1)  # the item-level standard error
    # Random subsets resampled: shifts 0 and 1 give means 0, 0.5 or 1 above the arm.
    boot = st.hierarchical_bootstrap(arm, np.concatenate([arm, arm + 1.0]), resamples=2000, seed=0)
    assert set(np.round(np.unique(boot), 9)) == {0.0, 0.5, 1.0}
    with pytest.raises(ValueError, match="same held-out items"):
        st.hierarchical_bootstrap(arm, rand[:, :10])


def test_verdicts():
    assert st.verdict(0.01, 0.2, 0.05) == st.BETTER
    assert st.verdict(0.2, 0.01, 0.05) == st.NO_BETTER
    assert st.verdict(0.2, -0.3, 0.05) == st.NO_BETTER  # worse than random is also "no better"
    assert st.verdict(0.2, 0.2, 0.05) == st.INCONCLUSIVE

    rng = np.random.default_rng(3)
    n, R = 300, 20
    item = rng.normal(2.0, 0.5, size=n)  # shared item difficulty
    subset_effect = rng.normal(0, 0.01, size=R)
    rand = item + subset_effect[:, None] + rng.normal(0, 0.05, size=(R, n))
    good = item - 0.1 + rng.normal(0, 0.05, size=(3, n))
    same = item + rng.normal(0, 0.05, size=(3, n))
    comps = st.decide([st.compare(good, rand, resamples=1000), st.compare(same, rand, resamples=1000)], eq_bound_sd=1.0)
    c_good, c_same = comps
    assert c_good.verdict == st.BETTER and c_good.rank == 1 and c_good.p_rank == pytest.approx(1 / 21)
    assert c_good.ci_low > 0 and c_good.z > 3
    assert c_same.verdict == st.NO_BETTER and c_same.ci_high < c_same.eq_bound == pytest.approx(c_same.random_nll_sd)
    assert c_good.p_boot_holm == pytest.approx(min(1.0, 2 * min(c_good.p_boot, c_same.p_boot)))
    # A tighter equivalence bound than the interval can support leaves the question open.
    assert st.decide([c_same], eq_bound_sd=0.1)[0].verdict == st.INCONCLUSIVE
    # Two held-out items cannot tell anything apart.
    few = st.decide([st.compare(same[:, :2], rand[:, :2] + rng.normal(0, 0.3, size=(R, 2)), resamples=500)])[0]
    assert few.verdict == st.INCONCLUSIVE
