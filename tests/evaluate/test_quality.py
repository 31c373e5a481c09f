"""Kernel variants, baselines and the vs-random statistics on a real run (tiny model, real engine).

One real ``select`` run scores a 12-sample pool; the kernel variants and baselines are then
re-selected from its stored shards (no re-scoring) and checked against the job itself, and
one real ``delift-ray evaluate`` run fine-tunes every arm and writes the verdicts.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from delift_ray.errors import DeliftError
from delift_ray.job import run
from tests.helpers import write_rows

pytestmark = [pytest.mark.engine, pytest.mark.ray]

ENGINE = {"dtype": "float32", "max_model_len": 256, "block_size": 32, "kv_cache_space_gib": 1}
TOPICS = [
    "tea",
    "coffee",
    "the sea",
    "Paris",
    "lists",
    "sleep",
    "running",
    "the sky",
    "a poem",
    "grammar",
    "bread",
    "rain",
]
POOL = [
    {"prompt": f"Tell me one fact about {t}.", "response": f"A short fact about {t}: it is item {i}."}
    for i, t in enumerate(TOPICS)
]
HELD = [
    {"prompt": f"Say something about {t}.", "response": f"Something about {t}, number {i}."}
    for i, t in enumerate(["snow", "cats", "maps", "songs"])
]


@pytest.fixture(scope="module")
def scored_run(ray_cluster, tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("quality")
    write_rows(d / "pool.jsonl", POOL)
    write_rows(d / "held.jsonl", HELD)
    cfg = {
        "data": str(d / "pool.jsonl"),
        "model": str(tiny_model_dir),
        "out": str(d / "run"),
        "budget": 4,
        "engine": ENGINE,
        "scoring": {"block_size": 6},
    }
    res = run(cfg, progress=False)
    return d, cfg, res


def test_variants_and_baselines_from_stored_shards(scored_run):
    from delift_ray.evaluate.arms import (
        Variant,
        arm_subsets,
        baseline_distances,
        delift_variant,
        pool_pair_scores,
        raw_matrix,
        run_store,
    )
    from delift_ray.evaluate.inputs import load_run

    d, cfg, res = scored_run
    r = load_run(d / "run")
    store = run_store(r)
    uf = raw_matrix(r, "pool", "pool", store)
    assert uf.shape == (12, 12) and not np.isnan(uf).any()
    own, helps = pool_pair_scores(r, store)
    assert np.allclose(own, np.diag(uf))
    # The default kernel (drop-minmax) re-selected from the shards is the run's own selection.
    assert (r.config["kernel"]["diagonal"], r.config["kernel"]["scaling"]) == ("drop", "minmax")
    assert delift_variant(r, Variant("drop", "minmax"), 4, store) == r.selected
    # A run with other kernel options over the same cache (nothing re-scored) equals that variant.
    keep = run(
        {**cfg, "out": str(d / "run-keep"), "cache": str(d / "run"), "kernel": {"diagonal": "keep", "scaling": "clip"}},
        progress=False,
    )
    assert keep.counts["pairs_scored"] == 0
    where = {sid: i for i, sid in enumerate(r.pool.sample_ids)}
    assert [where[s] for s in keep.selected_ids] == delift_variant(r, Variant("keep", "clip"), 4, store)
    arms = arm_subsets(r, 4, [Variant("drop", "minmax")], ("self_utility", "hardness", "example_utility", "longest"))
    assert arms["self_utility"] == list(np.argsort(-np.diag(uf), kind="stable")[:4])
    assert arms["hardness"] == list(np.argsort(-baseline_distances(r, store), kind="stable")[:4])
    off = np.where(np.eye(12, dtype=bool), np.nan, uf)  # drop-minmax's first-pick gain, by hand
    assert np.allclose(helps, np.nansum(off - np.nanmin(off), axis=0))
    assert arms["example_utility"] == list(np.argsort(-helps, kind="stable")[:4])
    lengths = np.array([len(x) for x in r.pool.responses])
    assert arms["longest"] == list(np.argsort(-lengths, kind="stable")[:4])
    # ifd needs the prompt-free baselines, which this run did not score: a clear error, not a ranking of NaNs.
    with pytest.raises(DeliftError, match="baseline ifd: .* 0 of 12"):
        arm_subsets(r, 4, [], ("ifd",))
    assert len(set(arms["delift:drop-minmax"])) == 4


def test_evaluate_with_variants_baselines_and_statistics(scored_run, capsys):
    from delift_ray.evaluate.cli import add_evaluate_parser, run_evaluate_command

    d, _, _ = scored_run
    parser = argparse.ArgumentParser(prog="delift-ray")
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "evaluate",
            "--run",
            str(d / "run"),
            "--eval-data",
            str(d / "held.jsonl"),
            "--variants",
            "drop-minmax,keep-clip",
            "--train-seeds",
            "2",
            "--seeds",
            "3",
            "--steps",
            "2",
            "--max-length",
            "48",
            "--max-new-tokens",
            "4",
            "--icl-examples",
            "2",
            "--icl-example-tokens",
            "16",
            "--bootstrap-resamples",
            "200",
            "--no-progress",
        ]
    )
    assert run_evaluate_command(args) == 0
    rep = json.loads((d / "run" / "eval" / "report.json").read_text())
    rows = {r["selection"]: r for r in rep["rows"]}
    assert list(rows) == [
        "initial",
        "delift",
        "delift:drop-minmax",
        "delift:keep-clip",
        "self_utility",
        "hardness",
        "example_utility",
        "longest",
        "delift_se",
        "random",
        "full",
    ]
    assert rows["delift"]["n_seeds"] == 2 and rows["random"]["n_seeds"] == 3 and rows["hardness"]["n_seeds"] == 2
    assert all(t["steps"] == 2 for r in rows.values() for t in r["train"])
    # drop-minmax is the run's own kernel: the same subset, the same seeds, the same numbers.
    assert len(rep["arms"]["delift:keep-clip"]) == 4 == len(rep["arms"]["self_utility"])
    assert rows["delift:drop-minmax"]["mean"]["nll"] == pytest.approx(rows["delift"]["mean"]["nll"], rel=1e-5)
    vr = {c["selection"]: c for c in rep["vs_random"]}
    assert set(vr) == {
        "delift",
        "delift:drop-minmax",
        "delift:keep-clip",
        "self_utility",
        "hardness",
        "example_utility",
        "longest",
        "delift_se",
    }
    for c in vr.values():
        assert c["verdict"] in ("better than random", "no better than random", "inconclusive")
        assert c["ci_low"] <= c["ci_high"] and c["n_random"] == 3 and c["n_items"] == 4
        assert 0 < c["p_rank"] <= 1 and c["p_rank"] >= 1 / 4 and c["p_boot_holm"] >= c["p_boot"]
        assert math.isclose(
            c["delta"], rows["random"]["mean"]["nll"] - rows[c["selection"]]["mean"]["nll"], abs_tol=1e-9
        )
    md = (d / "run" / "eval" / "report.md").read_text()
    assert "Against random" in md and "keep-clip" in md and "Against random on the held-out margin" in md
    assert {c["selection"] for c in rep["vs_random_margin"]} == set(vr)


def test_min_prompt_gain_on_a_real_run(scored_run):
    from delift_ray.evaluate.arms import Variant, arm_subsets, baseline_distances, delift_variant, run_store
    from delift_ray.evaluate.inputs import load_run
    from delift_ray.gate import prompt_free_id
    from delift_ray.steps.gate import prompt_gains

    d, cfg, res = scored_run
    # A threshold below every gain: the prompt-free baselines are scored (12), nothing else, nothing excluded.
    low = run(
        {**cfg, "out": str(d / "run-pg-low"), "cache": str(d / "run"), "selection": {"min_prompt_gain": -1e9}},
        progress=False,
    )
    assert (low.counts["pairs_scored"], low.counts["baselines_scored"]) == (0, 12)
    assert low.counts["excluded_low_prompt_gain"] == 0 and low.selected_ids == res.selected_ids
    r = load_run(d / "run")
    # Now the cache holds them: the IFD-style ratio d(i, no example) / d(response | empty prompt), highest first.
    free = baseline_distances(r, run_store(r), [prompt_free_id(x) for x in r.pool.responses])
    ratio = baseline_distances(r, run_store(r)) / free
    assert np.isfinite(ratio).all()
    # IFD discards ratios above 1: they rank after every ratio <= 1.
    key = np.where(ratio > 1, -ratio, ratio)
    assert arm_subsets(r, 4, [], ("ifd",))["ifd"] == list(np.argsort(-key, kind="stable")[:4])
    gains = prompt_gains(r.pool.sample_ids, [prompt_free_id(x) for x in r.pool.responses], run_store(r))
    assert np.isfinite(gains).all() and len(set(gains.tolist())) == 12
    thr = float(np.sort(gains)[6])  # the six lowest gains fall below it
    excluded = {s for s, g in zip(r.pool.sample_ids, gains) if g < thr}
    cut = run(
        {**cfg, "out": str(d / "run-pg"), "cache": str(d / "run"), "selection": {"min_prompt_gain": thr}},
        progress=False,
    )
    assert (cut.counts["pairs_scored"], cut.counts["baselines_scored"]) == (0, 0)
    assert cut.counts["excluded_low_prompt_gain"] == len(excluded) == 6
    assert not excluded & set(cut.selected_ids) and len(cut.selected_ids) == 4
    if excluded & set(res.selected_ids):
        assert cut.selected_ids != res.selected_ids
    # evaluate's re-selection from the shards applies the run's exclusion as the job did.
    rc = load_run(d / "run-pg")
    where = {sid: i for i, sid in enumerate(rc.pool.sample_ids)}
    assert delift_variant(rc, Variant("drop", "minmax"), 4, run_store(rc)) == [where[s] for s in cut.selected_ids]


def test_noise_gate_on_a_real_run(scored_run):
    """selection.noise_gate on the tiny model: only the mismatched baselines are new, the
    exclusions are what the pure gate computes from the stored distances, samples.parquet
    says why, nothing excluded is picked, and evaluate re-selects as the job did."""
    import pyarrow.parquet as pq

    from delift_ray.evaluate.arms import Variant, delift_variant, run_store
    from delift_ray.evaluate.inputs import load_run
    from delift_ray.gate import contrastive_gate, mismatched_ids
    from delift_ray.storage import baseline_lookup

    d, cfg, res = scored_run
    # A random model's prompts predict nothing: at the default fdr the gate excludes every
    # sample, and the job says so (after scoring the 12 x 4 mismatched baselines).
    with pytest.raises(DeliftError, match="the noise gate excluded all 12 pool samples"):
        run(
            {**cfg, "out": str(d / "run-gate-0"), "cache": str(d / "run"), "selection": {"noise_gate": "contrastive"}},
            progress=False,
        )
    r0 = load_run(d / "run")
    dist = baseline_lookup(run_store(r0))
    mm = mismatched_ids(r0.pool, 4)
    assert len(set(mm.ravel()) & set(dist)) == 12 * 4
    d_own, d_mm = np.array([dist[s] for s in r0.pool.sample_ids]), np.vectorize(dist.get, otypes=[float])(mm)
    # q-values do not depend on the fdr: a lenient fdr between the two lowest q levels keeps some, not all.
    levels = np.unique(contrastive_gate(d_own, d_mm, fdr=0.5).q_value)
    assert levels.size >= 2
    fdr = float(levels[:2].mean())
    want = contrastive_gate(d_own, d_mm, fdr=fdr)
    excluded = {s for s, k in zip(r0.pool.sample_ids, want.keep) if not k}
    assert 0 < len(excluded) < 12

    gated = {
        **cfg,
        "out": str(d / "run-gate"),
        "cache": str(d / "run"),
        "selection": {"noise_gate": "contrastive", "gate_fdr": fdr},
    }
    g = run(gated, progress=False)
    assert (g.counts["pairs_scored"], g.counts["baselines_scored"]) == (0, 0)  # scored by the refused run
    assert g.counts["excluded_noise_gate"] == len(excluded) and g.counts["untested_noise_gate"] == 0
    r = load_run(d / "run-gate")
    assert len(r.pool) == 12  # excluded samples stay pool samples
    samples = pq.read_table(d / "run-gate" / "samples.parquet").to_pylist()
    by_id = {x["sample_id"]: x for x in samples if x["set"] == "pool"}
    assert {s for s, x in by_id.items() if x["status"] == "excluded_noise_gate"} == excluded
    assert np.allclose([by_id[s]["gate_gain"] for s in r.pool.sample_ids], want.gain)
    assert not excluded & set(g.selected_ids) and len(g.selected_ids) == min(4, 12 - len(excluded))
    where = {sid: i for i, sid in enumerate(r.pool.sample_ids)}
    assert delift_variant(r, Variant("drop", "minmax"), 4, run_store(r)) == [where[s] for s in g.selected_ids]


def test_noise_gate_with_similar_donors_on_a_real_run(scored_run):
    """selection.gate_donors: similar on the tiny model: the job scores exactly the similar
    donors' mismatched baselines it lacks, and excludes what the pure gate computes from them."""
    from delift_ray.evaluate.arms import run_store
    from delift_ray.evaluate.inputs import load_run
    from delift_ray.gate import contrastive_gate, mismatched_ids
    from delift_ray.storage import baseline_lookup

    d, cfg, res = scored_run
    r0 = load_run(d / "run")
    before = set(baseline_lookup(run_store(r0)))
    mm = mismatched_ids(r0.pool, 4, "similar")
    new = {s for s in mm.ravel() if s is not None} - before
    selection = {"noise_gate": "contrastive", "gate_donors": "similar", "gate_fdr": 0.9}
    out = d / "run-gate-similar"
    try:
        g = run({**cfg, "out": str(out), "cache": str(d / "run"), "selection": selection}, progress=False)
    except DeliftError as exc:  # a random model's prompts predict nothing; the job may keep none
        assert "the noise gate excluded all 12 pool samples" in str(exc)
        g = None
    dist = baseline_lookup(run_store(r0))
    assert new <= set(dist)  # every similar donor's baseline was scored, by the run or before it
    d_own = np.array([dist[s] for s in r0.pool.sample_ids])
    d_mm = np.vectorize(lambda s: np.nan if s is None else dist[s], otypes=[float])(mm)
    want = contrastive_gate(d_own, d_mm, fdr=0.9)
    if g is None:
        assert not want.keep.any()
        return
    assert g.counts["baselines_scored"] == len(new)
    assert g.counts["excluded_noise_gate"] == int((~want.keep).sum())
    kept = {s for s, k in zip(r0.pool.sample_ids, want.keep) if k}
    assert set(g.selected_ids) <= kept
