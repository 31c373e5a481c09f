"""Reselect on new data versions vs from-scratch runs, side by side in one process.

Real local Ray + the real vLLM CPU engine with the tiny random Llama (the test model):
version v1 has N samples; v2 adds 10%; "same" is v1 again; "minus" removes 10%.
Prints one JSON line per run (pairs scored / reused / total, wall seconds), then the
ratios, and writes all of it to ``benchmarks/results/reselect_versions.json``. Usage:

    python -m benchmarks.reselect_versions [--n 40] [--out /tmp/reselect-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from benchmarks.results import write_result


def rows(n: int) -> list[dict]:
    return [
        {"prompt": f"Question {k}: what is {k} plus {k + 3}?", "response": f"{k} plus {k + 3} is {2 * k + 3}."}
        for k in range(n)
    ]


def write(path: str, data: list[dict]) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in data)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "reselect-bench"))
    args = ap.parse_args()
    import ray

    from benchmarks.fixtures import build_tiny_model
    from delift_ray.job import run
    from delift_ray.reselect import reselect

    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    model = str(build_tiny_model(os.path.join(args.out, "model"), seed=0))
    n, d = args.n, max(1, args.n // 10)
    data = {
        "v1": write(f"{args.out}/v1.jsonl", rows(n)),
        "v2": write(f"{args.out}/v2.jsonl", rows(n + d)),
        "same": write(f"{args.out}/same.jsonl", rows(n)),
        "minus": write(f"{args.out}/minus.jsonl", rows(n)[d:]),
    }
    base = {
        "model": model,
        "budget": 0.3,
        "engine": {"dtype": "float32", "max_model_len": 256, "block_size": 32, "kv_cache_space_gib": 1},
        "scoring": {"block_size": 16},
    }
    ray.init(
        address="local", num_cpus=2, object_store_memory=150 * 1024**2, include_dashboard=False, logging_level="WARNING"
    )
    results = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        r = fn()
        c = r.counts
        results[name] = {
            "pairs_total": c["pairs_total"],
            "pairs_scored": c["pairs_scored"],
            "pairs_reused": c["pairs_reused"],
            "selected": len(r.selected_ids),
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps({"run": name, **results[name]}), flush=True)
        return r

    v1 = f"{args.out}/run-v1"
    timed("scratch_v1", lambda: run({**base, "data": data["v1"], "out": v1}, progress=False))
    re2 = timed("reselect_v2", lambda: reselect(v1, data["v2"], f"{args.out}/re-v2", progress=False))
    sc2 = timed(
        "scratch_v2", lambda: run({**base, "data": data["v2"], "out": f"{args.out}/scratch-v2"}, progress=False)
    )
    timed("reselect_same", lambda: reselect(v1, data["same"], f"{args.out}/re-same", progress=False))
    timed("reselect_minus", lambda: reselect(v1, data["minus"], f"{args.out}/re-minus", progress=False))
    ray.shutdown()
    summary = {
        "n": n,
        "added": d,
        "pairs_ratio_reselect_vs_scratch_v2": round(
            results["reselect_v2"]["pairs_scored"] / results["scratch_v2"]["pairs_scored"], 4
        ),
        "wall_ratio_reselect_vs_scratch_v2": round(
            results["reselect_v2"]["wall_s"] / results["scratch_v2"]["wall_s"], 3
        ),
        "same_selection_as_scratch": re2.selected_ids == sc2.selected_ids,
    }
    print(json.dumps(summary))
    write_result("reselect_versions", {**summary, "runs": results})


if __name__ == "__main__":
    main()
