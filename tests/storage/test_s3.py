"""Run, cache and shards on object storage: a real S3-compatible server (moto_server from
``moto[server]``) started on loopback by this module, a real local Ray, the real vLLM CPU
engine with the tiny model.

One full run on ``s3://`` is the reference of the module: the driver-kill resume, the
reselect against its ``s3://`` cache and the watcher over an ``s3://`` location reuse its
shards, so the module starts few engines. Credentials live only in the environment; the
last test searches every log, error and run.json of the module for the secret key.
"""

import glob
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from benchmarks.fixtures import scorer_pids
from delift_ray.errors import StorageError
from delift_ray.job import run
from delift_ray.lock import CHECK_WRITE_SETTLE, CONDITIONAL_PUT, LOCK_NAME, LockError, RunLock
from delift_ray.storage import PROBE_DIR, UTILITY, resolve_fs, set_endpoint
from tests.helpers import write_rows

pytestmark = [pytest.mark.engine, pytest.mark.ray]

MIN_OBJECT_STORE = 78643200
RAY_OBJECT_STORE = MIN_OBJECT_STORE  # read by the ray_cluster fixture (conftest.py)
ENGINE = {"dtype": "float32", "max_model_len": 256, "block_size": 32, "kv_cache_space_gib": 1}
BUCKET = "delift"
SECRET = f"s3cr3t-{uuid.uuid4().hex}"  # moto accepts any key pair; this one must never be written anywhere
POOL = [{"prompt": f"What is {k} plus {k}?", "response": f"{k} plus {k} is {2 * k}."} for k in range(8)]
N = len(POOL)
LOG_FILES: list[str] = []  # driver logs, server log and captured CLI output, searched for the secret


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto_server on a free loopback port, credentials in the environment (inherited by the
    Ray started after this fixture); yields the endpoint URL. Stops only its own server."""
    # This interpreter's moto (a `moto_server` found on PATH may belong to another Python).
    import moto.server  # noqa: F401  (moto[server], a dev dependency: missing means a failed test, not a skip)

    port = free_port()
    logs = tmp_path_factory.mktemp("logs")
    log = open(logs / "moto.log", "w")
    # Every log record of the module's drivers, at DEBUG, for test_secret_never_written.
    handler = logging.FileHandler(logs / "driver.log")
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    old_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    LOG_FILES.extend([str(logs / "moto.log"), str(logs / "driver.log")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "AWS_EC2_METADATA_DISABLED",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
        )
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="delift-test",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(k, None)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir(BUCKET)
        yield endpoint
    finally:
        set_endpoint(None)
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(old_level)
        handler.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def env_endpoint(s3, monkeypatch):
    """The endpoint given the standard way, AWS_ENDPOINT_URL (the other tests use the config key)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    return s3


@pytest.fixture(scope="module")
def cluster(s3, ray_cluster):
    """The module's Ray, started after the credentials are in the environment."""
    import ray

    return ray._private.worker._global_node.get_session_dir_path()


def s3fs(endpoint):
    return pafs.S3FileSystem(endpoint_override=endpoint)


def config(model, out, data, endpoint=None, **extra):
    cfg = {
        "data": data,
        "model": str(model),
        "out": out,
        "budget": 3,
        "engine": ENGINE,
        "scoring": {"block_size": 2},
        "ray": {"object_store_memory": MIN_OBJECT_STORE},
    }
    if endpoint:
        cfg["storage"] = {"endpoint": endpoint}
    cfg.update(extra)
    return cfg


def objects(endpoint, prefix):
    return [
        i
        for i in s3fs(endpoint).get_file_info(pafs.FileSelector(prefix, allow_not_found=True, recursive=True))
        if i.type == pafs.FileType.File
    ]


def read_json(endpoint, path):
    with s3fs(endpoint).open_input_stream(path) as f:
        return json.loads(f.read())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {
        "pool": write_rows(d / "pool.jsonl", POOL),
        "fewer": write_rows(d / "fewer.jsonl", POOL[:-1]),
        "more": write_rows(d / "more.jsonl", POOL + [{"prompt": "Name a colour.", "response": "Blue."}]),
    }


@pytest.fixture(scope="module")
def full(cluster, s3, tiny_model_dir, data):
    """The reference: a full run with out (and so cache and shards) on s3://, endpoint from the config key."""
    return run(config(tiny_model_dir, f"s3://{BUCKET}/runs/full", data["pool"], endpoint=s3), progress=False)


