"""The profile's pure maths (delift_ray/profile.py) on known answers, and the select step's
gain curve past the budget."""

import numpy as np
import pytest
import scipy.sparse as sp

from delift_ray import profile as pf
from delift_ray import selection
from delift_ray.config import validate_config
from delift_ray.steps.select import curve_horizon, select


def test_histogram_counts_finite_values_in_equal_bins():
    h = pf.histogram(np.array([0.0, 0.1, 0.5, 1.0, np.nan, np.inf]), bins=2)
    assert h.edges == [0.0, 0.5, 1.0]
    assert h.counts == [2, 2]
    assert h.values == 4
    assert pf.histogram(np.array([np.nan])).counts == []
    assert sum(pf.histogram(np.full(5, 3.0), bins=4).counts) == 5


def test_map_sample_keeps_every_selected_position():
    selected = np.array([3, 97, 50])
    s = pf.map_sample(100, selected, cap=10, seed=0)
    assert s.size == 10 and set(selected) <= set(s.tolist())
    assert np.array_equal(s, np.sort(s))
    assert np.array_equal(s, pf.map_sample(100, selected, cap=10, seed=0))
    many = np.arange(0, 100, 2)
    assert np.array_equal(pf.map_sample(100, many, cap=10, seed=0), many)  # the selection alone is more
    assert pf.map_sample(5, np.array([1]), cap=50, seed=0).tolist() == [0, 1, 2, 3, 4]


def test_project_2d_recovers_the_leading_principal_plane():
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((300, 2)) * [10.0, 3.0]
    basis, _ = np.linalg.qr(rng.standard_normal((20, 2)))
    X = latent @ basis.T + 5.0 + 0.01 * rng.standard_normal((300, 20))
    xy = pf.project_2d(X, seed=1)
    # The same plane, up to sign, as numpy's exact SVD of the centred rows.
    U, S, _ = np.linalg.svd(X - X.mean(axis=0), full_matrices=False)
    exact = U[:, :2] * S[:2]
    for a in range(2):
        assert abs(np.corrcoef(xy[:, a], exact[:, a])[0, 1]) > 0.999
    assert np.array_equal(xy, pf.project_2d(X, seed=1))
    assert np.allclose(pf.project_2d(sp.csr_matrix(X), seed=1), xy, atol=1e-6)
    assert pf.project_2d(np.ones((1, 3)), seed=0).shape == (1, 2)


def test_top_rows_lists_the_samples_a_column_helps_most():
    K = np.array(
        [
            [0.9, 0.2, 0.0],
            [0.5, 0.9, 0.3],
            [0.5, 0.1, 0.9],
            [0.7, 0.0, 0.0],
        ]
    )[:3, :3]
    assert pf.top_rows(K, np.array([0, 1, 2]), 2) == [[1, 2], [0, 2], [1]]
    assert pf.top_rows(sp.csr_matrix(K), np.array([0, 1, 2]), 2) == [[1, 2], [0, 2], [1]]


def test_best_helper_slots_counts_neighbour_and_random_slots():
    # Row 0's best other helper is 2 (a neighbour slot), row 1's is 0 (random), row 2 has none.
    K = sp.csr_matrix(np.array([[1.0, 0.2, 0.8], [0.9, 1.0, 0.1], [0.0, 0.0, 1.0]]))
    cand = np.array([[0, 2, 1], [1, 2, 0], [2, 0, 1]])
    assert pf.best_helper_slots(K, cand, np.arange(3), k=2) == {"neighbour": 1, "random": 1, "none": 1}


def test_curve_horizon():
    assert curve_horizon(10, 2.0, 99) == 20
    assert curve_horizon(10, 2.0, 15) == 15
    assert curve_horizon(10, 1.0, 99) == 10
    assert curve_horizon(10, 2.0, 5) == 10  # never below the budget's picks (the greedy refuses those)


@pytest.mark.parametrize("stage", ["instruction", "task", "continual"])
def test_select_goes_on_past_the_budget_without_changing_the_subset(stage):
    rng = np.random.default_rng(stage.__len__())
    n = 40
    kernels = {"K": rng.random((n, n)).astype(np.float32), "Q": rng.random((n, 5)), "P": rng.random((n, 6))}
    base = {"data": "d", "model": "m", "out": "o", "stage": stage, "target": "t", "existing": "e"}
    base = {
        k: v
        for k, v in base.items()
        if k not in {"instruction": ("target", "existing"), "task": ("existing",), "continual": ("target",)}[stage]
    }
    cfg = validate_config(base)
    sel, stats = select(cfg, {k: v.copy() for k, v in kernels.items()}, 8, curve=True)
    assert sel.indices.size == 8 and sel.next_indices.size == 8 and stats.curve_picks == 16
    assert not set(sel.indices.tolist()) & set(sel.next_indices.tolist())
    only = validate_config({**base, "selection": {"curve_horizon": 1}})
    alone, _ = select(only, {k: v.copy() for k, v in kernels.items()}, 8, curve=True)
    assert np.array_equal(alone.indices, sel.indices) and np.allclose(alone.gains, sel.gains)
    assert alone.next_indices.size == 0
    if stage == "instruction":
        idx, gains = selection.facility_location(kernels["K"], 16)
        assert np.array_equal(idx, np.concatenate([sel.indices, sel.next_indices]))
