"""The 1M knn assembly with the per-string shard checksum (before) and the columnar one (after).

Every shard is validated when it is read (``ShardStore.read_valid``), and the checksum was
the part of assembly that grew with the strings: the legacy scheme turns every id of every
shard into a Python object (72M strings at 36M pairs). The columnar scheme hashes the Arrow
buffers. A store written by an earlier version still records the legacy checksum, and the
job validates it with that scheme, so both are paths users run.

One process, side by side, on the same synthetic 1M case as ``benchmarks/scale.py``:

1. the dry run through the job's executor (ingest, embed from synthetic vectors, neighbours,
   plan), then a synthetic utility shard per planned block written with ``ShardStore.write``
   (columnar checksums);
2. a copy of that store whose shards record the legacy checksum instead (footer rewritten;
   the same Parquet data otherwise);
3. the job's own assemble step (``steps.assemble.assemble``) in a ``StepLog``, on the
   two stores in turn, A B A B, and the two kernels compared entry for entry.

    python -m benchmarks.assembly_checksum --n 1000000 --work /tmp/delift-checksum --write
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq

from benchmarks.results import write_result
from benchmarks.scale import cpu_seconds, fill_embedding_store, job_config, write_jsonl, write_utility_shards


def legacy_copy(src: str, dst: str) -> int:
    """``src``'s store copied to ``dst``, every utility shard's footer recording the legacy checksum."""
    from delift_ray.storage import COLUMNAR_KEY, legacy_checksum

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    n = 0
    for dirpath, _, files in os.walk(os.path.join(dst, "utility")):
        for name in files:
            if not name.endswith(".parquet"):
                continue
            path = os.path.join(dirpath, name)
            t = pq.read_table(path)
            meta = {k: v for k, v in t.schema.metadata.items() if k != COLUMNAR_KEY}  # as an earlier version wrote it
            meta[b"delift.checksum"] = legacy_checksum(t.replace_schema_metadata(None)).encode()
            pq.write_table(t.replace_schema_metadata(meta), path, compression="zstd")
            n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--random", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2, help="A B rounds of assembly.")
    p.add_argument("--work", default="/tmp/delift-checksum")
    p.add_argument("--write", action="store_true", help="Write benchmarks/results/assembly_checksum_1m.json.")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)

    from delift_ray import job
    from delift_ray.config import validate_config
    from delift_ray.steps.assemble import assemble
    from delift_ray.steps.base import StepLog
    from delift_ray.steps.plan import open_store

    scale_args = SimpleNamespace(work=args.work, n=args.n, k=args.k, random=args.random, block_size=args.block_size)
    cfg = validate_config(job_config(scale_args))
    if not os.path.exists(cfg.data):
        write_jsonl(cfg.data, args.n)
    fill_embedding_store(cfg, args.n, args.dim)
    dry = job.run(cfg, dry_run=True, progress=False)
    sets, plan, candidates = dry.sets, dry.planned, dry.candidates
    t0 = time.perf_counter()
    shards = write_utility_shards(cfg, sets, plan)
    shards["write_s"] = round(time.perf_counter() - t0, 1)
    del plan, dry
    legacy_dir = cfg.cache + "-legacy"
    t0 = time.perf_counter()
    shards["legacy_rewritten"] = legacy_copy(cfg.cache, legacy_dir)
    shards["legacy_copy_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({"shards": shards}), flush=True)

    stores = {"legacy": cfg.model_copy(update={"cache": legacy_dir}), "columnar": cfg}
    runs: dict[str, list[dict]] = {name: [] for name in stores}
    reference = None
    for _ in range(args.rounds):
        for name, c in stores.items():
            steps = StepLog()
            c0 = cpu_seconds()
            kernels = steps.run("assemble", assemble, c, sets, open_store(c), candidates)
            step = steps.as_list()[0]
            runs[name].append({**step, "cpu_s": round(cpu_seconds() - c0, 2)})
            K = kernels["K"]
            if reference is None:
                reference = K
            elif not (K.shape == reference.shape and (K != reference).nnz == 0):
                raise SystemExit(f"the {name} store assembled another kernel")
            print(json.dumps({name: runs[name][-1]}), flush=True)
            del kernels, K

    summary = {name: round(float(np.median([r["seconds"] for r in rs])), 2) for name, rs in runs.items()}
    out = {
        "n": args.n,
        "k": args.k,
        "random": args.random,
        "block_size": args.block_size,
        "pairs": shards["pairs"],
        "shards": shards,
        "kernel_nnz": int(reference.nnz),
        "same_kernel": True,
        "assemble_runs": runs,
        "assemble_median_s": summary,
        "speedup": round(summary["legacy"] / summary["columnar"], 2),
    }
    print(json.dumps(out, indent=1))
    if args.write and args.n == 1_000_000:
        print(write_result("assembly_checksum_1m", out))


if __name__ == "__main__":
    main()
