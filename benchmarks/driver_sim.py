"""Does the driver keep up with a large cluster? The real dispatcher against stand-in scorers.

A real local Ray and the job's own dispatcher (``dispatch.actor_pool`` placing the actors
on a declared accelerator resource, ``dispatch.dispatch`` with its affinity queue, retries
and in-flight limit) send real :class:`~delift_ray.scoring.actor.PairBlock` objects to
scorer actors that stand in for GPUs. Each stand-in sleeps for the time the block takes
on an H100, then writes the block's real shard (utilities of the right shape, random
values) with the job's ``ShardStore.write``, as ``BlockScorer.score_pairs`` does, and
returns a ``BlockResult``.

Time per block, stated: the 1M synthetic dry run (``scale_1m.json``) plans 2,620,718,138
computed tokens for 36,000,000 pairs (72.8 a pair, prefix reuse on) in blocks of about
16,384 pairs; at the 400,000 computed tokens/s per H100 that docs/dry-run.md derives for a
0.5B scorer, a block takes about 3.0 s. 256 GPUs then ask for about 86 blocks a second.

Measured per stand-in count: the blocks per second the driver sustained, utilisation
(stand-in busy time, sleep plus shard write, over stand-ins x wall time of the dispatch),
the driver's CPU seconds per block and its share of one core, and its peak RSS. The GPU
time share is the stand-ins' sleeps over stand-ins x wall time (what the GPUs would be
busy); the busy share adds their shard writes. On a
machine with fewer cores than stand-ins need for their shard writes, utilisation also
measures CPU contention; the driver's CPU per block does not, and bounds the cluster it
can feed: ``blocks/s it can dispatch = 1 / (driver CPU s per block)``.

    python -m benchmarks.driver_sim --standins 8,32,128 --no-shards-at 128 --write
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass

import numpy as np

from benchmarks.results import write_result

TOKENS_PER_PAIR = 2_620_718_138 / 36_000_000  # scale_1m.json's dry run: computed tokens per pair
H100_TOKENS_PER_S = 400_000.0  # docs/dry-run.md: a 0.5B scorer on one H100, prefix reuse on
SIDE = 128  # scoring.block_size: helped x examples per block
SEGMENT = {"no_example": 40, "tail": 30, "head": 40, "response": 15}  # tokens a sample, per segment


@dataclass
class LightBlock:
    """A block with PairBlock's fields and arrays (the same bytes to pickle) whose class
    imports only numpy: ``--light`` stand-ins load neither pyarrow nor pydantic, which is
    what lets 256 of them fit in 24 GB (a stand-in that imports the job's modules holds
    about 100 MB)."""

    key: str
    helped_ids: list
    helped: dict
    d_without: np.ndarray
    example_ids: list
    examples: dict
    h_idx: np.ndarray
    e_idx: np.ndarray

    @property
    def size(self) -> int:
        return int(self.h_idx.size)

    @property
    def group(self) -> tuple:
        return tuple(self.example_ids)


@dataclass
class LightResult:
    key: str
    n_pairs: int
    stats: dict


class StandInScorer:
    """An H100's time per block, then the block's real shard; the real actor's interface."""

    def __init__(self, root: str, fingerprint: str, seconds_per_pair: float, write: bool = True, light: bool = False):
        self.seconds_per_pair = seconds_per_pair
        self.write = write
        self.light = light
        if light:
            return
        from delift_ray.scoring.actor import BlockResult  # imported before the clock starts
        from delift_ray.storage import ShardStore

        self.result = BlockResult
        self.store = ShardStore(root, fingerprint)

    def score_pairs(self, block):
        import pyarrow as pa

        from delift_ray.storage import UTILITY

        t0 = time.perf_counter()
        time.sleep(block.size * self.seconds_per_pair)
        if self.light:
            return LightResult(block.key, block.size, {"busy_s": time.perf_counter() - t0})
        if not self.write:
            return self.result(block.key, block.size, {"busy_s": time.perf_counter() - t0}, "stand-in", "", "")
        rng = np.random.default_rng(zlib.crc32(block.key.encode()))
        d_with = rng.random(block.size)
        table = pa.table(
            {
                "helped_id": [block.helped_ids[h] for h in block.h_idx],
                "example_id": [block.example_ids[e] for e in block.e_idx],
                "utility": (block.d_without[block.h_idx] - d_with).astype(np.float32),
                "distance": d_with.astype(np.float32),
            }
        )
        self.store.write(UTILITY, block.key, table)
        return self.result(block.key, block.size, {"busy_s": time.perf_counter() - t0}, "stand-in", "bfloat16", "")

    def shutdown(self) -> None:
        pass

    def memory(self) -> tuple[int, int]:
        """(pid, unique set size in bytes) of this stand-in's process."""
        import psutil

        me = psutil.Process()
        return me.pid, me.memory_full_info().uss


