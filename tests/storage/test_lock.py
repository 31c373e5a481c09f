"""The run lock itself (no engine): exclusive, released, stale locks taken over, foreign hosts never."""

import json
import logging
import os
import subprocess
import sys

import pytest

from delift_ray.lock import LOCK_NAME


def _lock(path):
    import pyarrow.fs as pafs

    from delift_ray.lock import RunLock

    return RunLock(pafs.LocalFileSystem(), str(path), str(path))


def test_lock_is_exclusive_and_released(tmp_path):
    from delift_ray.lock import LockError

    with _lock(tmp_path):
        rec = json.load(open(tmp_path / LOCK_NAME))
        assert rec["pid"] == os.getpid() and rec["host"] and rec["started"]
        with pytest.raises(LockError, match=f"in use by another run \\(pid {os.getpid()} on host"):
            _lock(tmp_path).acquire()
    assert not os.path.exists(tmp_path / LOCK_NAME)


@pytest.mark.parametrize("record", ["dead pid", "reused pid", "torn file"])
def test_stale_lock_is_taken_over(tmp_path, caplog, record):
    from delift_ray.lock import owner_record

    if record == "torn file":
        (tmp_path / LOCK_NAME).write_text('{"pid": 12')  # a write cut short by a kill
    else:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        rec = owner_record()
        if record == "dead pid":
            rec["pid"] = dead.pid
        else:  # our own live pid, but recorded with another process start time
            rec["proc_start_ticks"] = (rec["proc_start_ticks"] or 0) + 1
        (tmp_path / LOCK_NAME).write_text(json.dumps(rec))
    with caplog.at_level(logging.WARNING, logger="delift_ray"):
        with _lock(tmp_path) as lock:
            assert json.load(open(tmp_path / LOCK_NAME))["token"] == lock.record["token"]
    assert any("stale lock" in m for m in caplog.messages)
    assert os.listdir(tmp_path) == []  # the stale copy is gone too


def test_lock_from_another_host_is_never_taken_over(tmp_path):
    from delift_ray.lock import LockError, owner_record

    rec = dict(owner_record(), host="some-other-node", pid=1)
    (tmp_path / LOCK_NAME).write_text(json.dumps(rec))
    with pytest.raises(LockError, match="on host some-other-node"):
        _lock(tmp_path).acquire()
    assert json.load(open(tmp_path / LOCK_NAME))["host"] == "some-other-node"