# --------------------------------------------------------------------------- a full run


def test_full_run_on_s3(full, s3):
    meta = read_json(s3, f"{BUCKET}/runs/full/run.json")
    assert meta["counts"]["pairs_scored"] == N * N and meta["counts"]["pairs_missing"] == 0
    assert meta["lock"] == CONDITIONAL_PUT
    assert meta["cache"] == f"s3://{BUCKET}/runs/full"
    shards = objects(s3, f"{BUCKET}/runs/full/{UTILITY}")
    assert sum(pq.read_metadata(s3fs(s3).open_input_file(i.path)).num_rows for i in shards) == N * N
    sel = (
        pq.read_table(s3fs(s3).open_input_file(f"{BUCKET}/runs/full/selection.parquet")).column("sample_id").to_pylist()
    )
    assert sel == full.selected_ids and len(sel) == 3
    # Where the scorer ran, and nothing left behind: no lock, no probe objects.
    (scorer,) = meta["scorers"]
    assert scorer["node_id"] and scorer["lost"] is False
    assert not objects(s3, f"{BUCKET}/runs/full/{PROBE_DIR}")
    assert s3fs(s3).get_file_info(f"{BUCKET}/runs/full/{LOCK_NAME}").type == pafs.FileType.NotFound


# --------------------------------------------------------------------------- the lock on S3


def hold_lock_code(uri):
    return (
        "import time; from delift_ray.storage import resolve_fs; from delift_ray.lock import RunLock; "
        f"fs, p = resolve_fs({uri!r}); RunLock(fs, p, {uri!r}).acquire(); print('locked', flush=True); time.sleep(300)"
    )


