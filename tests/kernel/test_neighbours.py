"""neighbours.normalise: no copy of vectors that are already unit length; the same candidates."""

import numpy as np

from delift_ray import neighbours


def test_unit_vectors_are_not_copied_and_candidates_do_not_change():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    unit = neighbours.normalise(x)
    assert unit is not x and np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-6)
    assert neighbours.normalise(unit) is unit  # already normalised: used as it is
    x64 = unit.astype(np.float64)
    assert neighbours.normalise(x64) is not x64  # another dtype: a float32 copy
    zero = unit.copy()
    zero[3] = 0
    assert neighbours.normalise(zero) is zero
    before = x.copy()
    a = neighbours.candidates(x, x, 8, 3, exact_max=1000, seed=0)
    assert np.array_equal(x, before)  # the caller's array is never modified
    assert np.array_equal(a, neighbours.candidates(unit, unit, 8, 3, exact_max=1000, seed=0))


def test_random_excluding_in_chunks_draws_what_one_pass_draws():
    from delift_ray.neighbours import random_excluding

    ex = np.stack([np.random.default_rng(i).permutation(500)[:16] for i in range(300)])
    ex[::7, 3] = -1
    whole = random_excluding(ex, 500, 4, np.random.default_rng(5), chunk=len(ex))
    chunked = random_excluding(ex, 500, 4, np.random.default_rng(5), chunk=37)
    assert (whole == chunked).all()
    assert all(len(set(r)) == 4 and not set(r) & set(e) for r, e in zip(chunked, ex))