def blocks_for(n_blocks: int, seed: int = 0, light: bool = False) -> list:
    """``n_blocks`` dense SIDE x SIDE blocks over distinct samples, with token segments of
    the stated lengths (their values do not matter to the driver); ``light``: as
    :class:`LightBlock`, the same arrays."""
    from delift_ray.planning import block_key
    from delift_ray.prompts import Ragged, TokenizedSet
    from delift_ray.scoring.actor import PairBlock

    rng = np.random.default_rng(seed)

    def tokens(n: int):
        segs = {}
        for name, length in SEGMENT.items():
            values, offsets = rng.integers(0, 50_000, n * length, dtype=np.int32), np.arange(n + 1) * length
            segs[name] = (values, offsets) if light else Ragged(values, offsets)
        return segs if light else TokenizedSet(**segs)

    h_idx = np.repeat(np.arange(SIDE), SIDE)
    e_idx = np.tile(np.arange(SIDE), SIDE)
    out = []
    for b in range(n_blocks):
        helped = [f"h{b:06d}-{i:03d}" for i in range(SIDE)]
        examples = [f"e{b:06d}-{i:03d}" for i in range(SIDE)]
        out.append(
            (LightBlock if light else PairBlock)(
                block_key("sim", helped, examples),
                helped,
                tokens(SIDE),
                rng.random(SIDE),
                examples,
                tokens(SIDE),
                h_idx,
                e_idx,
            )
        )
    return out


def driver_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_one(standins: int, blocks_each: int, work: str, write: bool = True, light: bool = False) -> dict:
    import ray

    from delift_ray import dispatch
    from delift_ray.config import validate_config
    from delift_ray.steps.base import peak_rss_bytes, reset_peak_rss

    seconds_per_pair = TOKENS_PER_PAIR / H100_TOKENS_PER_S
    root = os.path.join(work, f"store-{standins}")
    cfg = validate_config(
        {
            "data": "unused.jsonl",
            "model": "unused",
            "out": os.path.join(work, "out"),
            "ray": {"accelerator": "SIM_GPU", "num_cpus_per_scorer": 0.001, "object_store_memory": 512 * 2**20},
            "storage": {"probe": False},
        }
    )
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        resources={"SIM_GPU": standins},
        object_store_memory=cfg.ray.object_store_memory,
        include_dashboard=False,
        logging_level="ERROR",
    )
    try:
        blocks = blocks_for(standins * blocks_each, light=light)
        t0 = time.perf_counter()
        with dispatch.actor_pool(cfg, StandInScorer, root, "sim", seconds_per_pair, write and not light, light) as pool:
            # Every stand-in up before the clock starts: start-up is Ray's cost, not the driver's.
            ray.get([a.shutdown.remote() for a in pool.actors])
            start_s = time.perf_counter() - t0
            uss = [m[1] for m in ray.get([a.memory.remote() for a in pool.actors])]
            busy = []
            reset_peak_rss()
            c0, t1 = driver_cpu_s(), time.perf_counter()
            rep = dispatch.dispatch(
                pool,
                blocks,
                "score_pairs",
                max_retries=1,
                on_done=lambda block, result: busy.append(result.stats["busy_s"]),
            )
            wall = time.perf_counter() - t1
            cpu = driver_cpu_s() - c0
        shards = len(os.listdir(os.path.join(root, "utility", "fp=sim"))) if write and not light else 0
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    n = len(rep.done)
    ideal = n * SIDE * SIDE * seconds_per_pair / standins
    return {
        "standins": standins,
        "shards": write and not light,
        "light": light,
        "blocks": n,
        "shards_written": shards,
        "block_s_h100": round(SIDE * SIDE * seconds_per_pair, 3),
        "actor_start_s": round(start_s, 1),
        "dispatch_wall_s": round(wall, 2),
        "ideal_wall_s": round(ideal, 2),
        "blocks_per_s": round(n / wall, 2),
        "blocks_per_s_needed": round(standins / (SIDE * SIDE * seconds_per_pair), 2),
        "utilisation": round(sum(busy) / (standins * wall), 3),
        "driver_cpu_s": round(cpu, 2),
        "driver_cpu_share": round(cpu / wall, 3),
        "driver_cpu_ms_per_block": round(1000 * cpu / n, 2),
        "driver_peak_rss_gib": round(peak_rss_bytes() / 2**30, 3),
        "standin_uss_mib": round(float(np.mean(uss)) / 2**20, 1),
        "retries": rep.retries,
    }


