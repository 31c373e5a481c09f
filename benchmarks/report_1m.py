"""The report of a synthetic 1M-sample knn run: its time and size.

A synthetic run goes through the job's own select, profile and write steps:

* a pool of N samples with short synthetic prompts and responses (samples.parquet written
  directly: tokenising a million rows is the ingest benchmark's business, not the report's);
* a knn kernel of k + r candidates per row (k from the row's own cluster of 1,000, r
  uniform), values uniform in [0, 1), the self pair dropped, as kernel.diagonal drop does;
* embedding vectors around the cluster centres (the map's source, as the knn embedder's);
* utility shards for the helped samples the profile step reads (its own seeded sample).

Then ``delift-ray report`` (the CLI, in a subprocess) renders the page. The test
(tests/report/test_report.py) runs the same build at 1M and checks the page's size and map; this
script times it and commits the figure::

    python -m benchmarks.report_1m --n 1000000 --write
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

CLUSTER = 1000


def synthetic_kernel(n: int, k: int, r: int, seed: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """(K, candidates): k same-cluster candidates (the row itself first) + r uniform ones per row."""
    rng = np.random.default_rng(seed)
    base = (np.arange(n) // CLUSTER) * CLUSTER
    size = np.minimum(CLUSTER, n - base)
    near = base[:, None] + (rng.integers(0, 1 << 30, size=(n, k - 1)) % size[:, None])
    cand = np.concatenate([np.arange(n)[:, None], near, rng.integers(0, n, size=(n, r))], axis=1)
    rows = np.repeat(np.arange(n), cand.shape[1])
    keep = cand.ravel() != rows  # kernel.diagonal drop
    K = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], cand.ravel()[keep])), shape=(n, n))
    K.sum_duplicates()  # a candidate drawn twice is one pair
    K.data = rng.random(K.nnz, dtype=np.float32)
    return K, cand


def build_run(out: str, n: int, k: int = 32, r: int = 4, budget: float = 0.3, seed: int = 0) -> dict:
    """Write the synthetic run to ``out``; seconds per stage."""
    from delift_ray.config import validate_config
    from delift_ray.rundir import (
        CURVE,
        MAP,
        RUN_JSON,
        SAMPLES,
        SELECTION,
        SUBSET,
        RunCounts,
        RunDir,
        parquet_bytes,
        run_document,
        selection_table,
        subset_bytes,
    )
    from delift_ray.stages import budget_count
    from delift_ray.steps.base import StepLog
    from delift_ray.steps.profile import helped_sample, profile
    from delift_ray.steps.select import select
    from delift_ray.storage import UTILITY, ShardStore

    t = {}
    start = time.perf_counter()
    ids = [f"s{i:07d}" for i in range(n)]
    prompts = [f"Synthetic instruction {i} about topic {i // CLUSTER}." for i in range(n)]
    responses = [f"A synthetic response to instruction {i}." for i in range(n)]
    K, cand = synthetic_kernel(n, k, r, seed)
    rng = np.random.default_rng(seed + 1)
    centres = rng.standard_normal((n // CLUSTER + 1, 16)).astype(np.float32)
    vectors = centres[np.arange(n) // CLUSTER] + 0.3 * rng.standard_normal((n, 16)).astype(np.float32)
    cfg = validate_config(
        {"data": "synthetic", "model": "synthetic", "out": out, "budget": budget, "seed": seed,
         "kernel": {"type": "knn", "k": k, "random": r}}
    )  # fmt: skip
    store = ShardStore(out, "synthetic")
    for s in range(0, len(helped := helped_sample(n, cfg.seed)), 256):
        rows = helped[s : s + 256]
        sub = K[rows].tocoo()
        store.write(
            UTILITY,
            f"profile-{s}",
            pa.table(
                {
                    "helped_id": pa.array([ids[i] for i in rows[sub.row]], pa.string()),
                    "example_id": pa.array([ids[j] for j in sub.col], pa.string()),
                    "utility": sub.data.astype(np.float32),
                    "distance": np.zeros(sub.nnz, np.float32),
                }
            ),
        )
    t["build_s"] = round(time.perf_counter() - start, 1)

    steps = StepLog()
    pool = SimpleNamespace(samples=SimpleNamespace(sample_ids=ids))
    picks = budget_count(cfg.budget, n)
    selection = steps.run("select", select, cfg, {"K": K}, picks, curve=True)  # as the job runs it
    shown = steps.run("profile", profile, cfg, {"pool": pool}, store, {"K": K}, selection, None, {"K": cand}, vectors)
    samples = pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "row": np.arange(n, dtype=np.int64),
            "set": pa.array(["pool"] * n, pa.string()),
            "prompt": pa.array(prompts, pa.string()),
            "response": pa.array(responses, pa.string()),
            "status": pa.array(["ok"] * n, pa.string()),
        }
    )
    chosen = selection.indices
    counts = RunCounts(samples=n, samples_by_set={"pool": n}, pairs_total=int(K.nnz + n), selected=int(chosen.size),
                       kernel="knn", kernel_nnz={"K": int(K.nnz)})  # fmt: skip
    meta = run_document(
        config=cfg.model_dump(mode="json"), model={"path": "synthetic"}, cache=out, stage="instruction", budget=picks,
        counts=counts, steps=steps.as_list(), timings={}, inputs_digest="synthetic", scorers=[],
    )  # fmt: skip
    files = {
        SAMPLES: parquet_bytes(samples),
        SELECTION: parquet_bytes(selection_table([ids[i] for i in chosen], selection.gains)),
        SUBSET: subset_bytes([json.dumps({"prompt": prompts[i], "response": responses[i]}) for i in chosen]),
        MAP: parquet_bytes(shown.map),
        CURVE: parquet_bytes(shown.curve),
        RUN_JSON: meta.to_bytes(),
    }
    RunDir(out).commit(files)
    t.update({f"{s['name']}_s": s["seconds"] for s in steps.as_list()})
    t.update(picks=int(chosen.size), curve_picks=int(shown.curve.num_rows), map_points=int(shown.map.num_rows))
    return t


def render(run: str, page: str) -> dict:
    """``delift-ray report RUN --out PAGE`` as a user runs it; its wall time and the page's size."""
    start = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "delift_ray.cli", "report", run, "--out", page], capture_output=True, text=True
    )
    if p.returncode:
        raise RuntimeError(p.stderr)
    import resource

    return {
        "report_s": round(time.perf_counter() - start, 1),
        "report_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
        "page_mib": round(os.path.getsize(page) / 2**20, 1),
    }


