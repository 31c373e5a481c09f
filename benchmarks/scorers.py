"""Pairs/s of the whole job with 1 and 2 scorer actors, on the same data, side by side.

    python -m benchmarks.scorers [--model DIR] [--data FILE] [--n 24] [--scorers 1,2] [--json]

Runs ``delift_ray.job.run`` (instruction stage) once per scorer count, each into a fresh
output dir (nothing reused), on one local Ray cluster, and prints one JSON line with the
scoring time and pairs/s of each (also ``benchmarks/results/scorers.json``). Defaults: the tiny random test model
(``build_tiny_model``) and the 12-row Alpaca-style rows of the test suite repeated with
numbered variants, so it needs no download. Engine start-up is part of ``score_s``
(each scorer starts its own engine), as it is in a real job.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks.alpaca import ALPACA_ROWS  # the test suite's rows: no download
from benchmarks.results import write_result


def demo_rows(n: int) -> list[dict]:
    return [
        {**r, "instruction": f"{r['instruction']} (variant {k})"}
        for k in range(n // len(ALPACA_ROWS) + 1)
        for r in ALPACA_ROWS
    ][:n]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF checkpoint dir (default: the tiny random test model)")
    ap.add_argument("--data", help="data file (default: test rows with variants)")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--scorers", default="1,2")
    ap.add_argument("--block-size", type=int, default=8, help="scoring.block_size")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")

    import ray

    from benchmarks.fixtures import build_tiny_model
    from delift_ray.job import run

    tmp = Path(tempfile.mkdtemp(prefix="delift-scorers-"))
    model = args.model or str(build_tiny_model(tmp / "tiny", seed=0))
    data = args.data
    if not data:
        data = str(tmp / "pool.jsonl")
        with open(data, "w") as f:
            for r in demo_rows(args.n):
                f.write(json.dumps(r) + "\n")
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        object_store_memory=200 * 1024**2,
        include_dashboard=False,
        logging_level="WARNING",
    )
    out: dict = {"model": Path(model).name, "n": args.n, "cores": os.cpu_count()}
    try:
        for k in [int(x) for x in args.scorers.split(",")]:
            cfg = {
                "data": data,
                "model": model,
                "out": str(tmp / f"out{k}"),
                "budget": 3,
                "max_samples": args.n,
                "engine": {"dtype": "float32", "max_model_len": 256, "block_size": 32, "kv_cache_space_gib": 1},
                "scoring": {"block_size": args.block_size},
                "ray": {"num_scorers": k},
            }
            r = run(cfg, progress=not args.json)
            out[f"scorers{k}_pairs"] = r.counts["pairs_scored"]
            out[f"scorers{k}_score_s"] = r.timings["score_s"]
            out[f"scorers{k}_pairs_per_s"] = r.timings.get("pairs_per_s")
            out[f"scorers{k}_cached_prompt_tokens"] = r.counts.get("cached_prompt_tokens")
    finally:
        ray.shutdown()
    print(json.dumps(out))
    write_result("scorers", out)
    return out


if __name__ == "__main__":
    main()
