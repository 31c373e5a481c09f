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
                    plan.blocks.append(
                        planning.PlannedBlock(key, m.helped, m.example, np.array(hs), np.array(es), (m.example, e0))
                    )
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
    assert (a.pairs_total, a.pairs_reused, a.baselines_total, a.baselines_reused) == (
        b.pairs_total,
        b.pairs_reused,
        b.baselines_total,
        b.baselines_reused,
    )
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
    ids = {
        n: v
        for n, v in ids.items()
        if n in {m.helped for m in STAGE_MATRICES[stage]} | {m.example for m in STAGE_MATRICES[stage]}
    }
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
    assert_same_plan(
        planning.plan_blocks(STAGE_MATRICES[stage], ids, stored, stored_base, **args), want
    )  # a set of pairs


def test_block_keys_of_ids_of_unequal_length_equal_block_key():
    ids = {"pool": ["a", "bb", "ccc", "d", "eeeee"]}
    want = reference_plan_blocks((MatrixSpec("K", "pool", "pool"),), ids, set(), set(), fingerprint="f", block_size=2)
    assert_same_plan(
        planning.plan_blocks((MatrixSpec("K", "pool", "pool"),), ids, set(), set(), fingerprint="f", block_size=2), want
    )


def reference_plan_knn(matrices, candidates, ids, stored_keys, stored_baselines, *, index, fingerprint, block_size):
    """plan_knn before its int32 positions and one-sort repeat check (the definition)."""
    plan = planning.Plan()
    G = np.int64(index.size)
    parts = []
    for m in matrices:
        C = candidates[m.name]
        h = np.repeat(np.arange(C.shape[0], dtype=np.int64), C.shape[1])
        e = C.reshape(-1).astype(np.int64)
        ok = e >= 0
        h, e = h[ok], e[ok]
        parts.append((m, h, e, index.gidx[m.helped][h] * G + index.gidx[m.example][e]))
    all_keys = np.concatenate([p[3] for p in parts])
    first = np.zeros(all_keys.size, dtype=bool)
    first[np.unique(all_keys, return_index=True)[1]] = True
    start = 0
    for m, h, e, keys in parts:
        keep = first[start : start + keys.size]
        start += keys.size
        h, e, keys = h[keep], e[keep], keys[keep]
        plan.pairs_total += int(keys.size)
        reused = planning.isin_sorted(keys, stored_keys)
        plan.pairs_reused += int(reused.sum())
        h, e = h[~reused], e[~reused]
        order = np.lexsort((h, e))
        h, e = h[order], e[order]
        for s in range(0, h.size, block_size**2):
            bh, be = h[s : s + block_size**2], e[s : s + block_size**2]
            key = planning._array_block_key(
                fingerprint, f"{m.helped}>{m.example}", index.raw[m.helped][bh], index.raw[m.example][be]
            )
            plan.blocks.append(planning.PlannedBlock(key, m.helped, m.example, bh, be))
    planning.plan_baselines(plan, matrices, ids, index, stored_baselines, 256)
    return plan


@pytest.mark.parametrize("stage,repeat", [("instruction", False), ("instruction", True), ("task", False)])
def test_knn_plan_equals_the_reference(stage, repeat):
    rng = np.random.default_rng(3)
    pool = hex_ids("p", 40)
    ids = {"pool": pool, "target": pool[:5] + hex_ids("t", 7)}
    ids = {n: ids[n] for n in {m.helped for m in STAGE_MATRICES[stage]} | {m.example for m in STAGE_MATRICES[stage]}}
    cand = {
        m.name: np.stack([rng.choice(len(ids[m.example]), 6, replace=False) for _ in ids[m.helped]])
        for m in STAGE_MATRICES[stage]
    }
    cand["K"][3, 2] = -1  # an empty slot
    if repeat:
        cand["K"][7, 1] = cand["K"][7, 0]  # a pair named twice in one row
    index = planning.IdIndex(ids)
    gk = index.gidx["pool"]
    stored = np.unique(gk[:10] * index.size + gk[cand["K"][:10, 0]])
    args = dict(index=index, fingerprint="fp", block_size=4)
    got = planning.plan_knn(STAGE_MATRICES[stage], cand, ids, stored, set(pool[:3]), **args)
    assert_same_plan(got, reference_plan_knn(STAGE_MATRICES[stage], cand, ids, stored, set(pool[:3]), **args))
