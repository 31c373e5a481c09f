"""kernel.type knn: candidates, planning, embeddings, estimate, and one real run.

The end-to-end test goes through a real local Ray cluster, the real vLLM CPU engine and
the tiny random Llama (embeddings from the same model, mean-pooled by vLLM's pooling
runner on a Ray actor, checked against the transformers route). The kernel's assembly from
shards is tested in tests/kernel/test_assembly.py.
"""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from delift_ray import neighbours, planning
from delift_ray.kernel import assemble_sparse
from delift_ray.stages import STAGE_MATRICES
from tests.helpers import write_rows


def clustered(n, d=16, centers=4, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)) * 5
    return (c[rng.integers(0, centers, n)] + rng.normal(size=(n, d))).astype(np.float32)


def ids_of(prefix, n):
    return [f"{prefix}{i:015x}" for i in range(n)]


# --------------------------------------------------------------------------- candidates


@pytest.mark.parametrize("n,k,r", [(50, 4, 1), (200, 8, 4), (9, 4, 10), (6, 10, 2)])
def test_candidates_rows_are_k_plus_r_distinct(n, k, r):
    x = clustered(n)
    c = neighbours.candidates(x, x, k, r, exact_max=10**6, seed=3)
    kk = min(k, n)
    rr = min(r, n - kk)
    assert c.shape == (n, kk + rr)
    assert c.min() >= 0 and c.max() < n
    assert all(len(set(row)) == row.size for row in c)
    # the first k are the exact nearest neighbours by cosine, the sample itself first
    xn = neighbours.normalise(x)
    sims = xn @ xn.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
    assert np.array_equal(np.sort(c[:, :kk], axis=1), np.sort(top, axis=1)) or kk == n
    assert (c[:, 0] == np.arange(n)).all()


def test_candidates_are_seeded():
    x = clustered(300)
    a = neighbours.candidates(x, x, 5, 3, exact_max=10**6, seed=1)
    b = neighbours.candidates(x, x, 5, 3, exact_max=10**6, seed=1)
    c = neighbours.candidates(x, x, 5, 3, exact_max=10**6, seed=2)
    assert np.array_equal(a, b)
    assert np.array_equal(a[:, :5], c[:, :5]) and not np.array_equal(a[:, 5:], c[:, 5:])


def test_random_candidates_are_uniform_over_the_rest():
    rng = np.random.default_rng(0)
    exclude = np.tile(np.array([[0, 3, 7]]), (20000, 1))
    out = neighbours.random_excluding(exclude, 10, 2, rng)
    counts = np.bincount(out.ravel(), minlength=10)
    assert counts[[0, 3, 7]].sum() == 0
    assert np.allclose(counts[[1, 2, 4, 5, 6, 8, 9]] / out.size, 1 / 7, atol=0.01)


def test_cross_set_candidates_index_the_example_set():
    pool, target = clustered(40, seed=1), clustered(5, seed=2)
    q = neighbours.candidates(target, pool, 4, 1, exact_max=10**6, seed=0)  # Q: each target's nearest pool samples
    assert q.shape == (5, 5) and q.max() < 40
    sims = neighbours.normalise(target) @ neighbours.normalise(pool).T
    assert np.array_equal(np.sort(q[:, :4], axis=1), np.sort(np.argsort(-sims, axis=1)[:, :4], axis=1))


def test_approximate_index_beyond_exact_max_has_high_recall():
    x = clustered(3000, d=32, centers=20)
    exact = neighbours.candidates(x, x, 8, 0, exact_max=10**6, seed=0)
    approx = neighbours.candidates(x, x, 8, 0, exact_max=1000, seed=0)
    recall = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(exact, approx)])
    assert recall > 0.9, recall
    assert all(len(set(row)) == row.size for row in approx)


# --------------------------------------------------------------------------- planning


