"""The run lock itself (no engine): exclusive, released, stale locks taken over, foreign hosts
never; the S3 conditional-write probe against fake clients (tests/storage/test_s3.py races
real processes on a real server)."""

import json
import logging
import os
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

from delift_ray.errors import StorageError
from delift_ray.lock import EXCLUSIVE_CREATE, LOCK_NAME, ConditionalPut, RunLock, _endpoint_of


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


# --------------------------------------------------------------------------- conditional writes (fake S3 clients)


class FakeS3:
    """put_object / delete_object of a server that honours If-None-Match, ignores it, or
    answers a fixed HTTP status to any conditional PUT."""

    def __init__(self, mode="honours", status=None):
        self.mode, self.status, self.objects, self.calls = mode, status, {}, []

    def put_object(self, Bucket, Key, Body, IfNoneMatch=None):
        import botocore.exceptions

        self.calls.append(("put", Key))
        if self.status is not None or (self.mode == "honours" and IfNoneMatch == "*" and Key in self.objects):
            status = self.status or 412
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": str(status), "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                "PutObject",
            )
        self.objects[Key] = Body

    def delete_object(self, Bucket, Key):
        self.calls.append(("delete", Key))
        self.objects.pop(Key, None)


class FakeS3FileSystem:
    region = "us-east-1"


@pytest.fixture
def fake_boto3(monkeypatch):
    import boto3

    def use(client):
        monkeypatch.setattr(boto3, "client", lambda *a, **kw: client)
        return client

    return use


def test_probe_finds_a_server_that_honours_if_none_match_and_cleans_up(fake_boto3):
    client = fake_boto3(FakeS3("honours"))
    cond, why = ConditionalPut.probe(FakeS3FileSystem(), "bucket/runs/x/.delift-ray.lock", "s3://bucket/runs/x")
    assert cond is not None and why == ""
    assert [c for c, _ in client.calls] == ["put", "put", "delete"] and client.objects == {}
    assert cond.put("bucket/runs/x/.delift-ray.lock", b"a") and not cond.put("bucket/runs/x/.delift-ray.lock", b"b")
    assert client.objects == {"runs/x/.delift-ray.lock": b"a"}  # the loser's bytes never landed


@pytest.mark.parametrize(
    ("client", "why"),
    [(FakeS3("ignores"), "ignores If-None-Match"), (FakeS3(status=501), "probe failed")],
)
def test_probe_rejects_a_server_that_ignores_or_refuses_the_header(fake_boto3, client, why):
    fake_boto3(client)
    cond, reason = ConditionalPut.probe(FakeS3FileSystem(), "bucket/runs/x/.delift-ray.lock", "s3://bucket/runs/x")
    assert cond is None and why in reason and client.objects == {}


@pytest.mark.parametrize("status", [409, 412])
def test_a_conflicting_or_failed_precondition_loses_and_other_errors_are_one_line(status):
    assert ConditionalPut(FakeS3(status=status)).put("bucket/k", b"") is False
    with pytest.raises(StorageError) as err:
        ConditionalPut(FakeS3(status=403)).put("bucket/k", b"")
    assert "s3://bucket/k" in str(err.value) and "\n" not in str(err.value)


def test_the_probe_goes_to_the_locations_own_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:9000")
    assert _endpoint_of("s3://b/p") == "http://env:9000"
    assert _endpoint_of("s3://b/p?endpoint_override=minio%3A9000&scheme=http") == "http://minio:9000"
    assert _endpoint_of("s3://b/p?endpoint_override=minio:9000") == "https://minio:9000"


def test_a_local_lock_is_an_exclusive_create(tmp_path):
    assert RunLock(pafs.LocalFileSystem(), str(tmp_path), str(tmp_path)).protocol == EXCLUSIVE_CREATE