def markdown(doc: dict) -> str:
    """The generated block of docs/report.md."""
    r, m = doc["results"], doc["machine"]
    return (
        f"Measured {doc['date'][:10]} on {m.get('cpu')} ({m.get('cpus')} cores, "
        f"{', '.join(m.get('cpu_flags') or []) or 'no listed CPU flags'}, load {m.get('load_avg_1m')}), "
        f"`{doc['command']}`:\n\n"
        "| N | kernel | picks (curve) | select | profile | `delift-ray report` | report peak RSS | page | map points |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        f"| {r['n']:,} | knn k {r['k']} + r {r['random']} (synthetic) | {r['picks']:,} ({r['curve_picks']:,}) | "
        f"{r['select_s']:.1f} s | {r['profile_s']:.1f} s | {r['report_s']:.1f} s | {r['report_peak_rss_gib']:.2f} GiB | "
        f"{r['page_mib']:.1f} MiB | {r['map_points']:,} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--work", default=None, help="Folder for the run (default: a temporary one).")
    ap.add_argument("--write", action="store_true", help="Commit the figure to benchmarks/results/report_1m.json.")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="report-1m-")
    run = os.path.join(work, "run")
    figures = {"n": args.n, "k": 32, "random": 4, "budget": 0.3, **build_run(run, args.n)}
    figures.update(render(run, os.path.join(work, "report.html")))
    print(json.dumps(figures))
    if args.write:
        from benchmarks.results import write_result

        write_result("report_1m", figures)


if __name__ == "__main__":
    main()