def test_plan_knn_counts_blocks_and_dedup_across_matrices():
    pool_ids, target_ids = ids_of("p", 30), ids_of("p", 2) + ids_of("t", 3)  # two targets are pool samples
    ids = {"pool": pool_ids, "target": target_ids}
    rng = np.random.default_rng(0)
    candK = np.stack([rng.choice(30, 6, replace=False) for _ in range(30)])
    candQ = np.stack([rng.choice(30, 6, replace=False) for _ in range(5)])
    index = planning.IdIndex(ids)
    assert index.size == 33
    plan = planning.plan_knn(
        STAGE_MATRICES["task"],
        {"K": candK, "Q": candQ},
        ids,
        np.empty(0, np.int64),
        set(),
        index=index,
        fingerprint="fp",
        block_size=4,
    )
    want = {(pool_ids[h], pool_ids[e]) for h in range(30) for e in candK[h]}
    want |= {(target_ids[q], pool_ids[e]) for q in range(5) for e in candQ[q]}
    got = [(ids[b.helped_set][h], ids[b.example_set][e]) for b in plan.blocks for h, e in zip(b.h_idx, b.e_idx)]
    assert len(got) == len(set(got)) == len(want) == plan.pairs_total and set(got) == want
    assert plan.pairs_total < 30 * 6 + 5 * 6  # the shared targets' pairs were planned once
    assert all(b.size <= 16 for b in plan.blocks)
    assert plan.baselines_total == 33  # 30 pool + 3 targets not in the pool
    # example-major within a block: consecutive pairs share the example
    b = plan.blocks[0]
    assert (np.diff(b.e_idx) >= 0).all()


def test_plan_knn_reuses_stored_pairs_and_is_deterministic():
    ids = {"pool": ids_of("p", 20)}
    rng = np.random.default_rng(1)
    cand = np.stack([rng.choice(20, 5, replace=False) for _ in range(20)])
    index = planning.IdIndex(ids)
    first = planning.plan_knn(
        STAGE_MATRICES["instruction"],
        {"K": cand},
        ids,
        np.empty(0, np.int64),
        set(),
        index=index,
        fingerprint="fp",
        block_size=3,
    )
    stored_blocks = first.blocks[::2]
    table = pa.table(
        {
            "helped_id": [ids["pool"][h] for b in stored_blocks for h in b.h_idx] + ["x", ids["pool"][0]],
            "example_id": [ids["pool"][e] for b in stored_blocks for e in b.e_idx] + [ids["pool"][0], "y"],
        }
    )
    keys = planning.stored_pair_keys(table, index)
    assert keys.size == sum(b.size for b in stored_blocks)  # ids outside the run are ignored
    again = planning.plan_knn(
        STAGE_MATRICES["instruction"],
        {"K": cand},
        ids,
        keys,
        set(ids["pool"][:7]),
        index=index,
        fingerprint="fp",
        block_size=3,
    )
    assert again.pairs_total == first.pairs_total == 100
    assert again.pairs_reused == keys.size and again.pairs_to_score == 100 - keys.size
    assert again.baselines_reused == 7 and again.baselines_to_score == 13
    same = planning.plan_knn(
        STAGE_MATRICES["instruction"],
        {"K": cand},
        ids,
        np.empty(0, np.int64),
        set(),
        index=index,
        fingerprint="fp",
        block_size=3,
    )
    assert [b.key for b in same.blocks] == [b.key for b in first.blocks]


def test_plan_knn_drops_empty_slots():
    ids = {"pool": ids_of("p", 4)}
    cand = np.array([[0, 1], [1, -1], [2, 3], [-1, -1]])
    plan = planning.plan_knn(
        STAGE_MATRICES["instruction"],
        {"K": cand},
        ids,
        np.empty(0, np.int64),
        set(),
        index=planning.IdIndex(ids),
        fingerprint="fp",
        block_size=8,
    )
    assert plan.pairs_total == 5 and plan.pairs_to_score == 5


# --------------------------------------------------------------------------- sparse assembly and the guard


def test_sparse_kernel_selects_with_the_selection_module():
    from delift_ray.selection import facility_location

    rng = np.random.default_rng(0)
    x = clustered(60)
    cand = neighbours.candidates(x, x, 6, 2, exact_max=10**6, seed=0)
    rows = np.repeat(np.arange(60), cand.shape[1])
    M = assemble_sparse(rows, cand.ravel(), rng.normal(size=rows.size).astype(np.float32), (60, 60))
    idx, gains = facility_location(M, 10)
    assert len(set(idx.tolist())) == 10 and np.all(np.diff(gains) <= 1e-6)


# --------------------------------------------------------------------------- real end to end


POOL16 = [
    {"prompt": p, "response": r}
    for p, r in [
        ("What is two plus two?", "Two plus two is four."),
        ("What is three plus five?", "Three plus five is eight."),
        ("What is ten minus one?", "Ten minus one is nine."),
        ("What is six times two?", "Six times two is twelve."),
        ("Name a primary colour.", "Red is a primary colour."),
        ("Name a warm colour.", "Orange is a warm colour."),
        ("Name a cold colour.", "Blue is a cold colour."),
        ("What colour is grass?", "Grass is green."),
        ("Translate to French: good morning", "Bonjour."),
        ("Translate to French: thank you", "Merci."),
        ("Translate to German: thank you", "Danke."),
        ("Translate to Spanish: hello", "Hola."),
        ("Name a mammal that swims.", "A dolphin."),
        ("Name a bird that cannot fly.", "A penguin."),
        ("Name a large cat.", "A tiger."),
        ("Name an insect that makes honey.", "A bee."),
    ]
]


