"""planning.plan_blocks (dense), vectorised: the same plan as the per-pair loop it replaced."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from delift_ray import planning
from delift_ray.data import sample_id
from delift_ray.stages import STAGE_MATRICES, MatrixSpec


def reference_plan_blocks(matrices, ids, stored, stored_baselines, *, fingerprint, block_size, baseline_chunk=256):
    """The per-pair Python loop plan_blocks used to be (kept here as the definition)."""
    plan = planning.Plan()
    planned = set()
    needs_baseline = {}
    for m in matrices:
        H, E = ids[m.helped], ids[m.example]
        needs_baseline.setdefault(m.helped, set()).update(range(len(H)))
        for e0 in range(0, len(E), block_size):
            for h0 in range(0, len(H), block_size):
                hs, es = [], []
                for h in range(h0, min(h0 + block_size, len(H))):
                    for e in range(e0, min(e0 + block_size, len(E))):
                        pair = (H[h], E[e])
                        if pair in planned:
                            continue
                        planned.add(pair)
                        plan.pairs_total += 1
                        if pair in stored:
                            plan.pairs_reused += 1
                            continue
                        hs.append(h)
                        es.append(e)
                if hs:
                    key = planning.block_key(fingerprint, [H[h] for h in hs], [E[e] for e in es])
                    plan.blocks.append(planning.PlannedBlock(key, m.helped, m.example, np.array(hs), np.array(es), (m.example, e0)))
    seen = set()
    for set_name, idx in needs_baseline.items():
        todo = []
        for i in sorted(idx):
            sid = ids[set_name][i]
            if sid in seen:
                continue
            seen.add(sid)
            plan.baselines_total += 1
            if sid in stored_baselines:
                plan.baselines_reused += 1
            else:
                todo.append(i)
        plan.baseline[set_name] = [np.array(todo[k : k + baseline_chunk]) for k in range(0, len(todo), baseline_chunk)]
    return plan


def assert_same_plan(a, b):
    assert (a.pairs_total, a.pairs_reused, a.baselines_total, a.baselines_reused) == \
        (b.pairs_total, b.pairs_reused, b.baselines_total, b.baselines_reused)
    assert len(a.blocks) == len(b.blocks)
    for x, y in zip(a.blocks, b.blocks):
        assert (x.key, x.helped_set, x.example_set, x.group) == (y.key, y.helped_set, y.example_set, y.group)
        assert np.array_equal(x.h_idx, y.h_idx) and np.array_equal(x.e_idx, y.e_idx)
    assert a.baseline.keys() == b.baseline.keys()
    for n in a.baseline:
        assert [c.tolist() for c in a.baseline[n]] == [c.tolist() for c in b.baseline[n]]


def hex_ids(prefix, n):
    return [sample_id(prefix, str(i)) for i in range(n)]


@pytest.mark.parametrize("stage", ["instruction", "task", "continual"])
def test_dense_plan_equals_the_per_pair_loop(stage):
    rng = np.random.default_rng(0)
    pool = hex_ids("p", 23)
    # Sets that share samples with the pool: their shared pairs are planned once.
    ids = {"pool": pool, "target": pool[:4] + hex_ids("t", 6), "existing": pool[5:8] + hex_ids("e", 5)}
    ids = {n: v for n, v in ids.items() if n in {m.helped for m in STAGE_MATRICES[stage]} | {m.example for m in STAGE_MATRICES[stage]}}
    every = [(h, e) for m in STAGE_MATRICES[stage] for h in ids[m.helped] for e in ids[m.example]]
    stored = {every[i] for i in rng.choice(len(every), len(every) // 3, replace=False)}
    stored.add(("not-in-run", pool[0]))  # a cache may hold pairs of other runs
    stored_base = set(rng.choice(pool, 5, replace=False).tolist())
    args = dict(fingerprint="fp", block_size=5, baseline_chunk=7)
    want = reference_plan_blocks(STAGE_MATRICES[stage], ids, stored, stored_base, **args)
    index = planning.IdIndex(ids)
    hs, es = zip(*sorted(stored))
    keys = planning.stored_pair_keys(pa.table({"helped_id": list(hs), "example_id": list(es)}), index)
    assert_same_plan(planning.plan_blocks(STAGE_MATRICES[stage], ids, keys, stored_base, index=index, **args), want)
    assert_same_plan(planning.plan_blocks(STAGE_MATRICES[stage], ids, stored, stored_base, **args), want)  # a set of pairs


def test_block_keys_of_ids_of_unequal_length_equal_block_key():
    ids = {"pool": ["a", "bb", "ccc", "d", "eeeee"]}
    want = reference_plan_blocks((MatrixSpec("K", "pool", "pool"),), ids, set(), set(), fingerprint="f", block_size=2)
    assert_same_plan(planning.plan_blocks((MatrixSpec("K", "pool", "pool"),), ids, set(), set(), fingerprint="f", block_size=2), want)
