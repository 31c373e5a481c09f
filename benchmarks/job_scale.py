"""The whole knn job at N = 100,000 on real engines, against N = 2,000 in the same session.

    python -m benchmarks.job_scale --n 100000 --small 2000 --k 8 --random 2 --work /tmp/job100k --write

Every run is ``delift_ray.run`` in a child process (``python -m benchmarks.job_scale child``),
as a user's driver: the tiny test model, real vLLM engines (embedding through the pooling
runner, scoring), the real dispatcher and the real shard store on the local disk. In order:

1. ``small``: N = --small, from nothing (the baseline the 100k rate is compared with);
2. ``killed``: N = --n, from nothing; the driver is sent SIGKILL once half of the planned
   blocks have a shard. Left-over processes of its Ray cluster are killed by pid;
3. ``resumed``: the same command again, which finishes the run from the stored shards;
4. ``cached``: a fresh out dir with the first run's store as its cache: every embedding and
   pair is reused.

Each child reports its step times, its driver CPU seconds per step (the driver process's
CPU time at each step's log line), the peak RSS of the driver and of every Ray process
below it (VmHWM, sampled every 2 s), and the store's shard count and mean size. The
parent adds the pairs stored at the kill (from the shards' footers) and what the resume
scored beyond the pairs missing then.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.fixtures import build_tiny_model, descendants
from benchmarks.results import write_result
from benchmarks.scale import StepCPU, write_jsonl

PLAN_LINE = re.compile(r"plan: (\d+) of (\d+) pairs to score .* in (\d+) blocks")


def job_config(n: int, k: int, random: int, block_size: int, work: str, out: str, cache: str | None) -> dict:
    """The knn job both sizes run (the settings of ``benchmarks.knn_job``)."""
    data = os.path.join(work, f"pool-{n}.jsonl")
    if not os.path.exists(data):
        write_jsonl(data, n)
    model = os.path.join(work, "tiny")
    if not os.path.exists(os.path.join(model, "config.json")):
        build_tiny_model(model, seed=0)
    return {
        "data": data,
        "model": model,
        "out": out,
        "cache": cache,
        "budget": 0.3,
        "engine": {"dtype": "float32", "max_model_len": 512, "block_size": 32, "kv_cache_space_gib": 1},
        "scoring": {"block_size": block_size},
        "kernel": {"type": "knn", "k": k, "random": random},
    }


class PeakRSS(threading.Thread):
    """Peak RSS (VmHWM) of this process and of every process below it, sampled every 2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[int, tuple[str, int]] = {}
        self.stop = threading.Event()

    def sample(self) -> None:
        for pid in descendants(os.getpid()) | {os.getpid()}:
            try:
                with open(f"/proc/{pid}/status") as f:
                    hwm = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    name = f.read().split(b"\0")[0].decode(errors="replace")[:60]
            except (OSError, StopIteration, ValueError):
                continue
            old = self.peaks.get(pid, ("", 0))[1]
            self.peaks[pid] = (name, max(old, hwm * 1024))

    def run(self) -> None:
        while not self.stop.wait(2.0):
            self.sample()

    def report(self) -> dict:
        me = self.peaks.get(os.getpid(), ("", 0))[1]
        ray = sorted(((n, b) for p, (n, b) in self.peaks.items() if p != os.getpid()), key=lambda x: -x[1])
        actors = [(n, b) for n, b in ray if n.startswith("ray::") and "IDLE" not in n]
        return {
            "driver_peak_rss_gib": round(me / 2**30, 3),
            "actor_peak_rss_gib": {f"{n} #{i}": round(b / 2**30, 3) for i, (n, b) in enumerate(actors)},
            "largest_other_processes_gib": {n: round(b / 2**30, 3) for n, b in ray if not n.startswith("ray::")},
        }


def store_shards(cfg: dict) -> dict:
    from delift_ray.config import validate_config
    from delift_ray.steps.plan import open_store
    from delift_ray.storage import UTILITY

    shards = open_store(validate_config(cfg)).list_shards(UTILITY)
    sizes = [s.size for s in shards if s.size is not None]
    return {"utility_shards": len(shards), "mean_shard_bytes": round(sum(sizes) / max(len(sizes), 1))}


def stored_pairs(cfg: dict) -> int:
    """Pairs in the store's utility shards, from their footers."""
    import pyarrow.parquet as pq

    from delift_ray.config import validate_config
    from delift_ray.steps.plan import open_store
    from delift_ray.storage import UTILITY

    store = open_store(validate_config(cfg))
    return sum(pq.read_metadata(s.path).num_rows for s in store.list_shards(UTILITY))


