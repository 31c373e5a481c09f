"""Shard storage: atomic, self-validating Parquet files under a local path or a URI.

Layout under the store root (the run's out dir, or a shared cache)::

    utility/fp=<fingerprint>/<block key>.parquet    helped_id, example_id, utility, distance
    baseline/fp=<fingerprint>/<block key>.parquet   sample_id, distance
    embedding/fp=<fingerprint>/<chunk key>.parquet  sample_id, vector (fixed-size list of float32)
    quarantine/                                       shards that failed validation

One store, parameterised by each kind's schema (:data:`SCHEMAS`), holds all three kinds
under one policy. Shards are written with :func:`~delift_ray.storage.locations.atomic_write`,
so a reader never sees a partial file under its final name. Each shard records its row count and a checksum of
its columns in the Parquet key-value metadata; a shard that does not validate is moved
to ``quarantine/`` and never read (its keys are computed again). The content-keyed cache
is exactly this store: a utility's key is (fingerprint, helped_id, example_id), a
baseline's or an embedding's (fingerprint, sample_id), so any run with the same
fingerprint reuses what is here.

The store root is the ``cache`` config key (default: the out dir), so many runs can
share one store. Key index: every shard's footer also lists the distinct sample ids it
covers (``delift.helped`` / ``delift.examples``, ``,``-joined). :meth:`ShardStore.iter_relevant`
reads the footers to find the shards that can hold a wanted key, then validates only
those; a small shard (:data:`WHOLE_READ_BYTES`) is read whole in one request, footer
included, a big one footer first. A quarantined shard disappears from the listing and a shard
added by a concurrent run appears in it, so the index never goes stale: it is the
shards themselves. A shard without the lists (older writers) is simply read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from delift_ray.storage.locations import TMP_PREFIX, absolute_location, atomic_write, resolve_fs

log = logging.getLogger(__name__)

UTILITY = "utility"
BASELINE = "baseline"
EMBEDDING = "embedding"

UTILITY_SCHEMA = pa.schema(
    [("helped_id", pa.string()), ("example_id", pa.string()), ("utility", pa.float32()), ("distance", pa.float32())]
)
BASELINE_SCHEMA = pa.schema([("sample_id", pa.string()), ("distance", pa.float64())])
# The vector width depends on the encoder: any fixed-size float32 list validates.
EMBEDDING_SCHEMA = pa.schema([("sample_id", pa.string()), ("vector", pa.list_(pa.float32(), 1))])
SCHEMAS = {UTILITY: UTILITY_SCHEMA, BASELINE: BASELINE_SCHEMA, EMBEDDING: EMBEDDING_SCHEMA}


def conform(kind: str, table: pa.Table) -> pa.Table:
    """``table`` cast to the kind's schema (an embedding keeps its own vector width)."""
    schema = SCHEMAS[kind]
    if kind == EMBEDDING:
        width = table.schema.field("vector").type.list_size
        schema = pa.schema([("sample_id", pa.string()), ("vector", pa.list_(pa.float32(), width))])
    return table.select(schema.names).cast(schema)


COLUMNAR = "col:"  # the prefix of a columnar checksum; a bare digest is the legacy one


def table_checksum(table: pa.Table) -> str:
    """blake2b over every column's Arrow buffers, in order: detects truncation and bit rot.

    A string column is hashed as its value lengths and its character data, sliced to the
    column's own rows, so the digest depends on the values alone (not on chunking or on
    the buffers' offsets); no value becomes a Python object. Prefixed ``col:``.
    """
    h = hashlib.blake2b(digest_size=16)
    for name in table.column_names:
        for part in _column_parts(table.column(name).combine_chunks()):
            h.update(part)
        h.update(b"\x1e")
    return COLUMNAR + h.hexdigest()


