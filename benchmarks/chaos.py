"""Chaos run: a selection while a random scorer actor is killed every few seconds.

Runs the same DELIFT job twice on one local Ray cluster with the tiny random Llama: once
undisturbed, once while a thread SIGKILLs a random live scorer actor process every
``--every`` seconds (at most ``--kills`` times, starting once the first pair shard is
written, so kills land during scoring). Reports completion, the kills, the actor deaths
and block retries the driver saw, the pairs sent again, and whether the selection and
the utility matrix equal the undisturbed run's. The report is also written to
``benchmarks/results/chaos.json``.

    python -m benchmarks.chaos [--n 16] [--block-size 2] [--every 8] [--kills 3] [--scorers 1]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.fixtures import scorer_pids
from benchmarks.results import write_result

WORDS = (
    "red blue green river stone cloud bread music garden window yellow silver quiet rapid gentle "
    "seven twelve north south winter summer apple tiger ocean forest"
).split()


def pool_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        a, b, c = rng.sample(WORDS, 3)
        rows.append(
            {
                "prompt": f"Question {k}: what links {a} and {b}?",
                "response": f"Both {a} and {b} can be {c}; item {k} says so.",
            }
        )
    return rows


def shard_files(out: str) -> list[str]:
    return [
        f
        for f in glob.glob(os.path.join(out, "utility", "*", "*.parquet"))
        if not os.path.basename(f).startswith("_tmp-")
    ]


def matrix(out: str):
    t = pa.concat_tables([pq.read_table(f) for f in shard_files(out)]).to_pandas()
    return t.set_index(["helped_id", "example_id"]).sort_index()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="pool size (n x n pairs)")
    ap.add_argument("--block-size", type=int, default=2)
    ap.add_argument("--every", type=float, default=8.0, help="seconds between kills")
    ap.add_argument("--kills", type=int, default=3, help="most kills")
    ap.add_argument("--scorers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="work dir (default: a temp dir)")
    args = ap.parse_args(argv)

    import ray

    from benchmarks.fixtures import build_tiny_model
    from delift_ray.job import run

    work = args.work or tempfile.mkdtemp(prefix="delift-chaos-")
    model = build_tiny_model(os.path.join(work, "model"), seed=0)
    data = os.path.join(work, "pool.jsonl")
    with open(data, "w") as f:
        for r in pool_rows(args.n, args.seed):
            f.write(json.dumps(r) + "\n")
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        object_store_memory=78643200,
        include_dashboard=False,
        logging_level="ERROR",
    )

    def cfg(out):
        return {
            "data": data,
            "model": str(model),
            "out": out,
            "budget": 0.3,
            "engine": {"dtype": "float32", "max_model_len": 256, "block_size": 32, "kv_cache_space_gib": 1},
            "scoring": {"block_size": args.block_size, "max_retries": 3},
            "ray": {"num_scorers": args.scorers, "max_actor_restarts": args.kills + 1},
        }

    t0 = time.perf_counter()
    calm = run(cfg(os.path.join(work, "calm")), progress=False)
    calm_s = time.perf_counter() - t0

    out = os.path.join(work, "chaos")
    rng = random.Random(args.seed)
    kills: list[tuple[float, int]] = []
    stop = threading.Event()

    def killer():
        while not stop.is_set() and not shard_files(out):
            time.sleep(0.05)
        start = time.perf_counter()
        while not stop.is_set() and len(kills) < args.kills:
            pids = scorer_pids()
            if pids:
                pid = rng.choice(pids)
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append((round(time.perf_counter() - start, 1), pid))
                except ProcessLookupError:
                    pass
            stop.wait(args.every)

    th = threading.Thread(target=killer, daemon=True)
    t0 = time.perf_counter()
    th.start()
    error = None
    try:
        chaos = run(cfg(out), progress=False)
    except Exception as exc:  # reported, not raised: completion is one of the results
        chaos, error = None, f"{exc.__class__.__name__}: {exc}"
    stop.set()
    th.join()
    chaos_s = time.perf_counter() - t0
    ray.shutdown()

    report = {
        "pool": args.n,
        "pairs_total": calm.counts["pairs_total"],
        "block_size": args.block_size,
        "scorers": args.scorers,
        "kill_every_s": args.every,
        "kills": kills,
        "completed": chaos is not None,
        "error": error,
        "calm_s": round(calm_s, 1),
        "chaos_s": round(chaos_s, 1),
    }
    if chaos is not None:
        c = chaos.counts
        a, b = matrix(calm.out), matrix(chaos.out)
        report.update(
            {
                "actor_deaths_seen": c["actor_deaths"],
                "block_retries": c["block_retries"],
                "pairs_redone": c["pairs_redone"],
                "pairs_scored": c["pairs_scored"],
                "pairs_missing": c["pairs_missing"],
                "matrix_pairs": len(b),
                "duplicate_pairs": int(b.index.duplicated().sum()),
                "matrix_equal": bool(a.index.equals(b.index) and np.array_equal(a.utility.values, b.utility.values)),
                "selection_equal": chaos.selected_ids == calm.selected_ids,
            }
        )
    print(json.dumps(report, indent=2))
    write_result("chaos", report)
    return 0 if report.get("selection_equal") else 1


if __name__ == "__main__":
    sys.exit(main())
