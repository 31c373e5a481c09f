"""Quality of knn pruning: the FL objective of a knn-selected subset on the dense kernel.

Part 1 (real utilities): a pool of --n ShareGPT demo samples scored densely (every pair)
by the demo model (SmolLM2-135M-Instruct, bf16) through the real job (Ray + vLLM);
then the same pool with kernel.type knn, with the dense run's output as its cache, so the
knn job reads the dense job's stored pairs instead of scoring them again (a pair's utility does
not depend on which other pairs are scored). Both subsets are evaluated with the FL
objective on the dense kernel:

    f(A) = sum_i max_{j in A} K[i, j],  K = dense UF min-max scaled over the whole matrix.

Part 2 (synthetic, larger N): clustered embeddings, a dense "utility" kernel derived
from them plus noise, and the knn graph from the same embeddings; knn FL (sparse kernel)
vs dense FL, both evaluated on the dense kernel.

One JSON line per case on stdout; each part's cases are also written to
``benchmarks/results/pruning_synthetic.json`` and ``pruning_real.json``.

    python -m benchmarks.pruning --n 32 --out runs/pruning
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from benchmarks.results import write_result


def fl_objective(K: np.ndarray, idx) -> float:
    return float(np.maximum(K[:, np.asarray(idx)].max(axis=1), 0).sum())


def real_case(args) -> list[dict]:
    from transformers import AutoTokenizer

    from benchmarks.fixtures import build_tiny_model
    from delift_ray import assets
    from delift_ray.job import coerce_config, run
    from delift_ray.steps.assemble import assemble
    from delift_ray.steps.ingest import ingest, load_tokenizer
    from delift_ray.steps.plan import open_store

    os.makedirs(args.out, exist_ok=True)
    if args.model == "demo":
        model, label, engine = (
            str(assets.demo_model_dir()),
            f"SmolLM2-135M-Instruct (demo, {args.dtype})",
            {"dtype": args.dtype, "max_model_len": 512},
        )
    else:
        model = str(build_tiny_model(os.path.join(args.out, "tiny-model"), seed=0))
        label, engine = (
            "tiny random Llama (test model, fp32)",
            {"dtype": "float32", "max_model_len": 512, "block_size": 32},
        )
    data = assets.write_demo_dataset(
        os.path.join(args.out, "pool.jsonl"),
        n=args.n,
        tokenizer=AutoTokenizer.from_pretrained(model),
        max_tokens=args.max_tokens,
    )
    base = {
        "data": str(data),
        "model": model,
        "out": os.path.join(args.out, "run"),
        "budget": args.budget,
        "engine": engine,
        "scoring": {"block_size": 16},
        "kernel": {"diagonal": "drop" if args.exclude_self else "keep"},
    }
    t0 = time.perf_counter()
    dense = run(base, progress=args.progress)
    dense_s = time.perf_counter() - t0
    cfg = coerce_config(base)
    sets, _ = ingest(cfg, load_tokenizer(cfg))
    K = assemble(cfg, sets, open_store(cfg))[0]["K"]
    ids = sets["pool"].samples.sample_ids
    pos = {s: i for i, s in enumerate(ids)}
    dense_idx = [pos[s] for s in dense.selected_ids]
    f_dense = fl_objective(K, dense_idx)
    rng = np.random.default_rng(0)
    f_random = float(np.mean([fl_objective(K, rng.choice(len(ids), len(dense_idx), replace=False)) for _ in range(20)]))
    rows = []
    for emb in args.embeddings:
        # Its own out dir (a finished run of other settings is refused), the dense run's store as its cache.
        knn_cfg = dict(
            base,
            out=os.path.join(args.out, f"run-knn-{os.path.basename(emb)}"),
            cache=base["out"],
            kernel={**base["kernel"], "type": "knn", "k": args.k, "random": args.random, "embedding": emb},
        )
        t0 = time.perf_counter()
        knn = run(knn_cfg, progress=args.progress)
        knn_idx = [pos[s] for s in knn.selected_ids]
        f_knn = fl_objective(K, knn_idx)
        rows.append(
            {
                "case": "real",
                "model": label,
                "n": len(ids),
                "budget": len(dense_idx),
                "k": args.k,
                "random": args.random,
                "embedding": emb,
                "exclude_self": args.exclude_self,
                "pairs_dense": dense.counts["pairs_total"],
                "pairs_knn": knn.counts["pairs_total"],
                "fl_dense": round(f_dense, 4),
                "fl_knn": round(f_knn, 4),
                "ratio": round(f_knn / f_dense, 4),
                "fl_random_mean": round(f_random, 4),
                "ratio_random": round(f_random / f_dense, 4),
                "overlap": len(set(knn_idx) & set(dense_idx)) / len(dense_idx),
                "dense_score_s": round(dense.timings.get("score_s", 0.0), 1),
                "dense_job_s": round(dense_s, 1),
                "dense_pairs_per_s": dense.timings.get("pairs_per_s"),
                "knn_pairs_scored_here": knn.counts["pairs_scored"],
                "knn_pairs_reused": knn.counts["pairs_reused"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def synthetic_case(
    n: int, k: int, r: int, budget_fracs: list[float], seed: int = 0, d: int = 64, noise: float = 0.1, sharp: int = 8
) -> list[dict]:
    """Dense K[i, j] = max(cos(x_i, x_j), 0)**sharp + noise * U(0, 1), min-max scaled.

    Clustered x (n / 100 centres); the knn graph comes from the same x. A sharp
    similarity makes coverage local, so FL does not saturate after one pick per cluster.
    """
    from delift_ray import neighbours
    from delift_ray.kernel import assemble_sparse
    from delift_ray.selection import facility_location

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(8, n // 100), d)) * 1.5
    x = (centers[rng.integers(0, len(centers), n)] + rng.normal(size=(n, d))).astype(np.float32)
    xn = neighbours.normalise(x)
    K = np.maximum(xn @ xn.T, 0) ** sharp + noise * rng.random((n, n), dtype=np.float32)
    K = ((K - K.min()) / (K.max() - K.min())).astype(np.float32)
    cand = neighbours.candidates(x, x, k, r, exact_max=10**6, seed=seed)
    rows = np.repeat(np.arange(n), cand.shape[1])
    cols = cand.ravel()
    S = assemble_sparse(rows, cols, K[rows, cols], (n, n))
    out = []
    for frac in budget_fracs:
        b = max(1, int(round(frac * n)))
        t0 = time.perf_counter()
        dense_idx, _ = facility_location(K, b)
        t_dense = time.perf_counter() - t0
        t0 = time.perf_counter()
        knn_idx, _ = facility_location(S, b)
        t_knn = time.perf_counter() - t0
        f_dense, f_knn = fl_objective(K, dense_idx), fl_objective(K, knn_idx)
        f_rand = float(np.mean([fl_objective(K, rng.choice(n, b, replace=False)) for _ in range(5)]))
        out.append(
            {
                "case": "synthetic",
                "n": n,
                "budget": b,
                "budget_frac": frac,
                "k": k,
                "random": r,
                "noise": noise,
                "sharp": sharp,
                "pairs_dense": n * n,
                "pairs_knn": int(rows.size),
                "fl_dense": round(f_dense, 2),
                "fl_knn": round(f_knn, 2),
                "ratio": round(f_knn / f_dense, 4),
                "ratio_random": round(f_rand / f_dense, 4),
                "overlap": round(len(set(knn_idx.tolist()) & set(dense_idx.tolist())) / b, 4),
                "select_dense_s": round(t_dense, 2),
                "select_knn_s": round(t_knn, 2),
            }
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32)
    p.add_argument(
        "--model", choices=["demo", "tiny"], default="demo", help="demo: SmolLM2-135M; tiny: the random test Llama"
    )
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--random", type=int, default=2)
    p.add_argument("--budget", type=float, default=0.3)
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--dtype", default="bfloat16", help="engine.dtype of the demo model (float32 on CPUs without bf16)")
    p.add_argument("--embeddings", nargs="+", default=["model", "minilm"])
    p.add_argument("--out", default="runs/pruning")
    p.add_argument("--synthetic-n", type=int, nargs="*", default=[2000, 5000, 10000])
    p.add_argument("--synthetic-budgets", type=float, nargs="*", default=[0.01, 0.05, 0.3])
    p.add_argument("--skip-real", action="store_true")
    p.add_argument(
        "--exclude-self",
        action="store_true",
        help="kernel.diagonal drop (else keep, the paper's kernel): leave UF(i <- i), which dominates keep kernels, out of both kernels",
    )
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    synthetic = []
    for n in args.synthetic_n:
        for row in synthetic_case(n, 32, 4, args.synthetic_budgets):
            print(json.dumps(row), flush=True)
            synthetic.append(row)
    if synthetic:
        write_result("pruning_synthetic", {"cases": synthetic})
    if not args.skip_real:
        write_result("pruning_real", {"cases": real_case(args)})


if __name__ == "__main__":
    main()