def _column_parts(arr: pa.Array) -> Iterator:
    if arr.null_count:
        yield np.packbits(arr.is_null().to_numpy(zero_copy_only=False)).tobytes()
    if len(arr) == 0:
        return
    if pa.types.is_string(arr.type) or pa.types.is_binary(arr.type) or _is_large_var(arr.type):
        width = np.int64 if _is_large_var(arr.type) else np.int32
        offsets = np.frombuffer(arr.buffers()[1], dtype=width)[arr.offset : arr.offset + len(arr) + 1]
        yield (offsets - offsets[0]).tobytes()
        data = arr.buffers()[2]
        if data is not None:
            yield memoryview(data)[int(offsets[0]) : int(offsets[-1])]
    elif pa.types.is_fixed_size_list(arr.type):
        yield np.ascontiguousarray(arr.flatten().to_numpy()).tobytes()
    else:
        values = np.ascontiguousarray(arr.to_numpy(zero_copy_only=False))
        if values.dtype == object:  # pointers, not values: a type the schemas never hold
            raise TypeError(f"no columnar checksum for Arrow type {arr.type}")
        yield values.tobytes()


def _is_large_var(t: pa.DataType) -> bool:
    return pa.types.is_large_string(t) or pa.types.is_large_binary(t)


def legacy_checksum(table: pa.Table) -> str:
    """The checksum shards written before the columnar one record: every string a Python object.

    Kept so that a store written by an earlier version validates rather than being rescored.
    """
    h = hashlib.blake2b(digest_size=16)
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type):
            h.update("\x1f".join(col.to_pylist()).encode("utf-8"))
        elif pa.types.is_fixed_size_list(col.type):
            h.update(np.ascontiguousarray(col.combine_chunks().flatten().to_numpy()).tobytes())
        else:
            h.update(np.ascontiguousarray(col.to_numpy()).tobytes())
        h.update(b"\x1e")
    return h.hexdigest()


COLUMNAR_KEY = b"delift.checksum.columnar"  # read by this version; b"delift.checksum" by every version


def checksum_matches(table: pa.Table, meta: dict) -> bool:
    """Whether ``table`` has the checksum its footer records: the columnar one when present
    (fast), else the legacy one (a shard of an earlier version)."""
    recorded = (meta.get(COLUMNAR_KEY) or meta.get(b"delift.checksum", b"")).decode()
    scheme = table_checksum if recorded.startswith(COLUMNAR) else legacy_checksum
    return scheme(table) == recorded


@dataclass
class ShardInfo:
    path: str
    key: str
    size: Optional[int] = None  # bytes, from the listing


# Shards up to this size are read in one request, footer and all. A footer read first costs two
# round trips (size, then the tail) before the data's own; it pays only for big shards that
# may turn out irrelevant. A scored block of 128 x 128 pairs is about 0.3 MB.
WHOLE_READ_BYTES = 4 << 20


