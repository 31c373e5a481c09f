"""The contrastive noise gate (delift_ray.gate): derangements, null, p-values, FDR, on known answers."""

from __future__ import annotations

import numpy as np
import pytest

from delift_ray.gate import contrastive_gate, derangements, null_gains, p_values, similar_donors, storey_bh


def test_derangements_are_derangements_with_distinct_donors():
    ids = [f"{h:016x}" for h in np.random.default_rng(0).integers(0, 2**62, 50)]
    donors = derangements(ids, 4)
    assert donors.shape == (4, 50)
    for row in donors:
        assert sorted(row) == list(range(50)) and not (row == np.arange(50)).any()
    assert all(len(set(donors[:, i])) == 4 for i in range(50))
    # Seedless and independent of input order: a sample keeps its donors when the pool is shuffled.
    perm = np.random.default_rng(1).permutation(50)
    shuffled = derangements([ids[p] for p in perm], 4)
    for new_i, old_i in enumerate(perm):
        assert sorted(ids[perm[d]] for d in shuffled[:, new_i]) == sorted(ids[d] for d in donors[:, old_i])


def test_derangements_need_more_samples_than_mismatches():
    with pytest.raises(ValueError, match="more pool samples"):
        derangements(["a", "b", "c"], 3)


def test_null_gains_by_hand():
    # One sample, mismatches 1, 2, 4: h_a = mean(others) - D_a, scaled by sqrt((1+1/3)/(1+1/2)).
    h = null_gains(np.array([[1.0, 2.0, 4.0]]))
    scale = np.sqrt((4 / 3) / 1.5)
    assert np.allclose(sorted(h), sorted(np.array([3.0 - 1.0, 2.5 - 2.0, 1.5 - 4.0]) * scale))
    # NaN entries are skipped; a row with one mismatch contributes nothing.
    assert null_gains(np.array([[1.0, np.nan, 3.0], [5.0, np.nan, np.nan]])).size == 2


def test_p_values_and_storey_bh_by_hand():
    null = np.array([0.0, 1.0, 2.0, 3.0])
    p = p_values(np.array([3.5, 1.0, -1.0, np.nan]), null)
    assert np.allclose(p[:3], [1 / 5, 4 / 5, 5 / 5]) and np.isnan(p[3])
    q, pi0 = storey_bh(np.array([0.01, 0.02, 0.9, np.nan]))
    # pi0 = (#{p > 0.5} + 1) / (0.5 * 3) = 4/3 -> capped at 1; BH: q_(k) = min_{j>=k} p_(j) * 3 / j.
    assert pi0 == 1.0
    assert np.allclose(q[:3], [0.03, 0.03, 0.9]) and np.isnan(q[3])


def test_gate_excludes_exactly_the_mismatched_rows():
    """A constructed pool: 40 samples whose own prompt lowers the distance by 1 nat, 40
    whose own prompt predicts the response exactly as well as the others' do on average."""
    rng = np.random.default_rng(3)
    n, m = 80, 4
    level = rng.uniform(1.0, 3.0, n)  # per-response difficulty: cancels in the contrast
    D = level[:, None] + rng.normal(0, 0.05, (n, m))
    own = D.mean(axis=1)
    own[:40] -= 1.0
    res = contrastive_gate(own, D, fdr=0.05)
    assert res.keep[:40].all() and not res.keep[40:].any()
    assert res.null_size == n * m
    assert np.allclose(res.gain[:40], 1.0) and np.allclose(res.gain[40:], 0.0)


def test_gate_controls_the_false_discovery_rate():
    """Swapped rows drawn from the null itself (own exchangeable with the mismatches): over
    many pools, the mean share of them among the kept samples stays under the fdr."""
    shares = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        n, m = 60, 4
        level = rng.uniform(1.0, 3.0, n)
        D = level[:, None] + rng.normal(0, 0.3, (n, m))
        own = level + rng.normal(0, 0.3, n)
        own[:30] -= rng.uniform(0.2, 1.5, 30)  # intact samples, of mixed strength
        keep = contrastive_gate(own, D, fdr=0.1).keep
        shares.append(keep[30:].sum() / max(keep.sum(), 1))
    assert np.mean(shares) <= 0.1