def child(args) -> None:
    """One measured run in this process; its figures as JSON on --result."""
    import logging

    from delift_ray import run

    cfg = job_config(args.n, args.k, args.random, args.block_size, args.work, args.out, args.cache)
    cpu = StepCPU()
    logging.getLogger("delift_ray").addHandler(cpu)
    logging.getLogger("delift_ray").setLevel(logging.INFO)
    rss = PeakRSS()
    rss.start()
    t0 = time.perf_counter()
    r = run(cfg, progress=False)
    wall = time.perf_counter() - t0
    rss.stop.set()
    rss.sample()
    c = r.counts
    out = {
        "n": c["samples"],
        "pairs_total": c["pairs_total"],
        "pairs_scored": c["pairs_scored"],
        "pairs_reused": c["pairs_reused"],
        "baselines_scored": c["baselines_scored"],
        "embedded": c.get("embedded"),
        "embeddings_reused": c.get("embeddings_reused"),
        "kernel_nnz": c.get("kernel_nnz"),
        "selected": c["selected"],
        "timings": r.timings,
        "driver_cpu_s": cpu.cpu,
        "score_pairs_per_s": round(c["pairs_scored"] / r.timings["score_s"], 1) if c["pairs_scored"] else None,
        "wall_s": round(wall, 1),
        **rss.report(),
        **store_shards(cfg),
    }
    Path(args.result).write_text(json.dumps(out, indent=1))