class ShardStore:
    """Parquet shards of one scorer fingerprint under ``root``."""

    def __init__(self, root: str, fingerprint: str):
        self.root_uri = absolute_location(root)  # shipped to actors: never relative
        self.fs, self.root = resolve_fs(root)
        self.fingerprint = fingerprint

    # ------------------------------------------------------------------ paths
    def kind_dir(self, kind: str) -> str:
        return f"{self.root}/{kind}/fp={self.fingerprint}"

    def shard_path(self, kind: str, key: str) -> str:
        return f"{self.kind_dir(kind)}/{key}.parquet"

    def _ensure_dir(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    # ------------------------------------------------------------------ the scorer's dtype
    def pin_dtype(self, dtype: str) -> str:
        """The engine dtype this fingerprint's shards were scored in: pinned by the first scorer.

        ``engine.dtype: auto`` resolves on each scorer's node (bfloat16 on one CPU, float32 on
        another), so the fingerprint cannot hold it; this record keeps two dtypes from ever
        mixing in one store. Returns the pinned dtype, which a caller compares with its own.
        """
        path = f"{self.root}/scorers/fp={self.fingerprint}.json"
        pinned = self._read_pin(path)
        if pinned is not None:
            return pinned
        atomic_write(self.fs, path, json.dumps({"dtype": dtype}).encode())
        # Read back: of two scorers that pin at once, the one whose write lost learns the winner's.
        return self._read_pin(path) or dtype

    def _read_pin(self, path: str) -> Optional[str]:
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            try:
                return str(json.loads(f.read())["dtype"])
            except (KeyError, TypeError, ValueError):  # not a pin this version wrote: re-pin
                return None

    # ------------------------------------------------------------------ write
    def write(self, kind: str, key: str, table: pa.Table) -> str:
        """Write a shard atomically (:func:`~delift_ray.storage.locations.atomic_write`); returns its path."""
        table = conform(kind, table)
        meta = {
            b"delift.rows": str(table.num_rows).encode(),
            # Both: an earlier version reading this store (a rollback, a mixed cluster) checks the
            # legacy digest and keeps the shard, instead of quarantining every new one.
            b"delift.checksum": legacy_checksum(table).encode(),
            COLUMNAR_KEY: table_checksum(table).encode(),
            b"delift.fingerprint": self.fingerprint.encode(),
            b"delift.kind": kind.encode(),
        }
        meta.update(_id_lists(kind, table))
        table = table.replace_schema_metadata(meta)
        return atomic_write(
            self.fs, self.shard_path(kind, key), lambda sink: pq.write_table(table, sink, compression="zstd")
        )

    # ------------------------------------------------------------------ read
    def read_valid(self, path: str, data: Optional[bytes] = None) -> Optional[pa.Table]:
        """The shard's table if it validates, else None (and it is quarantined).

        ``data``: the shard's bytes, when the caller has read them already."""
        reason = None
        try:
            if data is not None:
                table = pq.read_table(pa.BufferReader(data))
            else:
                with self.fs.open_input_file(path) as f:
                    table = pq.read_table(f)
            meta = table.schema.metadata or {}
            if meta.get(b"delift.fingerprint", b"").decode() != self.fingerprint:
                reason = "fingerprint mismatch"
            elif int(meta.get(b"delift.rows", b"-1")) != table.num_rows:
                reason = f"row count {table.num_rows} != recorded {meta.get(b'delift.rows', b'?').decode()}"
            elif not checksum_matches(table.replace_schema_metadata(None), meta):
                reason = "checksum mismatch"
        except (OSError, pa.ArrowException, ValueError) as exc:
            reason = f"unreadable ({exc.__class__.__name__}: {str(exc)[:100]})"
        if reason:
            self.quarantine(path, reason)
            return None
        return table.replace_schema_metadata(None)

    def quarantine(self, path: str, reason: str) -> None:
        qdir = f"{self.root}/quarantine"
        self._ensure_dir(qdir)
        dest = f"{qdir}/{os.path.basename(path)}.{uuid.uuid4().hex[:6]}"
        log.warning("quarantined shard %s (%s); its pairs will be recomputed", path, reason)
        try:
            self.fs.move(path, dest)
        except OSError:
            pass

    def list_shards(self, kind: str) -> list[ShardInfo]:
        """Final-named shards of this fingerprint; stale temp files are quarantined."""
        sel = pafs.FileSelector(self.kind_dir(kind), allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(sel):
            if info.type != pafs.FileType.File:
                continue
            name = info.base_name
            if name.startswith(TMP_PREFIX):
                self.quarantine(info.path, "left over from an interrupted write")
                continue
            if name.endswith(".parquet"):
                out.append(ShardInfo(info.path, name[: -len(".parquet")], info.size))
        return sorted(out, key=lambda s: s.key)

    def read_relevant(self, kind: str, helped: Iterable[str], examples: Iterable[str] = ()) -> pa.Table:
        """Valid shards that may hold a wanted key, in one table (see :meth:`iter_relevant`)."""
        tables = list(self.iter_relevant(kind, helped, examples))
        return pa.concat_tables(tables) if tables else SCHEMAS[kind].empty_table()

    def iter_relevant(
        self, kind: str, helped: Optional[Iterable[str]], examples: Iterable[str] = (), *, batch_rows: int = 1 << 22
    ) -> Iterator[pa.Table]:
        """Valid shards that may hold a wanted key, chosen from their footers alone,
        yielded as tables of about ``batch_rows`` rows (several shards each).

        Utility: a shard is read when it covers some wanted helped id AND some wanted
        example id; baseline: some wanted sample id (``helped``). The tables may hold
        keys outside the wanted sets (callers filter, as kernel assembly does).
        ``helped=None`` reads every valid shard without looking at footers. Streaming
        keeps a reader's memory at one batch of strings rather than the whole store:
        at 36M pairs the concatenated table alone is several GB.
        """
        want_h, want_e = (set(helped) if helped is not None else None), set(examples)
        pending, rows = [], 0
        for shard in self.list_shards(kind):
            data = None
            small = shard.size is not None and shard.size <= WHOLE_READ_BYTES
            if want_h is not None:
                ids = _FOOTER_MEMO.get((self.root_uri, shard.path))
                if ids is None and small:
                    data = self.read_bytes(shard.path)
                ids = ids or self.footer_ids(shard.path, data)
                if ids is not None:
                    h, e = ids
                    if not _names_any(h, want_h) or (kind == UTILITY and not _names_any(e, want_e)):
                        continue
            if data is None and small:  # a memoised footer, or no footer filter: still one request
                data = self.read_bytes(shard.path)
            t = self.read_valid(shard.path, data)
            if t is None:
                continue
            pending.append(t)
            rows += t.num_rows
            if rows >= batch_rows:
                yield pa.concat_tables(pending)
                pending, rows = [], 0
        if pending:
            yield pa.concat_tables(pending)

    def read_bytes(self, path: str) -> Optional[bytes]:
        """A shard's bytes in one request; None when unreadable (read_valid then quarantines it)."""
        try:
            with self.fs.open_input_stream(path, compression=None) as f:
                return f.read()
        except (OSError, pa.ArrowException):
            return None

    def footer_ids(self, path: str, data: Optional[bytes] = None) -> Optional[tuple[str, str]]:
        """(helped ids, example ids) as listed in a shard's footer (``,``-joined, sorted);
        None when absent or unreadable.

        Kept as strings: turning 16k-id footers into sets cost minutes at 36M pairs,
        while the common question, "does it name any wanted id?", is answered at the
        first id (:func:`_names_any`). Small footers are memoised per path: a shard is
        immutable once it has its final name.
        """
        memo_key = (self.root_uri, path)
        if memo_key in _FOOTER_MEMO:
            return _FOOTER_MEMO[memo_key]
        try:
            if data is not None:
                meta = pq.read_schema(pa.BufferReader(data)).metadata or {}
            else:
                with self.fs.open_input_file(path) as f:
                    meta = pq.read_schema(f).metadata or {}
        except (OSError, pa.ArrowException, ValueError):
            return None  # read_valid will quarantine it
        if b"delift.helped" not in meta:
            return None
        ids = (meta[b"delift.helped"].decode(), meta.get(b"delift.examples", b"").decode())
        if len(ids[0]) + len(ids[1]) <= _FOOTER_MEMO_MAX_CHARS:  # big footers would pin GBs at 1M samples
            _FOOTER_MEMO[memo_key] = ids
        return ids

    def read_all(self, kind: str) -> pa.Table:
        """Concatenation of every valid shard of ``kind``."""
        tables = []
        for shard in self.list_shards(kind):
            t = self.read_valid(shard.path)
            if t is not None:
                tables.append(t)
        if not tables:
            return SCHEMAS[kind].empty_table()
        return pa.concat_tables(tables)


_FOOTER_MEMO: dict[tuple[str, str], tuple[str, str]] = {}
_FOOTER_MEMO_MAX_CHARS = 1 << 16


def _names_any(joined: str, wanted: set) -> bool:
    """Whether a ``,``-joined id list names any wanted id; stops at the first hit."""
    start, n = 0, len(joined)
    while start < n:
        end = joined.find(",", start)
        if end < 0:
            end = n
        if joined[start:end] in wanted:
            return True
        start = end + 1
    return False


def _id_lists(kind: str, table: pa.Table) -> dict[bytes, bytes]:
    """Footer key index: the distinct sample ids a shard covers."""
    if kind == UTILITY:
        cols = {b"delift.helped": "helped_id", b"delift.examples": "example_id"}
    else:  # baselines and embeddings are keyed by one sample
        cols = {b"delift.helped": "sample_id"}
    return {k: ",".join(sorted(set(table.column(c).to_pylist()))).encode() for k, c in cols.items()}


def baseline_lookup(store: ShardStore, wanted: Optional[set] = None) -> dict[str, float]:
    """Sample id -> d(i, no example) of the stored baselines (all, or those ``wanted``)."""
    t = store.read_all(BASELINE) if wanted is None else store.read_relevant(BASELINE, wanted)
    return dict(zip(t.column("sample_id").to_pylist(), t.column("distance").to_pylist()))
