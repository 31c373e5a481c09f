"""The worked example of a new kernel scaling: `kernel.scaling: rank`, one module
(delift_ray/scalings/rank.py) and this test. Nothing else names it."""

import numpy as np

from delift_ray.config import validate_config
from delift_ray.kernel import SCALINGS, assemble_sparse, finish_dense, scale_values
from delift_ray.stages import select


def test_rank_scaling_known_answers():
    assert np.allclose(scale_values(np.array([5.0, -1.0, 100.0, 0.0]), "rank"), [2 / 3, 0.0, 1.0, 1 / 3])
    assert np.allclose(scale_values(np.array([1.0, 1.0, 3.0]), "rank"), [0.25, 0.25, 1.0])  # ties: mean rank
    assert np.allclose(scale_values(np.array([7.0]), "rank"), [0.0])
    assert scale_values(np.array([]), "rank").size == 0


def test_rank_is_a_registered_kernel_option_on_both_kernel_types():
    assert "rank" in SCALINGS
    cfg = validate_config({"data": "d", "model": "m", "out": "o", "kernel": {"scaling": "rank"}})
    rng = np.random.default_rng(0)
    uf = rng.standard_normal((6, 6)).astype(np.float32)
    uf[0, 1] = 50.0  # one outlier: under rank it is just the largest
    ids = [f"s{i}" for i in range(6)]
    dense = finish_dense(uf.copy(), ids, ids, diagonal="drop", scaling=cfg.kernel.scaling)
    assert np.all(np.diag(dense) == 0)  # dropped self pairs take no part and end as 0
    off = dense[~np.eye(6, dtype=bool)]
    assert np.allclose(np.sort(off), np.arange(30) / 29)  # 30 distinct entries: ranks 0, 1/29, ..., 1
    assert dense[0, 1] == 1.0
    r, c = np.nonzero(np.ones((6, 6)))
    sparse = assemble_sparse(r, c, uf[r, c], (6, 6), drop_diagonal=True, scaling="rank").toarray()
    assert np.allclose(sparse, dense)  # same entries whether the kernel is dense or knn
    idx, gains = select("instruction", {"K": dense}, 2, cfg)
    assert len(idx) == 2 and gains[0] >= gains[1] > 0