@pytest.mark.engine
@pytest.mark.ray
def test_knn_job_end_to_end_and_resume(ray_cluster, tiny_model_dir, tmp_path):
    from delift_ray.job import run

    data = tmp_path / "pool.jsonl"
    write_rows(data, POOL16)
    cfg = {
        "data": str(data),
        "model": str(tiny_model_dir),
        "out": str(tmp_path / "out"),
        "budget": 4,
        "engine": {"dtype": "float32", "max_model_len": 256, "block_size": 32, "kv_cache_space_gib": 1},
        "scoring": {"block_size": 4},
        "kernel": {"type": "knn", "k": 4, "random": 1},
    }
    r = run(cfg, progress=False)
    c = r.counts
    assert c["samples"] == 16 and c["kernel"] == "knn"
    assert c["pairs_total"] == 16 * (4 + 1) == c["pairs_scored"]  # rows are distinct: nothing to de-duplicate
    assert c["embedded"] == 16 and c["embeddings_reused"] == 0
    shards = pq.read_table(os.path.join(r.out, "utility")).to_pandas()
    assert len(shards) == 80 and not shards.duplicated(["helped_id", "example_id"]).any()
    assert (shards.groupby("helped_id").size() == 5).all()
    assert (shards.helped_id == shards.example_id).sum() == 16  # each sample is its own nearest neighbour
    assert 0 < c["kernel_nnz"]["K"] <= 80
    assert len(r.selected_ids) == 4 == len(set(r.selected_ids))
    assert all(g1 >= g2 for g1, g2 in zip(r.gains, r.gains[1:]))
    meta = json.load(open(os.path.join(r.out, "run.json")))
    assert meta["config"]["kernel"]["type"] == "knn" and "embed_s" in meta["timings"]
    # Embeddings came from vLLM's pooling runner on a Ray actor; they equal the transformers route.
    assert c["embedding_backend"] == "vllm"
    from delift_ray import embedder

    samples = pq.read_table(os.path.join(r.out, "samples.parquet")).to_pylist()
    fp = embedder.embedding_fingerprint(str(tiny_model_dir), 256, "vllm", "float32")
    # run.json names the embedder: steps[name=embed].encoder
    enc = next(s for s in meta["steps"] if s["name"] == "embed")["encoder"]
    assert enc["name"] == "model" and enc["source"] == str(tiny_model_dir) and enc["backend"] == "vllm"
    assert (enc["fingerprint"], enc["max_length"], enc["dtype"], enc["dim"]) == (fp, 256, "float32", 256)

    def nothing_missing(todo):
        raise AssertionError(f"{todo.size} embeddings were not stored by the job")

    got, _ = embedder.embed_samples(
        [x["sample_id"] for x in samples], embedder.EmbeddingStore(r.out, fp), nothing_missing
    )
    texts = [embedder.sample_text(x["prompt"], x["response"]) for x in samples]
    spec = embedder.encoder_spec("model", model=str(tiny_model_dir), max_length=256)
    want = embedder.TransformersEmbedder(spec, device="cpu").embed(texts)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4

    again = run(cfg, progress=False)  # everything is stored: no engine, no embedding pass
    assert again.counts["pairs_scored"] == 0 and again.counts["pairs_reused"] == 80
    assert again.counts["embedded"] == 0 and again.counts["embeddings_reused"] == 16
    assert again.selected_ids == r.selected_ids

    # selection.min_prompt_gain on the sparse kernel: prompt-free baselines only, never embedded or paired.
    from delift_ray.gate import prompt_free_id
    from delift_ray.steps.gate import prompt_gains
    from delift_ray.storage import ShardStore

    low = run(
        {**cfg, "out": str(tmp_path / "pg-low"), "cache": r.out, "selection": {"min_prompt_gain": -1e9}}, progress=False
    )
    assert (low.counts["pairs_scored"], low.counts["baselines_scored"], low.counts["embedded"]) == (0, 16, 0)
    assert low.counts["excluded_low_prompt_gain"] == 0 and low.selected_ids == r.selected_ids
    pool = [x for x in samples if x["set"] == "pool"]
    gains = prompt_gains(
        [x["sample_id"] for x in pool],
        [prompt_free_id(x["response"]) for x in pool],
        ShardStore(r.out, meta["model"]["fingerprint"]),
    )
    thr = float(np.sort(gains)[8])
    excluded = {x["sample_id"] for x, g in zip(pool, gains) if g < thr}
    cut = run(
        {**cfg, "out": str(tmp_path / "pg"), "cache": r.out, "selection": {"min_prompt_gain": thr}}, progress=False
    )
    assert cut.counts["excluded_low_prompt_gain"] == len(excluded) == 8 and cut.counts["baselines_scored"] == 0
    assert len(cut.selected_ids) == 4 and not excluded & set(cut.selected_ids)
    # The report of a knn run: the map from the embedder's vectors, where each best helper came
    # from, and the gate's exclusions.
    from delift_ray.report.data import load
    from tests.browser import report_sections

    assert report_sections(cut.out) == ["summary", "curve", "utilities", "map", "selected", "left-out"]
    shown = load(cut.out)
    assert shown.profile["map_source"] == "embeddings" and shown.map.num_rows == 16
    assert sum(shown.profile["best_helper"].values()) == 16
    assert shown.excluded_total == 8 and {e["sample_id"] for e in shown.excluded} == excluded

    # selection.noise_gate on the sparse kernel: 4 mismatched baselines per sample, never embedded or paired.
    gated = run(
        {
            **cfg,
            "out": str(tmp_path / "gate"),
            "cache": r.out,
            "selection": {"noise_gate": "contrastive", "gate_fdr": 0.99},
        },
        progress=False,
    )
    assert (gated.counts["pairs_scored"], gated.counts["baselines_scored"], gated.counts["embedded"]) == (0, 64, 0)
    gate_status = pq.read_table(tmp_path / "gate" / "samples.parquet").to_pylist()
    shut = {x["sample_id"] for x in gate_status if x["set"] == "pool" and x["status"] == "excluded_noise_gate"}
    assert gated.counts["excluded_noise_gate"] == len(shut) and not shut & set(gated.selected_ids)


