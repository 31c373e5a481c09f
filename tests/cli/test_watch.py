"""The version watcher: markers, history, failures, the lock; then a real run on the tiny model."""

import json
import os
import socket
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from delift_ray.errors import DeliftError
from delift_ray.watch import (
    LOCK_NAME,
    WatchLock,
    WatchSettings,
    complete_versions,
    pending_versions,
    read_history,
    watch,
)
from tests.helpers import assert_one_line_error, write_rows

ENGINE = {"dtype": "float32", "max_model_len": 256, "block_size": 32, "kv_cache_space_gib": 1}


def add_version(root, name, rows, marker=True):
    d = root / name
    d.mkdir(parents=True)
    write_rows(d / "data.jsonl", rows)
    if marker:
        (d / "_SUCCESS").write_text("")
    return d


def rows(n, start=0):
    return [
        {"prompt": f"What is {k} times two?", "response": f"{k} times two is {2 * k}."} for k in range(start, start + n)
    ]


def fake_process(calls, fail=()):
    def process(s, version, last):
        calls.append((version, last))
        if version in fail:
            raise ValueError(f"bad data in {version}\nsecond line")
        return {"samples": 1, "pairs_scored": 1, "pairs_reused": 0, "selected": 1, "entered": 1, "left": 0}

    return process


# --------------------------------------------------------------------------- unit


def test_only_versions_with_marker_count(tmp_path):
    loc = tmp_path / "loc"
    add_version(loc, "v2", rows(2))
    add_version(loc, "v1", rows(2))
    add_version(loc, "v3", rows(2), marker=False)
    (loc / "_tmp").mkdir()
    assert complete_versions(str(loc)) == ["v1", "v2"]
    (loc / "v3" / "DONE").write_text("")
    assert complete_versions(str(loc), marker="DONE") == ["v3"]
    with pytest.raises(DeliftError, match="cannot list versions"):
        complete_versions(str(tmp_path / "nowhere"))


def test_failed_version_is_recorded_never_done_and_the_next_goes_on(tmp_path):
    loc, out = tmp_path / "loc", tmp_path / "out"
    for v in ("v1", "v2", "v3"):
        add_version(loc, v, rows(2))
    s = WatchSettings(str(loc), str(out), {})
    calls = []
    got = watch(s, once=True, process=fake_process(calls, fail={"v2"}))
    assert calls == [("v1", None), ("v2", "v1"), ("v3", "v1")]  # v3 reselects against the last success
    assert [(r["version"], r["status"]) for r in got] == [("v1", "ok"), ("v2", "failed"), ("v3", "ok")]
    h = read_history(str(out)).to_pydict()
    assert (
        h["status"] == ["ok", "failed", "ok"]
        and h["error"][1] == "ValueError: bad data in v2"
        and h["error"][0] is None
    )
    assert h["mode"] == ["select", "full", "full"] and all(h["time"])
    # Nothing new: a second pass processes nothing (v2 is older than the last success and stays failed).
    calls.clear()
    assert watch(s, once=True, process=fake_process(calls)) == [] and calls == []
    assert pending_versions(["v1", "v2", "v3"], read_history(str(out)))[0] == "v3"
    add_version(loc, "v4", rows(2))
    watch(s, once=True, process=fake_process(calls, fail={"v4"}))
    watch(s, once=True, process=fake_process(calls))
    assert calls == [("v4", "v3"), ("v4", "v3")]  # a failed newest version is retried, never marked done
    assert read_history(str(out)).column("status").to_pylist()[-2:] == ["failed", "ok"]
    assert not (out / LOCK_NAME).exists()


def test_second_watcher_refuses_and_stale_lock_is_taken(tmp_path):
    out = tmp_path / "out"
    first = WatchLock(str(out))
    first.acquire()
    with pytest.raises(
        DeliftError, match=f"in use by another watcher .pid {os.getpid()} on host {socket.gethostname()}"
    ):
        WatchLock(str(out)).acquire()
    s = WatchSettings(str(tmp_path), str(out), {})
    with pytest.raises(DeliftError, match="in use by another watcher"):
        watch(s, once=True, process=fake_process([]))
    first.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "time": "t"}))
    lock = WatchLock(str(out))
    lock.acquire()  # the holder is dead: stale
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "another-host", "time": "t"}))
    with pytest.raises(DeliftError, match="another-host"):
        WatchLock(str(out)).acquire()  # a live-or-unknown holder elsewhere is never taken over


def test_cli_second_watcher_refuses(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": "t"}))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "delift_ray.cli",
            "watch",
            str(tmp_path),
            "--out",
            str(out),
            "--once",
            "--model",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(p, "in use by another watcher")


def test_cli_watch_rejects_a_bad_config_before_any_version(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "_SUCCESS").write_text("")
    base = [sys.executable, "-m", "delift_ray.cli", "watch", str(tmp_path), "--out", str(tmp_path / "out"), "--once"]
    p = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert_one_line_error(p, "missing required key 'model'")
    assert not (tmp_path / "out").exists()  # nothing was processed or recorded
    p = subprocess.run(
        base + ["--model", str(tmp_path), "--interval", "0"], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 2 and "--interval must be > 0" in p.stderr


# --------------------------------------------------------------------------- real engine


@pytest.mark.engine
@pytest.mark.ray
def test_watch_real_versions(ray_cluster, tiny_model_dir, tmp_path):
    loc, out = tmp_path / "landing", tmp_path / "watch"
    add_version(loc, "2026-01-01", rows(8))
    add_version(loc, "2026-01-02", rows(9))  # one sample added
    add_version(loc, "2026-01-03", [{"prompt": "", "response": "no valid row"}])  # complete but unusable
    add_version(loc, "2026-01-04", rows(9, start=0)[1:])  # one sample removed vs 01-02
    add_version(loc, "2026-01-05", rows(12), marker=False)  # still landing
    base = {"model": str(tiny_model_dir), "budget": 0.3, "engine": ENGINE, "scoring": {"block_size": 8}}
    got = watch(WatchSettings(str(loc), str(out), base, progress=False), once=True)
    h = {r["version"]: r for r in got}
    assert list(h) == ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
    assert h["2026-01-01"]["pairs_scored"] == 64 and h["2026-01-01"]["mode"] == "select"
    assert h["2026-01-02"]["pairs_scored"] == 81 - 64 and h["2026-01-02"]["pairs_reused"] == 64
    assert h["2026-01-03"]["status"] == "failed" and "no valid row" in h["2026-01-03"]["error"]
    assert (
        h["2026-01-04"]["status"] == "ok" and h["2026-01-04"]["pairs_scored"] == 0 and h["2026-01-04"]["samples"] == 8
    )
    prev = pq.read_table(out / "versions" / "2026-01-02" / "selection.parquet").column("sample_id").to_pylist()
    now = pq.read_table(out / "versions" / "2026-01-04" / "selection.parquet").column("sample_id").to_pylist()
    assert h["2026-01-04"]["left"] == len(set(prev) - set(now))
    assert os.path.isdir(out / "cache" / "utility")  # one shared cache for every version
    assert pq.read_table(out / "history.parquet").num_rows == 4
    # cron: the next --once run (CLI) finds nothing new until 01-05's marker lands.
    cmd = [
        sys.executable,
        "-m",
        "delift_ray.cli",
        "watch",
        str(loc),
        "--out",
        str(out),
        "--once",
        "--quiet",
        "--model",
        str(tiny_model_dir),
    ]  # a cron entry names its model; watch checks the config up front
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "no new complete version" in p.stdout, p.stderr
