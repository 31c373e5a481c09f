"""The cheap baselines and their comparison on tiny inputs with known answers (issue 26 §5)."""

from __future__ import annotations

import numpy as np

from benchmarks import baselines_study as bs
from delift_ray.evaluate.arms import ifd_priority, top_k
from delift_ray.evaluate.similarity import cosine_kernel
from delift_ray.selection import facility_location


def test_ifd_ranks_ratios_above_one_after_every_kept_sample():
    ratio = np.array([0.5, 1.4, 0.9, np.nan, 1.1, 0.7])
    # Kept (<= 1), highest first: 2 (0.9), 5 (0.7), 0 (0.5); then the discarded, smallest ratio first; NaN last.
    assert top_k(ifd_priority(ratio), 6) == [2, 5, 0, 4, 1, 3]


def test_embedding_facility_location_covers_both_clusters_first():
    # Two tight clusters: the first two picks of FL on (cos+1)/2 take one sample from each.
    emb = np.array([[1, 0.0], [0.99, 0.1], [0.98, -0.1], [0, 1.0], [0.1, 0.99]])
    picks, _ = facility_location(cosine_kernel(emb), 2)
    assert {int(p) < 3 for p in picks} == {True, False}


def fake_units(tmp_path, nll):
    """A units dir holding train-/extra- units: ``nll[(arm, seed)] = per-item NLLs``."""
    units = bs.qs.Units(tmp_path)
    for (arm, seed), v in nll.items():
        prefix = "extra" if arm in bs.NEW_ARMS else "train"
        units.save(
            f"{prefix}-clean-b15-{arm.replace(':', '_')}-s{seed}",
            {"pool": "clean", "budget": 0.15, "arm": arm, "seed": seed, "nll": list(v)},
        )
    return units


def test_pool_family_compares_delift_with_each_baseline_and_holm_adjusts(tmp_path):
    rng = np.random.default_rng(0)
    items = 50
    base = rng.normal(2.0, 0.3, items)
    nll = {("random", r): base + rng.normal(0, 0.02, items) for r in range(20)}
    nll |= {(bs.DELIFT, s): base - 0.2 + rng.normal(0, 0.01, items) for s in range(3)}  # clearly better
    nll |= {("longest", s): base + 0.3 + rng.normal(0, 0.01, items) for s in range(3)}  # clearly worse
    nll |= {("knn32", s): base - 0.2 + rng.normal(0, 0.01, items) for s in range(3)}  # same as dense
    rows = bs.pool_family(fake_units(tmp_path, nll), "clean", [0.15], min_seeds=3)
    by = {(r["kind"], r["arm"], r["reference"]): r for r in rows}
    assert by[("DELIFT vs baseline", bs.DELIFT, "longest")]["verdict"] == "better"
    assert by[("DELIFT vs baseline", bs.DELIFT, "longest")]["delta"] > 0.45
    assert by[("vs random", "longest", "random")]["verdict"] == "worse"
    assert by[("vs random", "knn32", "random")]["verdict"] == "better"
    knn = by[("knn vs dense", bs.DELIFT, "knn32")]
    assert knn["verdict"] in ("no better", "inconclusive") and knn["ci_low"] < 0 < knn["ci_high"]
    # Holm over the four comparisons of the family: each adjusted p is at least its raw p.
    assert len(rows) == 4 and all(r["p_holm"] >= r["p"] and not r["interim"] for r in rows)


def test_an_arm_with_fewer_seeds_is_interim(tmp_path):
    rng = np.random.default_rng(1)
    nll = {("random", r): rng.normal(2, 0.1, 10) for r in range(5)}
    nll |= {(bs.DELIFT, s): rng.normal(2, 0.1, 10) for s in range(3)}
    nll[("ifd", 0)] = rng.normal(2, 0.1, 10)
    rows = bs.pool_family(fake_units(tmp_path, nll), "clean", [0.15], min_seeds=3)
    assert rows and all(r["interim"] for r in rows if "ifd" in (r["arm"], r["reference"]))
