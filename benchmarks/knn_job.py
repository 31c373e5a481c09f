"""The whole knn job (Ray + vLLM) with the tiny random test model on N synthetic samples.

    python -m benchmarks.knn_job --n 10000 --k 8 --random 2 --work /tmp/knn10k

Writes N arithmetic question/answer pairs, builds the tiny test Llama, runs
``delift_ray.run`` with ``kernel.type knn`` (embeddings through vLLM's pooling runner on
an actor, faiss neighbours, scoring on one CPU engine, sparse reduce) and prints one JSON
line (also ``benchmarks/results/knn_job.json``): pairs, the job's stage timings, pairs/s
of the scoring stage, peak RSS of the driver. Re-running with the same --work resumes (stored embeddings and pairs are reused).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

from benchmarks.job_scale import job_config  # the same job as the 100k session benchmark
from benchmarks.results import write_result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--random", type=int, default=2)
    p.add_argument("--block-size", type=int, default=64, help="scoring.block_size (block_size**2 pairs a shard)")
    p.add_argument("--work", default="/tmp/delift-knn-job")
    args = p.parse_args()

    from delift_ray import run
    from delift_ray.config import validate_config

    os.makedirs(args.work, exist_ok=True)
    out = os.path.join(args.work, f"run-{args.n}-k{args.k}-r{args.random}")
    cfg = job_config(args.n, args.k, args.random, args.block_size, args.work, out, None)
    kernel = validate_config(cfg).kernel
    t0 = time.perf_counter()
    r = run(cfg, progress=True)
    wall = time.perf_counter() - t0
    c, t = r.counts, r.timings
    result = {
        "n": c["samples"],
        "k": args.k,
        "random": args.random,
        "pairs_total": c["pairs_total"],
        "pairs_scored": c["pairs_scored"],
        "pairs_reused": c["pairs_reused"],
        "baselines_scored": c["baselines_scored"],
        "kernel_nnz": c.get("kernel_nnz"),
        "embedded": c.get("embedded"),
        "embedding_backend": c.get("embedding_backend"),
        "selected": c["selected"],
        "timings": t,
        "score_pairs_per_s": round(c["pairs_scored"] / t["score_s"], 1) if t.get("score_s") else None,
        "wall_s": round(wall, 1),
        "driver_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "kernel_options": {k: getattr(kernel, k) for k in ("diagonal", "scaling")},
    }
    print(json.dumps(result), flush=True)
    write_result("knn_job", result)


if __name__ == "__main__":
    main()
