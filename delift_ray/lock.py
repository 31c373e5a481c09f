"""One run per output directory: a lock file holding the owner's pid, host and start time.

``<out>/.delift-ray.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on local and
network file systems that honour it), so of two runs started together exactly one gets
it; the other stops with a one-line error naming the owner. A lock is *stale* when its
owner ran on this host and that process is gone (or the pid now belongs to a process
started at another time, i.e. the pid was reused); a stale lock is taken over with a
warning. A lock held from another host cannot be checked from here: the error says to
delete the file if that run is known to be dead.

On S3 the lock object is created with a conditional write, a PUT with ``If-None-Match: *``
that the server refuses (412) when the key exists: an exclusive create, as on a disk.
boto3 sends it (pyarrow cannot). Whether a server honours the header is probed once per
location, by writing a probe key twice: a server that ignores the header (an older MinIO
or Ceph; moto and AWS honour it) lets the second write through.

Where it is not honoured (or boto3 is missing, or the store is not S3) the lock falls back
to the protocol of earlier versions, and the run says so in a warning and in run.json's
``lock``: check that no lock object exists, write ours, wait ``SETTLE_S``, and read it back;
a run that finds another run's token has lost and stops with the same one-line error. S3
is strongly consistent (read-after-write, last writer wins), so of runs that start
together the one whose write landed last keeps the lock and every other sees its token.
What the fallback does not cover: a run that stalls for more than ``SETTLE_S`` between its
check and its write can still overwrite a lock taken in between; both runs would then
write the same content-keyed shards (same bytes, so nothing is corrupted) and the later
run's outputs win. Staleness works as on a local disk: a lock whose owner ran on this
host and is gone is taken over; one from another host is never taken over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from datetime import datetime, timezone
from typing import Optional
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

from delift_ray.errors import DeliftError, StorageError, one_line
from delift_ray.storage.locations import s3_endpoint

log = logging.getLogger(__name__)

LOCK_NAME = ".delift-ray.lock"
SETTLE_S = 1.0  # the fallback on object storage: wait before reading our lock back (module docstring)

# RunLock.protocol: how the lock object is created.
EXCLUSIVE_CREATE = "exclusive-create"  # O_CREAT | O_EXCL on a file system
CONDITIONAL_PUT = "conditional-put"  # S3 PUT with If-None-Match: *
CHECK_WRITE_SETTLE = "check-write-settle"  # the fallback on object storage


class LockError(DeliftError):
    """The output directory is in use by another run."""


def _proc_start_ticks(pid: int) -> Optional[int]:
    """Start time of a process in clock ticks since boot (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of stat(5), counted from field 3


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def owner_record() -> dict:
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "proc_start_ticks": _proc_start_ticks(pid),
        "token": uuid.uuid4().hex,
    }


def is_stale(rec: dict) -> bool:
    """True when the recorded owner is provably gone (same host, process dead or pid reused)."""
    if rec.get("host") != socket.gethostname():
        return False
    pid = rec.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    if not _pid_alive(pid):
        return True
    ticks = rec.get("proc_start_ticks")
    now_ticks = _proc_start_ticks(pid)
    return ticks is not None and now_ticks is not None and ticks != now_ticks


