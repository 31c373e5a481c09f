"""Time and peak memory of reading and ingesting a corpus with one huge row (issue 16 §2).

A JSONL file of normal rows followed by one row of ``--mb`` MB (``{"prompt": "x x x ...",
"response": "y"}``). Each measurement runs in a fresh child process (peak RSS from
``getrusage`` of that child, a cold ``datasets`` cache each time):

* ``read_datasets``: ``data.load_samples`` (HF datasets / pyarrow JSON reader);
* ``read_lines``: the line reader alone (``data._read_json_lines_tolerant``), for comparison;
* ``ingest``: ``job.ingest`` (read + length screen + tokenisation) with the tiny test model.

The child stops itself past ``--limit-gib`` of RSS, so a run of the old code (which
tokenised the row in full: 16 GB) cannot starve the machine.

    python -m benchmarks.hostile_rows [--mb 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.results import write_result

CHILD = r"""
import json, os, resource, sys, threading, time
import psutil

what, data, model, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def guard():
    me = psutil.Process()
    while True:
        if me.memory_info().rss > limit:
            print(json.dumps({"aborted_at_rss": me.memory_info().rss, "after_s": time.perf_counter() - t0}), flush=True)
            os._exit(3)
        time.sleep(0.05)

t0 = time.perf_counter()
threading.Thread(target=guard, daemon=True).start()
from delift_ray import data as D
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if what == "ingest":
    from transformers import AutoTokenizer
    from delift_ray.config import load_config
    from delift_ray.job import ingest
    tok = AutoTokenizer.from_pretrained(model)
    cfg = load_config(None, {"data": data, "model": model, "out": "unused", "engine.max_model_len": 256})
import datasets  # imported before the clock starts in every case
before = peak()
t0 = time.perf_counter()
if what == "read_datasets":
    n = len(D.load_samples(data))
elif what == "read_lines":
    from pathlib import Path
    n = len(list(D._read_json_lines_tolerant([Path(data)])))
else:
    sets = ingest(cfg, tok)
    n = len(sets["pool"].samples)
    skipped = dict(sets["pool"].samples.skipped)
out = {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_gib": round(peak() / 2**30, 3),
       "peak_rss_before_gib": round(before / 2**30, 3), "rows": n}
if what == "ingest":
    out["skipped"] = skipped
print(json.dumps(out), flush=True)
"""


def write_corpus(path: str, mb: int, normal: int = 100) -> None:
    with open(path, "w") as f:
        for k in range(normal):
            f.write(json.dumps({"prompt": f"Question number {k}?", "response": f"Answer number {k}."}) + "\n")
        f.write('{"prompt": "' + "x " * (mb * 1024 * 1024 // 2) + '", "response": "y"}\n')


def measure(what: str, data: str, model: str, limit: int) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "HF_DATASETS_CACHE": cache, "TOKENIZERS_PARALLELISM": "false"}
        t = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-c", CHILD, what, data, model, str(limit)],
            capture_output=True,
            text=True,
            env=env,
            timeout=1200,
        )
        res = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {"error": p.stderr[-500:]}
        res["child_wall_s"] = round(time.perf_counter() - t, 1)
        res["returncode"] = p.returncode
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--limit-gib", type=float, default=3.0)
    ap.add_argument("--json", action="store_true", help="Write benchmarks/results/hostile_rows.json.")
    args = ap.parse_args()
    from benchmarks.fixtures import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_model(os.path.join(tmp, "model"), seed=0))
        data = os.path.join(tmp, "big.jsonl")
        write_corpus(data, args.mb)
        results = {
            "row_mb": args.mb,
            "file_bytes": os.path.getsize(data),
            "normal_rows": 100,
            "max_model_len": 256,
            "limit_gib": args.limit_gib,
        }
        for what in ("read_lines", "read_datasets", "ingest"):
            results[what] = measure(what, data, model, int(args.limit_gib * 2**30))
            print(what, results[what], flush=True)
    if args.json:
        print(write_result("hostile_rows", results))


if __name__ == "__main__":
    main()
