"""A million samples through the job's own steps: the dry run, then assembly and selection.

One process, as a job runs (``delift-ray select --kernel.type knn``), so each step's peak
RSS is the process's peak while that step ran (the job's ``StepLog`` resets ``VmHWM``
before every step), including what earlier steps still hold:

1. Set-up (timed, not a job step): a synthetic JSONL of --n samples, and the job's
   embedding store filled with synthetic vectors (see below).
2. The dry run, through the job's executor: ``job.run(cfg, dry_run=True)`` runs ingest
   (read, normalise, hash, de-dup, tokenise with the demo model's tokenizer, length check),
   embed (the job's embed step: it finds every vector stored and embeds nothing),
   neighbours (faiss), plan (store lookups, blocks) and the estimate (tokens to compute),
   exactly as ``delift-ray select --dry-run`` does.
3. The rest of the job without an engine: a synthetic utility shard for every planned
   block, written with ``ShardStore.write`` as the scorer actors write theirs (random
   utilities; this stands in for scoring), then the job's own assemble and select steps
   (``steps.assemble.assemble``, ``steps.select.select``) in a ``StepLog``.

Embeddings: computing 1M embeddings with the model is GPU work (hours on these two CPU
cores), so the set-up writes clustered synthetic vectors (``--dim``, unit length; centres
n/1000, Gaussian noise, seed 1) into the embedding store under the fingerprint the job's
embed step looks up. The job then reads them like vectors of an earlier run.

    python -m benchmarks.scale --n 1000000 --work /tmp/delift-scale --write
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time

import numpy as np

from benchmarks.results import write_result


def sample_rows(n: int):
    """The synthetic rows: (prompt, response) of sample i, deterministic."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 10**6, n), rng.integers(0, 10**6, n)
    for i in range(n):
        yield f"Question {i}: what is {a[i]} plus {b[i]}?", f"{a[i]} plus {b[i]} is {a[i] + b[i]}."