class RunLock:
    """The lock of one output directory; use as a context manager or acquire()/release()."""

    def __init__(self, fs: pafs.FileSystem, out_path: str, out_uri: str, *, name: str = LOCK_NAME, role: str = "run"):
        self.fs, self.uri, self.role = fs, out_uri, role
        self.path = f"{out_path}/{name}"
        self.local = isinstance(fs, pafs.LocalFileSystem)
        self.record: Optional[dict] = None
        self._conditional: Optional[ConditionalPut] = None
        self.protocol = EXCLUSIVE_CREATE if self.local else self._object_store_protocol()

    def _object_store_protocol(self) -> str:
        """Probe the store for conditional writes; the protocol the lock will use there."""
        why = "the store is not S3"
        if self.fs.type_name == "s3":
            try:
                self._conditional, why = ConditionalPut.probe(self.fs, self.path, self.uri)
            except ImportError:
                why = "boto3 is not installed"
        if self._conditional is not None:
            return CONDITIONAL_PUT
        log.warning(
            "run lock on %s: no conditional write (%s), so the lock is check, write, settle and read back, "
            "which is not a true mutex (docs/storage.md)",
            self.uri,
            why,
        )
        return CHECK_WRITE_SETTLE

    def _read(self) -> Optional[dict]:
        try:
            with self.fs.open_input_stream(self.path) as f:
                data = f.read()
        except (FileNotFoundError, OSError):
            return None
        try:
            rec = json.loads(data.decode("utf-8"))
            return rec if isinstance(rec, dict) else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}  # a torn write from a killed run: no owner recorded

    def _create(self, rec: dict) -> bool:
        data = json.dumps(rec).encode()
        if self._conditional is not None:
            return self._conditional.put(self.path, data)
        if not self.local:
            if self._read() is not None:
                return False
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
            time.sleep(SETTLE_S)  # a run that checked before our write has written by now
            held = self._read()
            return bool(held) and held.get("token") == rec["token"]
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def acquire(self) -> "RunLock":
        rec = owner_record()
        for _ in range(3):  # create; on a stale lock move it aside and try again
            if self._create(rec):
                self.record = rec
                return self
            held = self._read()
            if held is None:
                continue  # released between our create and read
            if held and not is_stale(held):
                raise LockError(
                    f"output directory {self.uri} is in use by another {self.role} (pid {held.get('pid')} on host "
                    f"{held.get('host')}, started {held.get('started')}); wait for it to finish, or, if that "
                    f"run is dead, delete {self.path}"
                )
            log.warning(
                "taking over a stale lock in %s (owner pid %s on %s, started %s, is gone)",
                self.uri,
                held.get("pid"),
                held.get("host"),
                held.get("started"),
            )
            # Move aside rather than delete: of two runs taking over at once, only one move succeeds.
            try:
                self.fs.move(self.path, f"{self.path}.stale-{uuid.uuid4().hex[:8]}")
            except OSError:
                pass
            self._discard_stale_copies()
        raise LockError(f"could not lock output directory {self.uri}; another run keeps taking it")

    def _discard_stale_copies(self) -> None:
        parent, name = self.path.rsplit("/", 1)
        for info in self.fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
            if info.base_name.startswith(name + ".stale-"):
                try:
                    self.fs.delete_file(info.path)
                except OSError:
                    pass

    def release(self) -> None:
        if self.record is None:
            return
        held = self._read()
        if held and held.get("token") == self.record["token"]:
            try:
                self.fs.delete_file(self.path)
            except OSError:
                pass
        self.record = None

    def holds(self, out_path: str, name: str = LOCK_NAME) -> bool:
        """Whether this object currently holds the lock ``name`` of the directory ``out_path``."""
        return self.record is not None and self.path == f"{out_path}/{name}"

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class ConditionalPut:
    """Exclusive creates of S3 objects: PUT with ``If-None-Match: *`` through boto3, on the
    endpoint and region the store's pyarrow file system uses (credentials: the same AWS chain)."""

    # 412: the key exists. 409 (ConditionalRequestConflict): a conditional write of the same
    # key was in flight; AWS lets at most one of them succeed, so this one has lost too.
    LOST = (409, 412)

    def __init__(self, client):
        self.client = client

    @classmethod
    def probe(cls, fs: pafs.FileSystem, path: str, uri: str) -> tuple[Optional["ConditionalPut"], str]:
        """(a ConditionalPut, "") when the server refuses a second create of a probe key under
        ``path``; (None, why not) otherwise. An ImportError when boto3 is missing."""
        import boto3
        import botocore.exceptions
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=_endpoint_of(uri),
            region_name=fs.region or None,
            config=Config(retries={"mode": "standard"}),
        )
        cond, probe = cls(client), f"{path}.probe-{uuid.uuid4().hex[:8]}"
        try:
            if cond.put(probe, b"") and not cond.put(probe, b""):
                return cond, ""
            return None, "the server ignores If-None-Match"
        except (StorageError, botocore.exceptions.BotoCoreError) as exc:  # e.g. 501 NotImplemented for the header
            return None, f"the probe failed: {one_line(exc, 160)}"
        finally:
            bucket, key = probe.split("/", 1)
            try:
                client.delete_object(Bucket=bucket, Key=key)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                pass

    def put(self, path: str, data: bytes) -> bool:
        """Create ``path`` (``bucket/key``) with ``data``; False when it exists."""
        import botocore.exceptions

        bucket, key = path.split("/", 1)
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in self.LOST:
                return False
            raise StorageError(f"cannot create s3://{path}: {one_line(exc, 200)}") from None
        return True


def _endpoint_of(uri: str) -> Optional[str]:
    """The S3 endpoint of a location: its ``endpoint_override`` (as pyarrow reads it), else the
    one in force (:func:`~delift_ray.storage.locations.s3_endpoint`); None means AWS itself."""
    query = parse_qs(urlsplit(uri).query)
    if "endpoint_override" not in query:
        return s3_endpoint()
    endpoint = query["endpoint_override"][0]
    return endpoint if "://" in endpoint else f"{query.get('scheme', ['https'])[0]}://{endpoint}"