def launch(args, name: str, n: int, out: str, cache: str | None, *, fresh: bool, kill_at: float | None = None) -> dict:
    """Run one child (``fresh``: from an empty out dir); with ``kill_at``, SIGKILL its driver
    once that share of the planned blocks is stored."""
    if fresh and os.path.exists(out):
        shutil.rmtree(out)
    result = os.path.join(args.work, f"{name}.json")
    if os.path.exists(result):
        os.remove(result)
    cmd = [sys.executable, "-m", "benchmarks.job_scale", "child", "--n", str(n), "--k", str(args.k)]
    cmd += ["--random", str(args.random), "--block-size", str(args.block_size), "--work", args.work]
    cmd += ["--out", out, "--result", result] + (["--cache", cache] if cache else [])
    log = open(os.path.join(args.work, f"{name}.log"), "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE, text=True)
    plan: dict = {}

    def tee() -> None:
        for line in proc.stderr:
            log.write(line)
            log.flush()
            m = PLAN_LINE.search(line)
            if m and not plan:
                plan.update(to_score=int(m[1]), total=int(m[2]), blocks=int(m[3]), at_s=time.perf_counter() - t0)

    reader = threading.Thread(target=tee, daemon=True)
    reader.start()
    killed = None
    if kill_at is not None:
        cfg = None  # built once the child has planned: it writes the data and the model first
        while proc.poll() is None:
            time.sleep(5)
            if plan and cfg is None:
                cfg = job_config(n, args.k, args.random, args.block_size, args.work, out, cache)
            if plan and store_shards(cfg)["utility_shards"] >= kill_at * plan["blocks"]:
                below = descendants(proc.pid)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                at = time.perf_counter() - t0
                time.sleep(10)
                left = [p for p in below if os.path.exists(f"/proc/{p}")]
                for p in left:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
                killed = {
                    "killed_at_s": round(at, 1),
                    "scoring_s_before_kill": round(at - plan["at_s"], 1),
                    "plan": plan,
                    "processes_left_after_kill": len(left),
                    **store_shards(cfg),
                    "pairs_stored_at_kill": stored_pairs(cfg),
                }
                break
    proc.wait()
    reader.join(timeout=30)
    log.close()
    if killed is not None:
        return killed
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (rc {proc.returncode}): see {args.work}/{name}.log")
    return json.loads(Path(result).read_text())


STEPS = ("ingest", "embed", "neighbours", "plan", "score", "assemble", "select")


def markdown(doc: dict, synthetic_1m: dict | None = None) -> str:
    """The docs' table of a committed result (benchmarks/results/job_scale.json); with the
    synthetic 1M figure (scale_1m.json), its assembly time scaled to this run's pair count."""
    r, m = doc["results"], doc["machine"]
    s = r["summary"]
    head = "| run | samples | pairs scored / reused | wall s | " + " | ".join(f"{x} s" for x in STEPS)
    rows = [
        head + " | pairs/s | driver peak RSS GiB | largest actor RSS GiB | shards (mean KiB) |",
        "|---|---|---|---|" + "---|" * len(STEPS) + "---|---|---|---|",
    ]
    for name in ("small", "resumed", "cached"):
        x = r[name]
        t = x["timings"]
        actor = max(x["actor_peak_rss_gib"].values(), default=None)
        rows.append(
            f"| {name} | {x['n']:,} | {x['pairs_scored']:,} / {x['pairs_reused']:,} | {x['wall_s']:g} | "
            + " | ".join(f"{t.get(f'{st}_s', 0):g}" for st in STEPS)
            + f" | {x['score_pairs_per_s'] or '-'} | {x['driver_peak_rss_gib']:g} | "
            f"{'-' if actor is None else f'{actor:g}'} | {x['utility_shards']:,} "
            f"({x['mean_shard_bytes'] / 1024:.1f}) |"
        )
    k = r["killed"]
    lines = rows + [
        "",
        f"The first {r['settings']['n']:,}-sample run was killed (SIGKILL to the driver) {k['killed_at_s']:g} s in, "
        f"with {k['utility_shards']:,} of {k['plan']['blocks']:,} blocks stored ({k['pairs_stored_at_kill']:,} pairs); "
        f"{k['processes_left_after_kill']} of its Ray processes outlived the driver and were killed by pid. "
        f"`resumed` is the same command again: it scored the {s['pairs_missing_at_kill']:,} pairs missing then, "
        f"and {s['pairs_scored_by_resume_beyond_missing']:,} pairs beyond them. The first run took "
        f"{s['first_run_wall_s']:g} s in all (killed part plus resume); the fully cached run took "
        f"{s['cached_wall_s']:g} s, {100 * s['cached_share_of_first_run']:.1f}% of it. Scoring rate: "
        f"{s['pairs_per_s_resumed']:g} pairs/s at {r['settings']['n']:,} samples (the resume) against "
        f"{s['pairs_per_s_small']:g} at {r['settings']['small']:,}, "
        f"{s['pairs_per_s_ratio_resumed_to_small']:g}x.",
    ]
    if synthetic_1m:
        sy = synthetic_1m["results"]
        pairs_1m = sy["n"] * (sy["k"] + sy["random"])
        at_1m = next(st["seconds"] for st in sy["after_scoring"]["steps"] if st["name"] == "assemble")
        ours = r["resumed"]["pairs_total"]
        lines.append(
            f"Assembly from the real shards: {r['cached']['timings']['assemble_s']:g} s for {ours:,} pairs (the cached "
            f"run); the synthetic 1M assembly ({at_1m:g} s for {pairs_1m:,} pairs) scaled to this pair count is "
            f"{at_1m * ours / pairs_1m:.1f} s."
        )
    lines.append(
        f"Tiny test model, k {r['settings']['k']} + random {r['settings']['random']}, one CPU engine; "
        f"{m.get('cpus')} cores ({', '.join(m.get('cpu_flags') or [])}), load {m.get('load_avg_1m')} at the end; "
        f"{doc['date'][:10]}; `{doc['command']}`."
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", nargs="?", default="all", choices=("all", "child"))
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--small", type=int, default=2_000)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--random", type=int, default=2)
    p.add_argument("--block-size", type=int, default=64, help="scoring.block_size")
    p.add_argument("--work", default="/tmp/delift-job-scale")
    p.add_argument("--write", action="store_true", help="write benchmarks/results/job_scale.json")
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    if args.mode == "child":
        return child(args)

    w = args.work
    small = launch(args, "small", args.small, os.path.join(w, f"run-{args.small}"), None, fresh=True)
    print("small", json.dumps(small), flush=True)
    first = os.path.join(w, f"run-{args.n}")
    killed = launch(args, "killed", args.n, first, None, fresh=True, kill_at=0.5)
    print("killed", json.dumps(killed), flush=True)
    resumed = launch(args, "resumed", args.n, first, None, fresh=False)
    print("resumed", json.dumps(resumed), flush=True)
    cached = launch(args, "cached", args.n, os.path.join(w, f"run-{args.n}-cached"), first, fresh=True)
    print("cached", json.dumps(cached), flush=True)

    missing_at_kill = resumed["pairs_total"] - killed["pairs_stored_at_kill"]
    first_wall = killed["killed_at_s"] + resumed["wall_s"]
    score_s = killed["scoring_s_before_kill"] + resumed["timings"]["score_s"]
    pairs_per_s = round(killed["pairs_stored_at_kill"] / killed["scoring_s_before_kill"], 1)
    summary = {
        "pairs_per_s_small": small["score_pairs_per_s"],
        "pairs_per_s_before_kill_with_engine_start": pairs_per_s,
        "pairs_per_s_resumed": resumed["score_pairs_per_s"],
        "pairs_per_s_ratio_resumed_to_small": round(resumed["score_pairs_per_s"] / small["score_pairs_per_s"], 3),
        "first_run_wall_s": round(first_wall, 1),
        "first_run_scoring_s": round(score_s, 1),
        "cached_wall_s": cached["wall_s"],
        "cached_share_of_first_run": round(cached["wall_s"] / first_wall, 4),
        "driver_peak_rss_gib": max(r["driver_peak_rss_gib"] for r in (resumed, cached)),
        "pairs_missing_at_kill": missing_at_kill,
        "pairs_scored_by_resume_beyond_missing": resumed["pairs_scored"] - missing_at_kill,
    }
    doc = {
        "settings": {"n": args.n, "small": args.small, "k": args.k, "random": args.random},
        "small": small,
        "killed": killed,
        "resumed": resumed,
        "cached": cached,
        "summary": summary,
    }
    print(json.dumps(summary, indent=1), flush=True)
    if args.write:
        write_result("job_scale", doc)


if __name__ == "__main__":
    main()
