"""Watch a location for new data versions and reselect on each one as it lands.

LOCATION (a local folder or a URI prefix) holds one subfolder per version; a version is
complete when its marker file (``_SUCCESS`` by default) exists. Versions are processed in
name order. The first successful version gets a plain ``select`` (its config comes from
``--config`` / flags); every later one gets :func:`delift_ray.reselect.reselect` against
the last successful version. All runs share one content-keyed cache (``<out>/cache``
unless the config names one), so each version scores only the pairs it adds.

Out dir layout::

    versions/<v>/        the run of version v (run.json, selection.parquet, selection_diff.*)
    history.parquet      one row per attempt: version, time, status, error, counts
    .watch.lock          {"pid", "host", "time"} of the running watcher

A version that fails is recorded with its error and never counts as done; the watcher
goes on with the next version. A failed version older than the last successful one is
not retried (its data would be reselected out of order). A second watcher on the same out
dir refuses to start; a lock whose pid is dead on this host is stale and is taken over.
The out dir must be a local or mounted path (the lock uses an exclusive file create).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from delift_ray.errors import DeliftError, StorageError, one_line
from delift_ray.lock import RunLock
from delift_ray.storage import atomic_write, resolve_fs

log = logging.getLogger(__name__)

LOCK_NAME = ".watch.lock"
HISTORY = "history.parquet"
HISTORY_SCHEMA = pa.schema(
    [
        ("version", pa.string()),
        ("time", pa.string()),
        ("mode", pa.string()),
        ("samples", pa.int64()),
        ("pairs_scored", pa.int64()),
        ("pairs_reused", pa.int64()),
        ("selected", pa.int64()),
        ("entered", pa.int64()),
        ("left", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)
OK, FAILED = "ok", "failed"


# --------------------------------------------------------------------------- the lock


def WatchLock(out: str) -> RunLock:
    """The watcher's lock: a :class:`~delift_ray.lock.RunLock` on its own file in the out dir."""
    if "://" in out:
        raise StorageError(
            f"watch --out must be a local or mounted path (the lock needs an exclusive create), got {out!r}"
        )
    path = os.path.abspath(out)
    os.makedirs(path, exist_ok=True)
    return RunLock(pafs.LocalFileSystem(), path, out, name=LOCK_NAME, role="watcher")


# --------------------------------------------------------------------------- versions and history


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def complete_versions(location: str, marker: str = "_SUCCESS") -> list[str]:
    """Names of the subfolders of ``location`` that hold ``marker``, in name order."""
    fs, root = resolve_fs(location)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=False))
    except (OSError, FileNotFoundError) as exc:
        raise DeliftError(f"cannot list versions in {location!r}: {one_line(exc, 160)}") from None
    names = sorted(
        i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith((".", "_"))
    )
    return [n for n in names if fs.get_file_info(f"{root}/{n}/{marker}").type == pafs.FileType.File]


def read_history(out: str) -> pa.Table:
    path = os.path.join(out, HISTORY)
    if not os.path.exists(path):
        return HISTORY_SCHEMA.empty_table()
    return pq.read_table(path).cast(HISTORY_SCHEMA)


def append_history(out: str, row: dict) -> None:
    """Add one attempt to history.parquet (rewritten atomically; only the lock holder writes)."""
    table = pa.concat_tables([read_history(out), pa.Table.from_pylist([row], schema=HISTORY_SCHEMA)])
    fs, path = resolve_fs(out)
    atomic_write(fs, f"{path}/{HISTORY}", lambda sink: pq.write_table(table, sink))


def pending_versions(available: list[str], history: pa.Table) -> tuple[Optional[str], list[str]]:
    """(last successful version, versions to process now): those after it not yet done."""
    rows = history.to_pylist()
    done = [r["version"] for r in rows if r["status"] == OK]
    last = done[-1] if done else None
    todo = [v for v in available if v not in set(done) and (last is None or v > last)]
    return last, todo


# --------------------------------------------------------------------------- one pass


@dataclass
class WatchSettings:
    location: str
    out: str
    base: dict  # config tree for the first version (data and out are filled in)
    marker: str = "_SUCCESS"
    mode: str = "full"
    condition_on: str = "selected"
    progress: bool = True


def version_dir(out: str, version: str) -> str:
    return os.path.join(out, "versions", version)


def _data_uri(location: str, version: str) -> str:
    return f"{location.rstrip('/')}/{version}"


def process_version(s: WatchSettings, version: str, last: Optional[str]) -> dict:
    """Select (first version) or reselect (later ones); returns the history counts."""
    from delift_ray.config import validate_config
    from delift_ray.job import run
    from delift_ray.reselect import reselect

    out_v = version_dir(s.out, version)
    data = _data_uri(s.location, version)
    if last is None:
        tree = dict(s.base)
        tree.update(data=data, out=out_v)
        tree.setdefault("cache", None)
        tree["cache"] = tree["cache"] or os.path.join(os.path.abspath(s.out), "cache")
        r = run(validate_config(tree), progress=s.progress)
        return {"mode": "select", **history_counts(r.counts, {"entered": r.counts.selected, "left": 0})}
    r = reselect(version_dir(s.out, last), data, out_v, mode=s.mode, condition_on=s.condition_on, progress=s.progress)
    return {"mode": s.mode, **history_counts(r.counts, r.changes)}


def history_counts(counts, changes: dict) -> dict:
    """The figures of one version in history.parquet, from its run's counts and selection changes."""
    return {
        "samples": counts.samples,
        "pairs_scored": counts.pairs_scored,
        "pairs_reused": counts.pairs_reused,
        "selected": counts.selected,
        "entered": changes["entered"],
        "left": changes["left"],
    }


def watch_once(
    s: WatchSettings, process: Callable[[WatchSettings, str, Optional[str]], dict] = process_version
) -> list[dict]:
    """Process every pending complete version once; returns the history rows written."""
    last, todo = pending_versions(complete_versions(s.location, s.marker), read_history(s.out))
    rows = []
    for v in todo:
        log.info("watch: version %s (previous successful: %s)", v, last)
        row = {k: None for k in HISTORY_SCHEMA.names}
        row.update(version=v, time=_now(), error=None, mode="select" if last is None else s.mode)
        try:
            row.update(process(s, v, last))
            row["status"] = OK
            last = v
        except Exception as exc:  # a failing version is recorded and the watcher goes on
            msg = one_line(exc, 500, with_type=True)
            log.error("watch: version %s failed: %s", v, msg)
            log.debug("%s", traceback.format_exc())
            row.update(status=FAILED, error=msg)
        append_history(s.out, row)
        rows.append(row)
    return rows


def watch(
    s: WatchSettings,
    *,
    once: bool = False,
    interval: float = 300.0,
    process: Callable[[WatchSettings, str, Optional[str]], dict] = process_version,
) -> list[dict]:
    """Hold the lock and process versions: one pass with ``once``, else every ``interval`` seconds."""
    rows: list[dict] = []
    with WatchLock(s.out):
        while True:
            rows += watch_once(s, process)
            if once:
                return rows
            time.sleep(interval)