def write_jsonl(path: str, n: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for p, r in sample_rows(n):
            f.write(json.dumps({"prompt": p, "response": r}) + "\n")
    os.replace(tmp, path)


def job_config(args) -> dict:
    from delift_ray import assets

    return {
        "data": os.path.join(args.work, f"pool-{args.n}.jsonl"),
        "model": str(assets.demo_model_dir()),
        "out": os.path.join(args.work, "run"),
        "cache": os.path.join(args.work, "cache"),
        "kernel": {"type": "knn", "k": args.k, "random": args.random},
        "scoring": {"block_size": args.block_size},
        "budget": 0.3,
    }


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class StepCPU(logging.Handler):
    """CPU seconds of each step: the process's CPU time at each step's log line (the
    job's StepLog logs one line as a step ends), differenced."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.mark = cpu_seconds()
        self.cpu: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("%s: %s (") and record.args:
            now = cpu_seconds()
            self.cpu[record.args[0]] = round(now - self.mark, 1)
            self.mark = now
        print(f"{time.strftime('%H:%M:%S')} {record.getMessage()}", file=sys.stderr, flush=True)


def fill_embedding_store(cfg, n: int, dim: int, shard: int = 1024) -> int:
    """Synthetic unit vectors for every sample, written where the job's embed step reads
    (its store and fingerprint), ``shard`` samples a shard as the job writes them. A store
    already filled (an earlier run of this benchmark) is kept."""
    from delift_ray import embedder
    from delift_ray.data import normalise_text, sample_id
    from delift_ray.storage import EMBEDDING

    store = embedder.EmbeddingStore(cfg.cache or cfg.out, embedder.knn_spec(cfg).fingerprint)
    if len(store.shards.list_shards(EMBEDDING)) == -(-n // shard):
        return 0
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(max(1, n // 1000), dim)).astype(np.float32) * 3
    rows = sample_rows(n)
    for s in range(0, n, shard):
        m = min(shard, n - s)
        ids = [sample_id(normalise_text(p), normalise_text(r)) for p, r in (next(rows) for _ in range(m))]
        x = centres[rng.integers(0, len(centres), m)] + rng.normal(size=(m, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        store.write(ids, x)
    return -(-n // shard)


def write_utility_shards(cfg, sets, plan) -> dict:
    """A random-utility shard per planned block, as the scorer actors write them."""
    import pyarrow as pa

    from delift_ray.steps.plan import open_store
    from delift_ray.storage import UTILITY

    store = open_store(cfg)
    rng = np.random.default_rng(2)
    ids = {n: pa.array(s.samples.sample_ids, pa.string()) for n, s in sets.items()}
    for b in plan.blocks:
        uf = rng.normal(size=b.size).astype(np.float32)
        store.write(
            UTILITY,
            b.key,
            pa.table(
                {
                    "helped_id": ids[b.helped_set].take(pa.array(b.h_idx)),
                    "example_id": ids[b.example_set].take(pa.array(b.e_idx)),
                    "utility": uf,
                    "distance": np.abs(uf),
                }
            ),
        )
    return {"shards": len(plan.blocks), "pairs": int(plan.pairs_to_score)}


def markdown(doc: dict) -> str:
    """The docs' table of a committed result (benchmarks/results/scale_1m.json)."""
    r = doc["results"]
    rows = ["| step | wall s | CPU s | peak RSS GiB | what it did |", "|---|---|---|---|---|"]
    what = {
        "ingest": "read, normalise, hash, de-dup, tokenise, length check",
        "embed": "read the stored vectors (embedded 0)",
        "neighbours": "faiss IVF, k + r candidates per sample",
        "plan": "store lookups, blocks",
        "estimate": "tokens of the planned pairs",
        "assemble": "stream the shards into the CSR kernel",
        "select": "facility location, budget 30 %",
    }
    for s in r["dry_run"]["steps"] + (r.get("after_scoring") or {}).get("steps", []):
        rows.append(
            f"| {s['name']} | {s['seconds']:.1f} | {s.get('cpu_s') or ''} | {s['peak_rss_gib']:.2f} | {what.get(s['name'], '')} |"
        )
    d = r["dry_run"]
    rows.append(
        f"| **dry run** (`job.run(dry_run=True)`, tokenizer load included) | **{d['wall_s']:.1f}** | {d['cpu_s']} "
        f"| **{d['peak_rss_gib']:.2f}** | |"
    )
    m = doc["machine"]
    from benchmarks.figures import recorded_kernel

    kernel = recorded_kernel(r.get("kernel"))
    assemble = [s for s in (r.get("after_scoring") or {}).get("steps", []) if s["name"] == "assemble"]
    nnz = assemble[0].get("kernel_nnz", {}).get("K") if assemble else None
    # minmax maps the smallest stored utility to 0, which the CSR kernel does not store.
    rows.append(
        f"\nKernel: `kernel.diagonal: {kernel['diagonal']}`, `kernel.scaling: {kernel['scaling']}`"
        + (
            f"; K stores {nnz:,} nonzero entries of the {r['n'] * (r['k'] + r['random']):,} candidate pairs."
            if nnz
            else "."
        )
    )
    return (
        "\n".join(rows) + f"\n\nMeasured {doc['date']} on {m.get('cpu')} ({m.get('cpus')} cores, "
        f"{m.get('memory_gib')} GiB); load average {m.get('load_avg_1m')} at the end: `{doc['command']}`."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--random", type=int, default=4)
    p.add_argument("--dim", type=int, default=128, help="Width of the synthetic embedding vectors.")
    p.add_argument("--block-size", type=int, default=128, help="scoring.block_size: pairs per shard = block_size**2.")
    p.add_argument("--tokens-per-s", type=float, default=None, help="For the dry run's estimate (hours).")
    p.add_argument("--work", default="/tmp/delift-scale")
    p.add_argument(
        "--dry-run-only", action="store_true", help="Stop after the dry run (no shards, assembly, selection)."
    )
    p.add_argument(
        "--write", action="store_true", help="Write benchmarks/results/scale_1m.json (only for --n 1000000)."
    )
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)

    from delift_ray import job, stages
    from delift_ray.config import validate_config
    from delift_ray.steps.assemble import assemble
    from delift_ray.steps.base import StepLog, peak_rss_bytes
    from delift_ray.steps.plan import open_store
    from delift_ray.steps.select import select

    cfg = validate_config(job_config(args))
    cpu_log = StepCPU()
    logging.getLogger("delift_ray").addHandler(cpu_log)
    logging.getLogger("delift_ray").setLevel(logging.INFO)
    setup: dict = {}
    t0 = time.perf_counter()
    if not os.path.exists(cfg.data):
        write_jsonl(cfg.data, args.n)
    setup["write_jsonl_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    setup["embedding_shards_written"] = fill_embedding_store(cfg, args.n, args.dim)
    setup["fill_embedding_store_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({"setup": setup}), flush=True)

    t0, c0 = time.perf_counter(), cpu_seconds()
    cpu_log.mark = c0
    dry = job.run(cfg, dry_run=True, progress=False, tokens_per_s=args.tokens_per_s)
    dry_wall, dry_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    dry_steps = [{**s, "cpu_s": cpu_log.cpu.get(s["name"])} for s in dry.steps]
    print(json.dumps({"dry_run_wall_s": round(dry_wall, 1), "steps": dry_steps}), flush=True)
    out = {
        "n": args.n,
        "k": args.k,
        "random": args.random,
        "embedding_dim": args.dim,
        "block_size": args.block_size,
        "kernel": {"diagonal": cfg.kernel.diagonal, "scaling": cfg.kernel.scaling},
        "embeddings": f"synthetic: {args.dim}-d unit vectors, n/1000 Gaussian clusters, written to the job's "
        "embedding store before the run; the embed step reads them (embedded 0)",
        "setup": setup,
        "dry_run": {
            "wall_s": round(dry_wall, 1),
            "cpu_s": round(dry_cpu, 1),
            "peak_rss_gib": max(s["peak_rss_gib"] for s in dry_steps),
            "steps": dry_steps,
            "report": dry.report.as_dict(),
        },
    }

    if not args.dry_run_only:
        steps = StepLog()
        sets, plan, candidates = dry.sets, dry.planned, dry.candidates
        t0 = time.perf_counter()
        shards = write_utility_shards(cfg, sets, plan)
        cpu_log.mark = cpu_seconds()
        shards["write_s"] = round(time.perf_counter() - t0, 1)
        shards["peak_rss_gib"] = round(peak_rss_bytes() / 2**30, 3)
        del plan, dry
        store = open_store(cfg)
        kernels = steps.run("assemble", assemble, cfg, sets, store, candidates)
        budget = stages.budget_count(cfg.budget, len(sets["pool"].samples))
        steps.run("select", select, cfg, kernels, budget, curve=True)  # as the job runs it
        out["synthetic_scoring"] = shards
        out["after_scoring"] = {"steps": [{**s, "cpu_s": cpu_log.cpu.get(s["name"])} for s in steps.as_list()]}
        print(json.dumps(out["after_scoring"]), flush=True)

    from benchmarks.results import machine

    out["load_avg_1m_at_end"] = machine()["load_avg_1m"]
    if args.write and args.n == 1_000_000:
        print(write_result("scale_1m", out))
    else:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