def test_gate_keeps_untested_samples_and_a_clean_pool():
    rng = np.random.default_rng(4)
    D = 2.0 + rng.normal(0, 0.05, (30, 3))
    own = D.mean(axis=1) - 0.8
    D[5] = np.nan  # no mismatch fitted
    own[6] = np.nan  # its own baseline is missing
    res = contrastive_gate(own, D, fdr=0.1)
    assert res.keep.all()
    assert list(np.flatnonzero(res.untested)) == [5, 6]
    assert np.isnan(res.q_value[[5, 6]]).all()


def test_gate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fdr"):
        contrastive_gate(np.zeros(3), np.zeros((3, 2)), fdr=1.0)
    with pytest.raises(ValueError, match=r"\(n, m\)"):
        contrastive_gate(np.zeros(3), np.zeros((4, 2)), fdr=0.1)


def _legs_and_capitals():
    prompts = [
        "How many legs does a spider have?",
        "How many legs does an insect have?",
        "What is the capital of France?",
        "What is the capital of Spain?",
        "How many legs does a spider have?",
    ]
    return prompts, [f"id{i}" for i in range(len(prompts))]


def test_similar_donors_are_drawn_from_the_nearest_other_prompts():
    from delift_ray.gate import _draw

    prompts, ids = _legs_and_capitals()
    donors = similar_donors(prompts, ids, 1)[0]  # drawn from the 2 nearest
    # 0's nearest is 1, never its own duplicate 4; then, at similarity 0, the lowest id (2).
    near = {0: {1, 2}, 1: {0, 4}, 2: {3, 0}, 3: {2, 0}, 4: {1, 2}}
    for i, d in enumerate(donors):
        assert d in near[i]
        assert d == min(near[i], key=lambda j: _draw(ids[i], ids[j]))
    assert all(prompts[d] != prompts[i] for i, d in enumerate(donors))


def test_similar_donors_do_not_depend_on_input_order():
    prompts, ids = _legs_and_capitals()
    perm = [3, 0, 4, 2, 1]
    donors = similar_donors(prompts, ids, 2)
    shuffled = similar_donors([prompts[p] for p in perm], [ids[p] for p in perm], 2)
    for k in range(2):
        assert [ids[perm[d]] for d in shuffled[k]] == [ids[donors[k, p]] for p in perm]


def test_similar_donors_mark_missing_ones():
    donors = similar_donors(["aa bb", "aa bb", "cc dd"], ["x", "y", "z"], 2)
    assert list(donors[:, 0]) == [2, -1] and list(donors[:, 1]) == [2, -1]  # one other distinct prompt
    assert sorted(donors[:, 2]) == [0, 1]


def test_mismatched_ids_use_the_donor_rule():
    from types import SimpleNamespace

    from delift_ray.data import sample_id
    from delift_ray.gate import mismatched_ids, mismatched_pairs

    prompts, ids = _legs_and_capitals()
    pool = SimpleNamespace(sample_ids=ids, prompts=prompts, responses=[f"r{i}" for i in range(5)])
    donors = similar_donors(prompts, ids, 1)[0]
    mm = mismatched_ids(pool, 1, "similar")
    assert [mm[i, 0] for i in range(5)] == [sample_id(prompts[d], f"r{i}") for i, d in enumerate(donors)]
    assert mismatched_pairs(pool, 1, "similar") == [(i, int(d)) for i, d in enumerate(donors)]
    three = SimpleNamespace(sample_ids=["x", "y", "z"], prompts=["aa bb", "aa bb", "cc dd"], responses=["1", "2", "3"])
    assert mismatched_ids(three, 2, "similar")[0, 1] is None  # no second donor: the gate reads NaN
    assert len(mismatched_pairs(three, 2, "similar")) == 4
    assert len(mismatched_pairs(pool, 2, "random")) == 10


def test_the_similar_donor_search_runs_once_per_pool(monkeypatch):
    from types import SimpleNamespace

    import delift_ray.gate as g

    calls = []
    real = g.similar_donors
    monkeypatch.setattr(g, "similar_donors", lambda *a: calls.append(1) or real(*a))
    prompts, ids = _legs_and_capitals()
    pool = SimpleNamespace(sample_ids=ids, prompts=prompts, responses=[f"r{i}" for i in range(5)])
    g._LAST_SIMILAR.clear()
    g.mismatched_pairs(pool, 1, "similar")  # ingest
    g.mismatched_ids(pool, 1, "similar")  # the gate step
    assert len(calls) == 1
    g.mismatched_ids(pool, 2, "similar")  # other settings: searched again
    assert len(calls) == 2