def gpu_share(run: dict) -> float:
    """The stand-ins' H100 time (their sleeps) over stand-ins x wall: what a GPU would be busy."""
    return run["ideal_wall_s"] / run["dispatch_wall_s"]


def _kind(run: dict) -> str:
    if run.get("light"):
        return ", light"
    return "" if run.get("shards", True) else ", no shards"


def markdown(doc: dict) -> str:
    """The docs' table of a committed result (benchmarks/results/driver_sim.json)."""
    r = doc["results"]
    rows = [
        "| stand-ins | blocks | blocks/s needed | blocks/s sustained | GPU time share | busy share | "
        "driver CPU share | driver ms CPU per block | driver peak RSS GiB | stand-in USS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["runs"]:
        rows.append(
            f"| {x['standins']}{_kind(x)} | {x['blocks']:,} | {x['blocks_per_s_needed']:g} | {x['blocks_per_s']:g} | "
            f"{100 * gpu_share(x):.0f}% | {100 * x['utilisation']:.0f}% | {100 * x['driver_cpu_share']:.1f}% | "
            f"{x['driver_cpu_ms_per_block']:g} | {x['driver_peak_rss_gib']:g} | {x.get('standin_uss_mib', 'n/a')} |"
        )
    a, m = r["assumption"], doc["machine"]
    rows += [
        "",
        f"A block: {a['pairs_per_block']:,} pairs, {a['block_s_h100']:g} s on an H100 ({a['computed_tokens_per_pair']:g} "
        f"computed tokens a pair at {a['h100_computed_tokens_per_s']:,.0f} tokens/s). At the sweep's worst driver CPU "
        f"per block, a driver with a core of its own feeds about **{r['gpus_fed_at_90pct']:,} GPUs** at 90%. "
        f"{m.get('cpus')} cores ({', '.join(m.get('cpu_flags') or [])}), load {m.get('load_avg_1m')} at the end; "
        f"{doc['date'][:10]}; `{doc['command']}`.",
    ]
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--standins", default="8,32,128", help="Comma-separated stand-in counts.")
    p.add_argument("--blocks-each", type=int, default=8, help="Blocks per stand-in.")
    p.add_argument(
        "--no-shards-at",
        default="",
        help="Comma-separated stand-in counts run again without shard writes: the driver alone, "
        "when the machine has too few cores for the stand-ins' writes.",
    )
    p.add_argument(
        "--light-at",
        default="",
        help="Comma-separated stand-in counts run with light stand-ins (LightBlock, no shards): more of "
        "them fit in memory.",
    )
    p.add_argument("--write", action="store_true", help="Write benchmarks/results/driver_sim.json.")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="delift-driver-sim-")
    runs = []
    try:
        todo = [(int(x), True, False) for x in args.standins.split(",") if x]
        todo += [(int(x), False, False) for x in args.no_shards_at.split(",") if x]
        todo += [(int(x), False, True) for x in args.light_at.split(",") if x]
        for n, write, light in todo:
            runs.append(run_one(n, args.blocks_each, work, write, light))
            print(json.dumps(runs[-1]), flush=True)
            if args.write:  # each run is kept as it finishes
                write_result("driver_sim", summary(runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = summary(runs)
    print(json.dumps(out, indent=1))
    if args.write:
        print(write_result("driver_sim", out))


def summary(runs: list[dict]) -> dict:
    per_block = max(r["driver_cpu_ms_per_block"] for r in runs) / 1000
    block_s = runs[0]["block_s_h100"]
    return {
        "assumption": {
            "computed_tokens_per_pair": round(TOKENS_PER_PAIR, 1),
            "h100_computed_tokens_per_s": H100_TOKENS_PER_S,
            "pairs_per_block": SIDE * SIDE,
            "block_s_h100": block_s,
        },
        "runs": runs,
        # A driver with a core of its own dispatches 1 / (CPU s per block) blocks a second; at
        # 90% of that it feeds this many GPUs (the worst CPU per block of the sweep).
        "gpus_fed_at_90pct": int(0.9 * block_s / per_block),
    }


if __name__ == "__main__":
    main()
