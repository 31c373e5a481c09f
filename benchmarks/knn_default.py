"""knn under the default kernel (drop-minmax): does the sparse path pick what dense picks?

On the quality study's two 240-sample pools, whose dense utilities are in its committed
cache, ``delift-ray select --kernel.type knn`` (the path users run at a million samples:
the real embedder, the plan, the sparse assembly and the greedy) at k in {8, 16, 32} plus
4 random candidates, and the dense run at the same budgets. Every pair a knn run needs is
already in the cache, so only the embedding pass is new. Reported per pool, k and budget:

* FL(knn subset) / FL(dense subset), both evaluated on the dense kernel (drop-minmax over
  the whole matrix), with FL(A) = sum_i max_{j in A} K[i, j];
* the overlap |knn subset & dense subset| / budget;
* on the noisy pool, the share of swapped samples in each subset;
* the mean FL ratio of 20 seeded random subsets of the same size (what ignoring the kernel scores).

    .venv/bin/python -m benchmarks.knn_default
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import numpy as np

from benchmarks.quality_study import prepare_data, select_run
from benchmarks.results import write_result

ROOT = Path(__file__).resolve().parent.parent

BUDGETS = (0.05, 0.15, 0.30)
KS = (8, 16, 32)
RANDOM = 4
RESULT = "knn_default"


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def fl_value(K: np.ndarray, picks: list[int]) -> float:
    """sum_i max_{j in A} K[i, j], floored at 0 as the selection's objective is."""
    return float(np.maximum(K[:, picks].max(axis=1), 0).sum())


def dense_kernel(name: str, ids: list[str]) -> np.ndarray:
    """The pool's drop-minmax kernel from the study's stored dense utilities, in ``ids`` order."""
    from delift_ray.kernel import finish_dense

    z = np.load(ROOT / "benchmarks" / "results" / "quality" / f"score-{name}_utilities.npz")
    where = {s: k for k, s in enumerate(z["ids"].tolist())}
    order = np.array([where[s] for s in ids])
    uf = z["uf"].astype(np.float64)[np.ix_(order, order)]
    return finish_dense(uf, ids, ids, diagonal="drop", scaling="minmax")


def markdown(doc: dict) -> str:
    """The generated block of docs/scale.md: FL ratio and overlap per pool, budget and k."""
    res = doc["results"]
    m = doc["machine"]
    lines = [
        f"Measured {doc['date'][:10]} on {m.get('cpu')} ({m.get('cpus')} cores, "
        f"{', '.join(m.get('cpu_flags') or []) or 'no listed CPU flags'}), `{doc['command']}`; kernel "
        f"{res['kernel']}, knn random candidates {res['random']}, scoring dtype {res['score_dtype']}. Each cell: FL "
        "ratio on the dense kernel / overlap with the dense subset (noisy pool: and the swapped share).",
        "",
        "| pool | budget | " + " | ".join(f"knn k {k}" for k in KS) + " | random subsets (mean of 20) |",
        "|---|---|" + "---|" * (len(KS) + 1),
    ]
    for name, rows in res["pools"].items():
        for b in BUDGETS:
            tag = f"b{int(round(b * 100)):02d}"
            cells = []
            for k in KS:
                r = rows[f"{tag}-knn{k}"]
                cell = f"{r['fl_ratio_on_dense_kernel']:.3f} / {100 * r['overlap_with_dense']:.0f}%"
                if "swapped_share" in r:
                    cell += f" / {100 * r['swapped_share']:.0f}% swapped"
                cells.append(cell)
            rnd = rows[f"{tag}-random"]["fl_ratio_on_dense_kernel"]
            dense = rows[f"{tag}-dense"]
            pool = f"{name} (dense: {100 * dense['swapped_share']:.0f}% swapped)" if "swapped_share" in dense else name
            lines.append(f"| {pool} | {b:.0%} ({dense['k']}) | " + " | ".join(cells) + f" | {rnd:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(ROOT / "runs" / "knn_default"))
    p.add_argument("--cache", default=str(ROOT / "benchmarks" / "results" / "quality" / "cache"))
    p.add_argument("--score-dtype", default="float32", help="engine.dtype (the study's pools were scored in float32).")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--score-attempts", type=int, default=3)
    args = p.parse_args(argv)
    from delift_ray import assets
    from delift_ray.evaluate.inputs import load_run
    from delift_ray.rundir import read_run_document

    work = Path(args.work)
    meta = {"model": str(assets.demo_model_dir())}
    data_meta = prepare_data(work / "sharegpt", 240, 400, 128, 0.5, 0)
    swapped = set(data_meta["swapped_ids"])
    out: dict = {"kernel": "drop-minmax", "random": RANDOM, "score_dtype": args.score_dtype, "pools": {}}
    for name, data in (("clean", work / "sharegpt" / "pool.jsonl"), ("noisy", work / "sharegpt" / "noisy_pool.jsonl")):
        rows = {}
        K = None
        for budget in BUDGETS:
            tag = f"b{int(round(budget * 100)):02d}"
            runs = {"dense": ()}
            for k in KS:
                runs[f"knn{k}"] = ("--kernel.type", "knn", "--kernel.k", str(k), "--kernel.random", str(RANDOM))
            picked = {}
            for arm, extra in runs.items():
                d = work / "runs" / f"{name}-{tag}-{arm}"
                if not (d / "run.json").exists():
                    select_run(d, data, budget, args, meta, *extra, diagonal="drop")
                run = load_run(d)
                ids = run.pool.sample_ids
                K = dense_kernel(name, ids) if K is None else K
                picked[arm] = (list(run.selected), read_run_document(str(d)).counts)
            dense_picks = picked["dense"][0]
            base = fl_value(K, dense_picks)
            for arm, (picks, counts) in picked.items():
                row = {
                    "k": len(picks),
                    "fl_ratio_on_dense_kernel": round(fl_value(K, picks) / base, 4),
                    "overlap_with_dense": round(len(set(picks) & set(dense_picks)) / len(dense_picks), 4),
                    "pairs_total": counts["pairs_total"],
                    "pairs_scored": counts["pairs_scored"],
                }
                if name == "noisy":
                    row["swapped_share"] = round(float(np.mean([ids[i] in swapped for i in picks])), 4)
                rows[f"{tag}-{arm}"] = row
                log(f"{name} {tag} {arm}: {row}")
            # What a subset that ignores the kernel scores: 20 seeded random subsets of the same size.
            rng = np.random.default_rng(0)
            ratios = [
                fl_value(K, list(rng.choice(len(ids), len(dense_picks), replace=False))) / base for _ in range(20)
            ]
            rows[f"{tag}-random"] = {
                "k": len(dense_picks),
                "fl_ratio_on_dense_kernel": round(float(np.mean(ratios)), 4),
            }
        out["pools"][name] = rows
        write_result(RESULT, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
