"""Several Ray nodes on one machine, each a real raylet: placement, a node lost mid-run,
and a store that one node cannot see. The real vLLM CPU engine with the tiny model.

The cluster (``ray.cluster_utils.Cluster``, Ray's own multi-node helper): a head with no
accelerator and two workers declaring one GPU each. The CPU build of vLLM starts with a
GPU declared (Ray only sets ``CUDA_VISIBLE_DEVICES``; vLLM's platform is the build's), so
the scorers reserve real GPU ids from Ray. A lost node is its raylet and every process
the raylet started, killed at once; the GCS health check is shortened so that it is
declared dead within seconds. Only processes this module started are
stopped, by pid.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.fixtures import descendants
from delift_ray.errors import StorageError
from delift_ray.job import run
from delift_ray.storage import PROBE_DIR, TMP_PREFIX, UTILITY
from tests.helpers import write_rows

pytestmark = [pytest.mark.engine, pytest.mark.ray]

MIN_OBJECT_STORE = 78643200
ENGINE = {"dtype": "float32", "max_model_len": 256, "block_size": 32, "kv_cache_space_gib": 1}
# 20 x 20 pairs in 100 blocks: after the first shard, most blocks are still queued when a node goes.
POOL = [
    {"prompt": f"Spell the number {k} in words.", "response": f"The number {k} is written {k * 'i'}."}
    for k in range(20)
]
N = len(POOL)
# A killed raylet is declared dead after a few seconds instead of Ray's default tens of
# seconds (tighter ones, 500 ms, failed the head's own start on a loaded 2-core machine).
HEALTH = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_timeout_ms": "2000",
}


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU, no GPU) and two workers (1 CPU, 1 GPU each), the smallest object stores."""
    import ray
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in HEALTH}
    os.environ.update(HEALTH)
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": MIN_OBJECT_STORE, "include_dashboard": False},
    )
    try:
        workers = [c.add_node(num_cpus=1, num_gpus=1, object_store_memory=MIN_OBJECT_STORE) for _ in range(2)]
        c.wait_for_nodes()
        ray.init(address=c.address, logging_level="WARNING")
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pool.jsonl"
    write_rows(path, POOL)
    return str(path)


def config(cluster, model, out, data, **ray_extra):
    c, _ = cluster
    return {
        "data": data,
        "model": str(model),
        "out": str(out),
        "budget": 3,
        "engine": ENGINE,
        "scoring": {"block_size": 2},
        "ray": {"address": c.address, **ray_extra},
    }


def utilities(out):
    files = [
        f
        for f in glob.glob(os.path.join(str(out), UTILITY, "*", "*.parquet"))
        if not os.path.basename(f).startswith(TMP_PREFIX)
    ]
    t = pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()
    return t.set_index(["helped_id", "example_id"]).sort_index()


@pytest.fixture(scope="module")
def spread(cluster, tiny_model_dir, pool_file, tmp_path_factory):
    """The undisturbed run, with a relative out path: the driver's working directory is not
    the raylets' (they were started from the test's), so only a path resolved on the driver
    lands in one place."""
    here = os.getcwd()
    work = tmp_path_factory.mktemp("driver-cwd")
    os.chdir(work)
    try:
        r = run(config(cluster, tiny_model_dir, "runs/spread", pool_file), progress=False)
    finally:
        os.chdir(here)
    r.work, r.here = work, here
    return r


def test_scorers_spread_one_per_accelerator_and_recorded(cluster, spread):
    _, workers = cluster
    meta = json.load(open(spread.work / "runs" / "spread" / "run.json"))
    scorers = meta["scorers"]
    assert sorted(s["node_id"] for s in scorers) == sorted(w.node_id for w in workers)
    for s in scorers:
        assert s["accelerator"] == "GPU" and len(s["accelerator_ids"]) == 1 and s["resources"].get("GPU") == 1
        assert s["lost"] is False
    assert meta["counts"]["pairs_scored"] == N * N and meta["counts"]["node_losses"] == 0
    assert len(utilities(spread.work / "runs" / "spread")) == N * N
    # The relative path went nowhere else: not under the raylets' working directory.
    assert not os.path.exists(os.path.join(spread.here, "runs", "spread"))
    probes = spread.work / "runs" / "spread" / PROBE_DIR
    assert not probes.exists() or not os.listdir(probes)  # probes removed, and their folder when empty


def test_node_lost_mid_run_finishes_on_the_remaining_nodes(cluster, spread, tiny_model_dir, pool_file, tmp_path):
    c, workers = cluster
    victim = workers[1]
    raylet = victim.all_processes["raylet"][0].process
    out = tmp_path / "lost"
    killed = []

    def killer():
        # After the first pair shard: both engines are up and most blocks are still queued.
        # The node goes as a host does, all at once: its raylet and the workers it started
        # (our scorer among them). A scorer left running would keep scoring until the GCS
        # declares its node dead, and on an idle machine finish every block before that.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if glob.glob(os.path.join(str(out), UTILITY, "*", "*.parquet")):
                for pid in sorted(descendants(raylet.pid), reverse=True) + [raylet.pid]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    except ProcessLookupError:
                        pass
                return
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    r = run(config(cluster, tiny_model_dir, out, pool_file), progress=False)
    t.join()
    assert killed, "the worker's raylet was never killed"
    meta = json.load(open(out / "run.json"))
    counts = meta["counts"]
    assert counts["node_losses"] == 1 and counts["blocks_requeued"] >= 1, counts
    assert counts["pairs_missing"] == 0 and counts["failed_blocks"] == 0
    lost = [s for s in meta["scorers"] if s["lost"]]
    assert [s["node_id"] for s in lost] == [victim.node_id]
    t = utilities(out)
    assert len(t) == N * N and not t.index.duplicated().any()
    np.testing.assert_array_equal(t.utility, utilities(spread.work / "runs" / "spread").utility)
    assert r.selected_ids == spread.selected_ids


def test_a_store_one_node_cannot_see_fails_at_once_naming_node_and_path(cluster, tiny_model_dir, pool_file, tmp_path):
    """A node whose view of the store path is its own (a private mount: an out dir on a
    node-local disk) fails the job before any block is scored."""
    import ray

    c, _ = cluster
    store = tmp_path / "store"
    store.mkdir()
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    script = (
        f"mount -t tmpfs tmpfs {store} && exec {ray_cli} start --address={c.address} --num-cpus=1 "
        f"--resources='{{\"isolated\": 1}}' --object-store-memory={MIN_OBJECT_STORE} --block"
    )
    node = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not ray.cluster_resources().get("isolated"):
            assert node.poll() is None and time.monotonic() < deadline, node.stdout.read().decode()[-2000:]
            time.sleep(0.5)
        isolated = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("isolated"))
        with pytest.raises(StorageError) as err:
            run(
                config(cluster, tiny_model_dir, store, pool_file, accelerator="isolated", num_scorers=1), progress=False
            )
        msg = str(err.value)
        assert "\n" not in msg and isolated in msg and str(store) in msg, msg
        assert not glob.glob(os.path.join(str(store), UTILITY, "*", "*"))  # it failed before any block was scored
    finally:
        for pid in sorted(descendants(node.pid), reverse=True):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.kill()
        node.wait()
