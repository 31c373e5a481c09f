"""The non-scoring stages of a knn job at N = 1,000,000 synthetic samples.

Each stage runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own;
stages hand data to each other through files in --work. One JSON line per stage:

* ``ingest``: ``data.load_samples`` on a synthetic JSONL (read, normalise, hash, de-dup);
* ``neighbours``: synthetic clustered embeddings (--dim), ``neighbours.candidates``
  (faiss IVF beyond exact_max, k nearest + r random per row);
* ``plan``: ``planning.plan_knn`` for the instruction stage (ids, dedup, stored-pair
  lookup against an empty store, example-major blocks of block_size**2 pairs);
* ``shards``: synthetic utility shards for every planned pair written with ``ShardStore``;
* ``assemble``: ``ShardStore.iter_relevant`` streaming the shards (with validation) into
  the sparse CSR kernel (``kernel.assemble_sparse_from_tables``), as the job does;
* ``reduce``: ``selection.facility_location`` on that CSR kernel, budget 30%;
* ``tokenize``: ``prompts.tokenize_set`` (tiny test model's tokenizer) on --tokenize-n
  samples: time and memory of the stored token segments, projected to N.

    PYTHONPATH=$PWD python benchmarks/scale.py --n 1000000 --work /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

STAGES = ("ingest", "neighbours", "plan", "shards", "assemble", "reduce", "tokenize", "random_candidates")


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def write_jsonl(path: str, n: int) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 10**6, n), rng.integers(0, 10**6, n)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Question {i}: what is {a[i]} plus {b[i]}?",
                                "response": f"{a[i]} plus {b[i]} is {a[i] + b[i]}."}) + "\n")


def stage_ingest(args) -> dict:
    from delift_ray.data import load_samples

    path = os.path.join(args.work, "pool.jsonl")
    if not os.path.exists(path):
        write_jsonl(path, args.n)
    t0 = time.perf_counter()
    s = load_samples(path, "pool")
    t_load = time.perf_counter() - t0
    np.save(os.path.join(args.work, "ids.npy"), np.array(s.sample_ids, dtype="S16"))
    return {"samples": len(s), "ingest_s": round(t_load, 1)}


def stage_tokenize(args) -> dict:
    """tokenize_set on the first --tokenize-n samples; memory of the stored segments."""
    from transformers import AutoTokenizer

    from delift_ray.assets import build_tiny_model
    from delift_ray.config import TemplateConfig
    from delift_ray.data import load_samples
    from delift_ray.prompts import tokenize_set

    model = os.path.join(args.work, "tiny")
    if not os.path.exists(os.path.join(model, "config.json")):
        build_tiny_model(model, seed=0)
    tok = AutoTokenizer.from_pretrained(model)
    s = load_samples(os.path.join(args.work, "pool.jsonl"), "pool", max_rows=args.tokenize_n)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    t = tokenize_set(tok, s.prompts, s.responses, TemplateConfig())
    dt = time.perf_counter() - t0
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    tokens = sum(len(x) for seg in (t.no_example, t.tail, t.head, t.response) for x in seg)
    return {"samples": len(s), "tokenize_s": round(dt, 1), "tokens_stored": int(tokens),
            "storage": type(t.head).__name__, "peak_rss_growth_gib": round(grew / 2**30, 3),
            "bytes_per_token": round(grew / tokens, 1),
            "projected_gib_at_n": round(grew / len(s) * args.n / 2**30, 2),
            "projected_tokenize_s_at_n": round(dt / len(s) * args.n)}


def stage_neighbours(args) -> dict:
    from delift_ray import neighbours

    rng = np.random.default_rng(1)
    centers = rng.normal(size=(args.n // 1000, args.dim)).astype(np.float32) * 3
    x = centers[rng.integers(0, len(centers), args.n)]
    x += rng.normal(size=x.shape).astype(np.float32)
    t0 = time.perf_counter()
    cand = neighbours.candidates(x, x, args.k, args.random, exact_max=50000, seed=0)
    dt = time.perf_counter() - t0
    np.save(os.path.join(args.work, "cand.npy"), cand.astype(np.int32))
    # recall of the approximate k-NN on 1000 queries against exact search
    rss_search = peak_rss_gib()  # before the recall check below, which is not part of the job
    q = rng.choice(args.n, 1000, replace=False)
    xn = neighbours.normalise(x)
    hits = 0
    for s in range(0, q.size, 50):  # exact top-k of 50 queries at a time (50 x N floats)
        qs = q[s : s + 50]
        exact = np.argpartition(-(xn[qs] @ xn.T), args.k, axis=1)[:, : args.k]
        hits += sum(len(set(a) & set(b)) for a, b in zip(exact, cand[qs, : args.k]))
    recall = hits / (q.size * args.k)
    return {"dim": args.dim, "candidates_shape": list(cand.shape), "neighbours_s": round(dt, 1),
            "knn_recall_at_k_1000_queries": round(recall, 4), "empty_slots": int((cand < 0).sum()),
            "peak_rss_gib_search": rss_search}


def stage_random_candidates(args) -> dict:
    """Stand-in for ``neighbours`` when only the later stages are measured: k + r random
    distinct candidates per row (the later stages cost the same for any N*(k+r) graph)."""
    from delift_ray import neighbours

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    cand = neighbours.random_excluding(np.empty((args.n, 0), np.int64), args.n, args.k + args.random, rng)
    dt = time.perf_counter() - t0
    np.save(os.path.join(args.work, "cand.npy"), cand.astype(np.int32))
    return {"candidates_shape": list(cand.shape), "random_candidates_s": round(dt, 1)}


def _ids(args) -> list[str]:
    return [s.decode() for s in np.load(os.path.join(args.work, "ids.npy"))]


def _plan(args, ids):
    from delift_ray import planning
    from delift_ray.stages import STAGE_MATRICES

    cand = np.load(os.path.join(args.work, "cand.npy"))
    index = planning.IdIndex({"pool": ids})
    return planning.plan_knn(STAGE_MATRICES["instruction"], {"K": cand}, {"pool": ids}, np.empty(0, np.int64), set(),
                             index=index, fingerprint="scale", block_size=args.block_size)


def stage_plan(args) -> dict:
    ids = _ids(args)
    t0 = time.perf_counter()
    plan = _plan(args, ids)
    dt = time.perf_counter() - t0
    return {"pairs_total": plan.pairs_total, "blocks": len(plan.blocks), "baselines": plan.baselines_total,
            "plan_s": round(dt, 1)}


def stage_shards(args) -> dict:
    import pyarrow as pa

    from delift_ray.storage import UTILITY, ShardStore

    ids = _ids(args)
    plan = _plan(args, ids)
    arr = pa.array(ids, pa.string())
    store = ShardStore(os.path.join(args.work, "store"), "scale")
    rng = np.random.default_rng(2)
    t0 = time.perf_counter()
    for b in plan.blocks:
        uf = rng.normal(size=b.size).astype(np.float32)
        store.write(UTILITY, b.key, pa.table({"helped_id": arr.take(pa.array(b.h_idx)), "example_id": arr.take(pa.array(b.e_idx)),
                                              "utility": uf, "distance": np.abs(uf)}))
    dt = time.perf_counter() - t0
    return {"shards": len(plan.blocks), "pairs": plan.pairs_total, "write_s": round(dt, 1)}


def stage_assemble(args) -> dict:
    import scipy.sparse as sp

    from delift_ray.kernel import assemble_sparse_from_tables, candidate_keys
    from delift_ray.storage import UTILITY, ShardStore

    ids = _ids(args)
    store = ShardStore(os.path.join(args.work, "store"), "scale")
    rows_read = 0

    def counted(tables):
        nonlocal rows_read
        for t in tables:
            rows_read += t.num_rows
            yield t

    cand = np.load(os.path.join(args.work, "cand.npy"))
    t0 = time.perf_counter()
    # As the job does: the footer filter checks every shard against the run's ids, and
    # only the run's candidate pairs enter the kernel.
    allowed = candidate_keys(cand, len(ids))
    del cand
    M = assemble_sparse_from_tables(counted(store.iter_relevant(UTILITY, ids, ids)), ids, ids, allowed=allowed)
    dt = time.perf_counter() - t0
    sp.save_npz(os.path.join(args.work, "K.npz"), M, compressed=False)
    return {"rows_read": rows_read, "read_validate_assemble_s": round(dt, 1), "nnz": int(M.nnz),
            "csr_bytes": int(M.data.nbytes + M.indices.nbytes + M.indptr.nbytes)}


def stage_reduce(args) -> dict:
    import scipy.sparse as sp

    from delift_ray.selection import facility_location

    M = sp.load_npz(os.path.join(args.work, "K.npz")).tocsr()
    b = int(0.3 * M.shape[0])
    t0 = time.perf_counter()
    idx, gains = facility_location(M, b)
    dt = time.perf_counter() - t0
    return {"budget": b, "selected": int(idx.size), "reduce_s": round(dt, 1), "objective": round(float(gains.sum()), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--random", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--tokenize-n", type=int, default=100_000, help="samples tokenised by the tokenize stage")
    p.add_argument("--block-size", type=int, default=128, help="pairs per shard = block_size**2")
    p.add_argument("--work", default="/tmp/delift-scale")
    p.add_argument("--stage", choices=STAGES, help="run one stage in this process (used by the driver)")
    p.add_argument("--stages", nargs="+", default=list(STAGES))
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    if args.stage:
        t0 = time.perf_counter()
        out = globals()[f"stage_{args.stage}"](args)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out = {"stage": args.stage, "n": args.n, **out, "stage_wall_s": round(time.perf_counter() - t0, 1),
               "stage_cpu_s": round(ru.ru_utime + ru.ru_stime, 1), "peak_rss_gib": peak_rss_gib()}
        print(json.dumps(out), flush=True)
        return
    for st in args.stages:
        cmd = [sys.executable, __file__, "--stage", st] + [a for a in sys.argv[1:] if a != "--stages" and a not in args.stages]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
