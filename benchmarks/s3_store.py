"""The shard store at thousands of shards on S3 (a real moto server) against a local disk.

Small shards (``--pairs`` pairs each) so the time goes to storage, not to Parquet. For each
store, through the job's own functions:

1. write: ``ShardStore.write`` per shard, as a scorer actor writes its block;
2. resume: what the plan step does at a resume to learn which pairs are stored
   (``planning.stored_pair_keys(store.iter_relevant(UTILITY, ids, ids), index)``, as
   ``steps.plan.plan`` calls it): list the store, read the footers,
   read and validate the relevant shards.

Requests are counted from the moto server's own request log (one line per HTTP request),
by method, between the phases. The server is started here on a free loopback port and
stopped by its pid.

    python -m benchmarks.s3_store --shards 5000 --write
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

from benchmarks.results import write_result

BUCKET = "delift-bench"
REQUEST = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP')
COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # the server colours some methods


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    """moto_server on loopback, its request log read back by method."""

    def __init__(self, log_path: str):
        self.port = free_port()
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("moto_server did not start") from None
                time.sleep(0.2)
        self.seen = 0

    def requests(self) -> dict[str, int]:
        """Requests since the last call, by method (``GET?list-type`` counted as LIST)."""
        self.log.flush()
        with open(self.log_path) as f:
            lines = f.read().splitlines()
        new, self.seen = lines[self.seen :], len(lines)
        out: collections.Counter = collections.Counter()
        for line in new:
            m = REQUEST.search(COLOUR.sub("", line))
            if m:
                method, target = m.groups()
                out["LIST" if method == "GET" and "list-type" in target else method] += 1
        return dict(out)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def shard_table(i: int, pairs: int) -> pa.Table:
    side = int(np.sqrt(pairs))
    h = [f"s{i * side + a:07d}" for a in range(side) for _ in range(side)]
    e = [f"s{(i * side + b + 1) % (10**7):07d}" for _ in range(side) for b in range(side)]
    u = np.random.default_rng(i).normal(size=len(h)).astype(np.float32)
    return pa.table({"helped_id": h, "example_id": e, "utility": u, "distance": np.abs(u)})


def measure(root: str, n: int, pairs: int, moto: Moto | None) -> dict:
    from delift_ray.planning import IdIndex, stored_pair_keys
    from delift_ray.storage import UTILITY, ShardStore
    from delift_ray.storage import shards as storage

    tables = [shard_table(i, pairs) for i in range(n)]
    store = ShardStore(root, "fp")
    if moto:
        moto.requests()
    t0 = time.perf_counter()
    for i, t in enumerate(tables):
        store.write(UTILITY, f"b{i:06d}", t)
    write_s = time.perf_counter() - t0
    write_req = moto.requests() if moto else {}

    ids = sorted({x for t in tables for c in ("helped_id", "example_id") for x in t.column(c).to_pylist()})
    storage._FOOTER_MEMO.clear()  # a resumed driver is a new process: nothing memoised
    store = ShardStore(root, "fp")
    t0 = time.perf_counter()
    stored = stored_pair_keys(store.iter_relevant(UTILITY, ids, ids), IdIndex({"pool": ids}))
    resume_s = time.perf_counter() - t0
    resume_req = moto.requests() if moto else {}
    if len(stored) != n * pairs:
        raise SystemExit(f"{root}: the resume found {len(stored)} stored pairs, not {n * pairs}")
    return {
        "write_s": round(write_s, 2),
        "write_ms_per_shard": round(1000 * write_s / n, 2),
        "resume_s": round(resume_s, 2),
        "resume_ms_per_shard": round(1000 * resume_s / n, 2),
        "stored_pairs_found": int(len(stored)),
        "write_requests": write_req,
        "write_requests_per_shard": {k: round(v / n, 2) for k, v in write_req.items()},
        "resume_requests": resume_req,
        "resume_requests_per_shard": {k: round(v / n, 2) for k, v in resume_req.items()},
    }


def markdown(before: dict, after: dict) -> str:
    """The before / after table of docs/storage.md, from the two result files."""

    def reqs(per: dict) -> str:
        return ", ".join(f"{k} {v:.3g}" for k, v in sorted(per.items())) or "n/a"

    rows = ["| | before | after |", "|---|---|---|"]
    b, a = before["results"], after["results"]
    for label, key, fmt in [
        ("requests per shard written (S3)", "write_requests_per_shard", None),
        ("requests per shard at resume (S3)", "resume_requests_per_shard", None),
        ("write, ms per shard (S3)", "write_ms_per_shard", "ms"),
        ("resume, ms per shard (S3)", "resume_ms_per_shard", "ms"),
    ]:
        cells = []
        for r in (b, a):
            if fmt is None:  # from the totals: a listing is one request per 1,000 shards
                v = {k: n / r["shards"] for k, n in r["s3"][key.replace("_per_shard", "")].items()}
                cells.append(f"{sum(v.values()):.3g} ({reqs(v)})")
            else:
                cells.append(f"{r['s3'][key]:g}")
        rows.append(f"| {label} | {cells[0]} | {cells[1]} |")
    rows.append(
        f"| resume on local disk, ms per shard | {b['local']['resume_ms_per_shard']:g} | {a['local']['resume_ms_per_shard']:g} |"
    )
    rows.append(f"| resume, S3 against local disk | {b['resume_s3_over_local']:g}x | {a['resume_s3_over_local']:g}x |")
    m = after["machine"]
    rows.append("")
    rows.append(
        f"{a['shards']:,} shards of {a['pairs_per_shard']} pairs; {m.get('cpus')} cores, "
        f"{', '.join(m.get('cpu_flags') or [])}, load {m.get('load_avg_1m')}; before {before['date'][:10]}, "
        f"after {after['date'][:10]}, one after the other on the same machine (`{before['command']}` on the "
        f"previous commit, `{after['command']}`)."
    )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=5000)
    p.add_argument("--pairs", type=int, default=4, help="Pairs per shard (a square block).")
    p.add_argument("--label", default="", help="Suffix of the result's name (e.g. before / after a change).")
    p.add_argument("--write", action="store_true", help="Write benchmarks/results/s3_store<label>.json.")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="delift-s3-")
    moto = Moto(os.path.join(work, "moto.log"))
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    try:
        import pyarrow.fs as pafs

        from delift_ray.storage import set_endpoint

        set_endpoint(moto.endpoint)
        pafs.S3FileSystem(endpoint_override=moto.endpoint, allow_bucket_creation=True).create_dir(BUCKET)
        out = {
            "shards": args.shards,
            "pairs_per_shard": args.pairs,
            "local": measure(os.path.join(work, "cache"), args.shards, args.pairs, None),
            "s3": measure(f"s3://{BUCKET}/cache", args.shards, args.pairs, moto),
            "server": "moto_server (moto[server]) on loopback, one process",
        }
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out["resume_s3_over_local"] = round(out["s3"]["resume_s"] / max(out["local"]["resume_s"], 1e-9), 1)
    print(json.dumps(out, indent=1))
    if args.write:
        print(write_result(f"s3_store{args.label}", out))


if __name__ == "__main__":
    main()