def test_s3_lock_refuses_a_second_run_and_is_taken_over_when_stale(cluster, env_endpoint, tiny_model_dir, data):
    uri = f"s3://{BUCKET}/runs/locked"
    holder = subprocess.Popen([sys.executable, "-c", hold_lock_code(uri)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockError) as err:
            run(config(tiny_model_dir, uri, data["pool"]), progress=False)
        msg = str(err.value)
        assert f"pid {holder.pid}" in msg and "\n" not in msg and uri in msg
    finally:
        holder.kill()
        holder.wait()
    # Its owner is dead (same host): the next run takes the lock over; here only the lock is tried.
    fs, path = resolve_fs(uri)
    with RunLock(fs, path, uri) as lock:
        assert lock.record is not None
    assert fs.get_file_info(f"{path}/{LOCK_NAME}").type == pafs.FileType.NotFound  # released


def race(uri, contenders, rounds, without_boto3=False):
    """{round: (winners, protocols)} of `contenders` spawned processes racing for one lock."""
    import multiprocessing

    from tests.storage.lock_race import contend

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(contenders, timeout=120), ctx.Queue()
    procs = [
        ctx.Process(target=contend, args=(uri, rounds, barrier, results, without_boto3)) for _ in range(contenders)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=600) for _ in range(contenders * rounds)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return {
        r: (sum(won for rr, won, _ in got if rr == r), {proto for rr, _, proto in got if rr == r})
        for r in range(rounds)
    }


def test_s3_lock_is_a_conditional_put_and_8_racing_processes_have_one_winner_in_50_rounds(s3, env_endpoint):
    rounds = race(f"s3://{BUCKET}/runs/race", contenders=8, rounds=50)
    assert rounds == {r: (1, {CONDITIONAL_PUT}) for r in range(50)}


def test_s3_lock_falls_back_and_says_so_without_conditional_writes(s3, env_endpoint):
    """Without boto3 the lock is today's check-write-settle: still one winner of 8 (10 rounds;
    each round waits SETTLE_S), and the run states the protocol in a warning."""
    rounds = race(f"s3://{BUCKET}/runs/race-fallback", contenders=8, rounds=10, without_boto3=True)
    assert rounds == {r: (1, {CHECK_WRITE_SETTLE}) for r in range(10)}
    uri = f"s3://{BUCKET}/runs/race-fallback"
    code = (
        "import sys; sys.modules['boto3'] = None\n"
        "from delift_ray.lock import RunLock; from delift_ray.storage import resolve_fs\n"
        f"fs, p = resolve_fs({uri!r}); print(RunLock(fs, p, {uri!r}).protocol)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == CHECK_WRITE_SETTLE
    assert "boto3 is not installed" in out.stderr and "not a true mutex" in out.stderr


# --------------------------------------------------------------------------- resume, reselect, watch


def test_resume_on_s3_after_the_driver_is_killed(cluster, env_endpoint, tiny_model_dir, data, full, tmp_path):
    """SIGKILL to a `delift-ray select` driver (joined to the module's Ray) writing to s3://;
    Ray stops its scorer with it; the same job, run again, takes the stale lock over and resumes."""
    import ray

    uri = f"s3://{BUCKET}/runs/killed"
    prefix = f"{BUCKET}/runs/killed/{UTILITY}"
    cmd = [
        sys.executable,
        "-m",
        "delift_ray.cli",
        "select",
        "--data",
        data["pool"],
        "--model",
        str(tiny_model_dir),
        "--out",
        uri,
        "--budget",
        "3",
        "--engine.dtype",
        "float32",
        "--engine.max-model-len",
        "256",
        "--engine.block-size",
        "32",
        "--engine.kv-cache-space-gib",
        "1",
        "--scoring.block-size",
        "2",
        "--ray.address",
        ray.get_runtime_context().gcs_address,
        "--quiet",
    ]
    first = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")},
    )
    try:
        deadline = time.monotonic() + 400
        while len(objects(env_endpoint, prefix)) < 3 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()[1][-2000:]
        scorers = scorer_pids()  # below this process: the module's raylet started them
        assert scorers
        os.kill(first.pid, signal.SIGKILL)
        out, errs = first.communicate(timeout=30)
        (tmp_path / "cli.log").write_text(out + errs)
        LOG_FILES.append(str(tmp_path / "cli.log"))
    finally:
        if first.poll() is None:
            first.kill()
    deadline = time.monotonic() + 60  # the driver's actors go with it: nothing keeps writing
    while any(os.path.exists(f"/proc/{p}") for p in scorers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert s3fs(env_endpoint).get_file_info(f"{BUCKET}/runs/killed/{LOCK_NAME}").type == pafs.FileType.File

    r = run(config(tiny_model_dir, uri, data["pool"]), progress=False)  # the stale lock is taken over
    c = r.counts
    assert c["pairs_reused"] > 0 and 0 < c["pairs_scored"] < N * N and c["pairs_scored"] + c["pairs_reused"] == N * N
    assert r.selected_ids == full.selected_ids


def test_reselect_against_an_s3_cache(cluster, env_endpoint, data, full, tmp_path):
    """A version without one sample: everything comes from the s3:// cache, no engine starts
    (the watcher below scores new pairs into that cache)."""
    from delift_ray.reselect import reselect

    r = reselect(f"s3://{BUCKET}/runs/full", data["fewer"], f"s3://{BUCKET}/runs/fewer", progress=False)
    assert r.counts["pairs_reused"] == (N - 1) ** 2 and r.counts["pairs_scored"] == 0
    meta = read_json(env_endpoint, f"{BUCKET}/runs/fewer/run.json")
    assert meta["cache"] == f"s3://{BUCKET}/runs/full"
    assert r.diff.counts() == {"added": 0, "removed": 1, "unchanged": N - 1}
    assert len(r.selected_ids) == r.counts["selected"] and not set(r.selected_ids) & set(r.diff.removed)
    # The report reads the run from the S3 server (the CLI, as a user runs it).
    page = tmp_path / "fewer.html"
    p = subprocess.run(
        [sys.executable, "-m", "delift_ray.cli", "report", f"s3://{BUCKET}/runs/fewer", "--out", str(page)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    html = page.read_text()
    sections = re.findall(r"<section id='([\w-]+)'", html)
    assert sections == ["summary", "curve", "utilities", "map", "selected", "left-out", "changes"]
    assert f"s3://{BUCKET}/runs/fewer" in html and "removed 1" in html


def test_watch_over_an_s3_location(cluster, env_endpoint, tiny_model_dir, data, full, tmp_path):
    """Versions land under s3://; the watcher (local out dir) selects, then reselects, from there,
    with the shared cache on s3:// as well (the full run's: nothing new to score for v1)."""
    from delift_ray.watch import WatchSettings, read_history, watch

    fs = s3fs(env_endpoint)
    for v, src in (("v1", data["pool"]), ("v2", data["more"])):
        fs.create_dir(f"{BUCKET}/incoming/{v}")
        with open(src, "rb") as f, fs.open_output_stream(f"{BUCKET}/incoming/{v}/data.jsonl") as o:
            o.write(f.read())
        with fs.open_output_stream(f"{BUCKET}/incoming/{v}/_SUCCESS") as o:
            o.write(b"")
    base = config(tiny_model_dir, "unused", "unused", cache=f"s3://{BUCKET}/runs/full")
    rows = watch(WatchSettings(f"s3://{BUCKET}/incoming", str(tmp_path / "watch"), base, progress=False), once=True)
    assert [(r["version"], r["status"], r["mode"]) for r in rows] == [("v1", "ok", "select"), ("v2", "ok", "full")], (
        rows
    )
    assert rows[0]["pairs_scored"] == 0 and rows[0]["pairs_reused"] == N * N  # v1 is the full run's data
    assert rows[1]["samples"] == N + 1 and rows[1]["pairs_scored"] == (N + 1) ** 2 - N * N  # written to the s3:// cache
    assert rows[1]["pairs_reused"] == N * N
    assert read_history(str(tmp_path / "watch")).num_rows == 2
    v1 = pq.read_table(tmp_path / "watch" / "versions" / "v1" / "selection.parquet").column("sample_id").to_pylist()
    assert v1 == full.selected_ids


# --------------------------------------------------------------------------- credentials


def test_credentials_in_a_location_are_refused(s3, tiny_model_dir, data):
    from delift_ray.config import validate_config
    from delift_ray.errors import ConfigError

    with pytest.raises((ConfigError, ValueError)) as err:
        validate_config(config(tiny_model_dir, f"s3://{BUCKET}/x?access_key=k&secret_key={SECRET}", data["pool"]))
    assert SECRET not in str(err.value) and "AWS_SECRET_ACCESS_KEY" in str(err.value)
    with pytest.raises(StorageError) as err:
        resolve_fs(f"s3://k:{SECRET}@{BUCKET}/x")
    assert SECRET not in str(err.value)


def test_secret_never_written(cluster, s3, tiny_model_dir, data, full, tmp_path):
    """After every run of this module: the secret is in no object on the server, no Ray log
    of the module's cluster, no driver log or CLI output, and no error."""
    from delift_ray.errors import DeliftError
    from delift_ray.reselect import reselect

    errors = []
    set_endpoint(s3)
    try:
        for call in (
            lambda: reselect(f"s3://{BUCKET}/no-such-run", str(data["pool"]), str(tmp_path / "x"), progress=False),
            lambda: run(config(tiny_model_dir, "s3://no-such-bucket/x", data["pool"], endpoint=s3), progress=False),
        ):
            with pytest.raises(DeliftError) as err:
                call()
            errors.append(str(err.value))
    finally:
        set_endpoint(None)
    assert all(SECRET not in e for e in errors), errors
    fs = s3fs(s3)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(BUCKET, recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                if SECRET.encode() in f.read():
                    found.append(info.path)
    files = [p for p in glob.glob(os.path.join(cluster, "**", "*"), recursive=True) if os.path.isfile(p)] + LOG_FILES
    assert len(files) > 10 and any(p.endswith("driver.log") and os.path.getsize(p) for p in files)
    for path in files:
        with open(path, "rb") as f:
            if SECRET.encode() in f.read():
                found.append(path)
    assert not found, found


def test_a_shard_on_s3_is_one_object_written_once(s3):
    """No temporary object, no folder markers, and a writer that fails uploads nothing."""
    import pyarrow as pa

    from delift_ray.storage import ShardStore

    set_endpoint(s3)
    try:
        store = ShardStore(f"s3://{BUCKET}/one-object", "fp")
        table = pa.table({"helped_id": ["a"], "example_id": ["b"], "utility": [0.5], "distance": [0.5]})
        store.write(UTILITY, "k", table)
        keys = sorted(i.path for i in objects(s3, f"{BUCKET}/one-object"))
        assert keys == [f"{BUCKET}/one-object/utility/fp=fp/k.parquet"]
        assert store.read_relevant(UTILITY, ["a"], ["b"]).num_rows == 1

        def fails(sink):
            sink.write(b"PAR1 half a shard")
            raise RuntimeError("the writer died")

        from delift_ray.storage import atomic_write

        fs, base = resolve_fs(f"s3://{BUCKET}/one-object")
        with pytest.raises(RuntimeError):
            atomic_write(fs, f"{base}/utility/fp=fp/dead.parquet", fails)
        assert sorted(i.path for i in objects(s3, f"{BUCKET}/one-object")) == keys
    finally:
        set_endpoint(None)