# --------------------------------------------------------------------------- estimate


def test_estimate_cli_table_and_json(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    data = tmp_path / "pool.jsonl"
    write_rows(data, POOL16)
    base = [
        sys.executable,
        "-m",
        "delift_ray.cli",
        "estimate",
        "--data",
        str(data),
        "--model",
        str(tiny_model_dir),
        "--kernel.k",
        "4",
        "--kernel.random",
        "1",
        "--tokens-per-s",
        "100",
    ]
    p = subprocess.run(base + ["--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    est = json.loads(p.stdout)
    assert est["dense"]["pairs"] == 256 and est["knn"]["pairs"] == 80
    assert est["dense"]["kernel_bytes"] == 256 * 4
    assert est["knn"]["prefill_tokens"] < est["dense"]["prefill_tokens"]
    # Prefix reuse (the default): heads once per matrix, so fewer tokens to compute than prompt tokens.
    for mode in ("dense", "knn"):
        assert est[mode]["computed_tokens"] < est[mode]["prefill_tokens"]
    assert np.isclose(est["dense"]["engine_hours"], est["dense"]["computed_tokens"] / 100 / 3600, rtol=1e-3)
    off = subprocess.run(
        base + ["--scoring.prefix-reuse", "false", "--json"], capture_output=True, text=True, timeout=300
    )
    assert off.returncode == 0, off.stderr
    est_off = json.loads(off.stdout)
    assert est_off["dense"]["computed_tokens"] == est_off["dense"]["prefill_tokens"] == est["dense"]["prefill_tokens"]
    t = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert t.returncode == 0 and "pairs to score" in t.stdout and "knn k 4 + random 1" in t.stdout
    bad = subprocess.run(base[:-1] + ["0"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "tokens-per-s" in bad.stderr and "Traceback" not in bad.stderr


def test_estimate_tokens_to_compute_with_prefix_reuse():
    from delift_ray import estimate
    from delift_ray.config import validate_config

    # 3 samples: heads 100, 200, 300; tail + response + 2 EOS = 10, 20, 30 (short enough for max_model_len).
    L = estimate.SetLengths(3, np.array([100, 200, 300]), np.array([10, 20, 30]), np.array([5, 5, 5]))
    cfg = validate_config({"data": "d", "model": "m", "out": "o", "engine": {"block_size": 32}})
    est = estimate.compute_estimate(cfg, {"pool": L}, 1.0, rate_source="given")["dense"]
    assert est["prefill_tokens"] == 3 * (60 + 3 * 200) + 15  # |E| sum(tail_resp + mean head) + baselines
    assert est["computed_tokens"] == int(3 * (60 + 3 * 15.5) + 600) + 15  # own part + half a KV block, heads once


def test_calibration_grid_is_example_major_and_seeded():
    from delift_ray.estimate import calibration_grid

    h, e = calibration_grid(100, 48, seed=0)
    assert len(h) == len(e) == 45 and len(set(e)) == 5 and len(set(h)) == 9  # 5 examples x 9 helped
    assert all(e[k] == e[k + 1] for k in range(len(e) - 1) if (k + 1) % 9)  # runs of one example
    assert np.array_equal(calibration_grid(100, 48, seed=0)[0], h)
    h2, e2 = calibration_grid(3, 48, seed=0)  # a tiny pool: every sample at most once per axis
    assert len(set(e2)) <= 3 and len(set(h2)) <= 3


@pytest.mark.engine
def test_estimate_calibration_measures_the_engine(tiny_model_dir, tmp_path):
    from delift_ray import estimate
    from delift_ray.config import validate_config
    from delift_ray.steps.ingest import ingest, load_tokenizer

    data = tmp_path / "pool.jsonl"
    write_rows(data, POOL16)
    cfg = validate_config(
        {
            "data": str(data),
            "model": str(tiny_model_dir),
            "out": str(tmp_path),
            "engine": {"dtype": "float32", "max_model_len": 256, "block_size": 32, "kv_cache_space_gib": 1},
        }
    )
    tok = load_tokenizer(cfg)
    sets, _ = ingest(cfg, tok)
    rate = estimate.calibrate(cfg, sets, tok.eos_token_id, pairs=16)
    assert 1 < rate < 1e7


def test_transformers_embeddings_are_stored_and_only_missing_ones_computed(tiny_model_dir, tmp_path):
    from delift_ray import embedder

    texts = [embedder.sample_text(x["prompt"], x["response"]) for x in POOL16[:6]]
    ids = ids_of("e", 6)
    spec = embedder.encoder_spec(str(tiny_model_dir), max_length=64)
    assert spec.fingerprint == embedder.embedding_fingerprint(str(tiny_model_dir), 64)
    store = embedder.EmbeddingStore(str(tmp_path), spec.fingerprint)
    enc = embedder.TransformersEmbedder(spec, device="cpu", batch_size=4)
    written = []

    def write(todo):
        written.append(todo.tolist())
        embedder.write_missing(store, enc, ids, texts, todo, chunk=2)

    v5, c5 = embedder.embed_samples(ids[:5], store, write)
    v6, c6 = embedder.embed_samples(ids, store, write)
    assert written == [[0, 1, 2, 3, 4], [5]]
    assert c5 == {"embedded": 5, "embeddings_reused": 0} and c6 == {"embedded": 1, "embeddings_reused": 5}
    want = embedder.TransformersEmbedder(spec, device="cpu", batch_size=len(texts)).embed(texts)
    assert np.allclose(v6, want, atol=1e-6) and np.array_equal(v6[:5], v5)
    assert np.allclose(np.linalg.norm(v6, axis=1), 1, atol=1e-5)
    # another backend or dtype is another fingerprint: its vectors are never mixed in
    fps = {
        embedder.embedding_fingerprint(str(tiny_model_dir), 64, b, d)
        for b, d in [("transformers", "float32"), ("vllm", "float32"), ("vllm", "bfloat16")]
    }
    assert len(fps) == 3
    assert (
        embedder.resolve_backend("auto", "model") == "vllm"
        and embedder.resolve_backend("auto", "minilm") == "transformers"
    )


def test_faiss_index_moves_to_gpus_only_when_faiss_sees_some(monkeypatch):
    import faiss

    index = faiss.IndexFlatIP(4)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    assert neighbours.on_gpus(index) is index
    moved = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda ix: moved.append(ix) or "gpu-index", raising=False)
    assert neighbours.on_gpus(index) == "gpu-index" and moved == [index]


def test_isin_sorted_equals_numpy_isin():
    rng = np.random.default_rng(0)
    for _ in range(50):
        hay = np.unique(rng.integers(0, 100, rng.integers(0, 30)))
        needles = rng.integers(-5, 110, rng.integers(0, 40))
        assert np.array_equal(planning.isin_sorted(needles, hay), np.isin(needles, hay))
