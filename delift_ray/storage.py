"""Shard storage: atomic, self-validating Parquet files under a local path or a URI.

Layout under the store root (the run's out dir, or a shared cache)::

    utility/fp=<fingerprint>/<block key>.parquet    helped_id, example_id, utility, distance
    baseline/fp=<fingerprint>/<block key>.parquet   sample_id, distance
    embedding/fp=<fingerprint>/<chunk key>.parquet  sample_id, vector (fixed-size list of float32)
    quarantine/                                       shards that failed validation

One store, parameterised by each kind's schema (:data:`SCHEMAS`), holds all three kinds
under one policy. Shards are written with :func:`atomic_write`, so a reader never sees
a partial file under its final name. Each shard records its row count and a checksum of
its columns in the Parquet key-value metadata; a shard that does not validate is moved
to ``quarantine/`` and never read (its keys are computed again). The content-keyed cache
is exactly this store: a utility's key is (fingerprint, helped_id, example_id), a
baseline's or an embedding's (fingerprint, sample_id), so any run with the same
fingerprint reuses what is here.

The store root is the ``cache`` config key (default: the out dir), so many runs can
share one store. Key index: every shard's footer also lists the distinct sample ids it
covers (``delift.helped`` / ``delift.examples``, ``,``-joined). :meth:`ShardStore.iter_relevant`
reads only footers to find the shards that can hold a wanted key, then reads and
validates only those. A quarantined shard disappears from the listing and a shard
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
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from delift_ray.errors import StorageError, one_line

log = logging.getLogger(__name__)

UTILITY = "utility"
BASELINE = "baseline"
EMBEDDING = "embedding"
TMP_PREFIX = "_tmp-"

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


# --------------------------------------------------------------------------- locations

ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # the AWS SDKs' standard names, most specific first
_CREDENTIAL_PARAMS = ("access_key", "secret_key", "session_token")
_endpoint: Optional[str] = None  # the ``storage.endpoint`` config key, set by the driver


def set_endpoint(url: Optional[str]) -> None:
    """Use ``url`` as the S3 endpoint of every ``s3://`` location in this process
    (the ``storage.endpoint`` key; None: the environment's ``AWS_ENDPOINT_URL[_S3]``)."""
    global _endpoint
    _endpoint = url or None


def s3_endpoint() -> Optional[str]:
    """The S3 endpoint in force: ``storage.endpoint``, else ``AWS_ENDPOINT_URL_S3``, else
    ``AWS_ENDPOINT_URL``; None means AWS itself."""
    return _endpoint or next((os.environ[k] for k in ENDPOINT_ENV if os.environ.get(k)), None)


def check_no_credentials(uri: str) -> str:
    """Refuse a location that carries credentials (``?secret_key=`` or ``user:pass@``).

    pyarrow accepts keys in an S3 URI, but a location is logged, shipped to every actor and
    recorded in run.json: credentials belong in the environment (``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, an instance role) of every node.
    """
    if "://" not in uri:
        return uri
    rest = uri.split("://", 1)[1]
    netloc, _, query = rest.partition("?")
    params = {kv.split("=", 1)[0].lower() for kv in query.split("&") if kv}
    if "@" in netloc.split("/", 1)[0] or params & set(_CREDENTIAL_PARAMS):
        scheme = uri.split("://", 1)[0]
        raise StorageError(
            f"a {scheme}:// location must not carry credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or ~/.aws, or an instance role) on every node instead"
        )
    return uri


def absolute_location(uri: str) -> str:
    """A location as the driver means it: a local path made absolute here, before it is
    shipped to actors whose working directory differs; URIs unchanged."""
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or any URI pyarrow understands.

    ``s3://`` locations use :func:`s3_endpoint` (an S3-compatible server such as MinIO,
    Ceph or moto) when one is set; credentials come from the standard AWS chain only.
    """
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    check_no_credentials(uri)
    scheme, rest = uri.split("://", 1)
    endpoint = s3_endpoint() if scheme.lower() == "s3" else None
    try:
        if endpoint and "endpoint_override=" not in rest:
            from urllib.parse import quote

            # An explicit endpoint: plain S3FileSystem() ignores AWS_ENDPOINT_URL (pyarrow 2x).
            rest += ("&" if "?" in rest else "?") + "endpoint_override=" + quote(endpoint, safe="")
        return pafs.FileSystem.from_uri(f"{scheme}://{rest}")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise StorageError(f"cannot open storage location {uri!r}: {exc}") from None


OBJECT_STORES = ("s3", "gcs", "abfs")  # pyarrow type names whose writes are atomic per object


def atomic_write(fs: pafs.FileSystem, path: str, data: Union[bytes, Callable[[Any], None]]) -> str:
    """Write ``path`` so that no reader ever sees it partial.

    ``data`` is the bytes, or a function that writes to the open output stream (Parquet
    writers). On a file system: a temporary sibling (its name starts with
    :data:`TMP_PREFIX`, which listings skip), then a rename. On an object store an object
    appears only when its upload completes, so the object is written under its final name
    directly: a rename there is a copy and a delete, and folders are only name prefixes
    (creating one writes marker objects), which would cost seven more requests a shard.
    The bytes are complete before the upload starts, so only a finished upload is ever seen.
    """
    if fs.type_name in OBJECT_STORES:
        if callable(data):  # serialised first: a writer that fails uploads nothing
            buf = pa.BufferOutputStream()
            data(buf)
            data = buf.getvalue().to_pybytes()
        _write_stream(fs, path, data)
        return path
    parent, base = path.rsplit("/", 1)
    tmp = f"{parent}/{TMP_PREFIX}{base}-{uuid.uuid4().hex[:8]}"
    fs.create_dir(parent, recursive=True)
    try:
        _write_stream(fs, tmp, data)
        fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass
        raise
    return path


def _write_stream(fs: pafs.FileSystem, path: str, data: Union[bytes, Callable[[Any], None]]) -> None:
    with fs.open_output_stream(path) as sink:
        if callable(data):
            data(sink)
        else:
            sink.write(data)


def local_copy(uri: str) -> str:
    """A local copy of a file or folder at a URI (a dataset on object storage), made once
    per process in a temporary folder removed at exit; local paths are returned as given."""
    if "://" not in uri:
        return uri
    import atexit
    import shutil
    import tempfile

    if uri in _LOCAL_COPIES:
        return _LOCAL_COPIES[uri]
    fs, path = resolve_fs(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"data not found: {uri}")
    tmp = tempfile.mkdtemp(prefix="delift-ray-data-")
    atexit.register(shutil.rmtree, tmp, True)
    dest = os.path.join(tmp, info.base_name or "data")
    if info.type == pafs.FileType.File:
        files = [(path, dest)]
    else:
        sel = pafs.FileSelector(path, recursive=True)
        files = [
            (i.path, os.path.join(dest, os.path.relpath(i.path, path)))
            for i in fs.get_file_info(sel)
            if i.type == pafs.FileType.File
        ]
    try:
        # A plain loop: pyarrow's threaded copy_files once failed here on the empty _SUCCESS object
        # (ENOENT opening its local copy), under load; not reproduced alone.
        for src, dst in files:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with fs.open_input_stream(src) as fin, open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 22)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot read {uri}: {one_line(exc, with_type=True)}") from None
    _LOCAL_COPIES[uri] = dest
    return dest


_LOCAL_COPIES: dict[str, str] = {}


# --------------------------------------------------------------------------- reachability probe

PROBE_DIR = "_probe"


def write_probe(root: str, name: str, text: str) -> Optional[str]:
    """Write ``<root>/_probe/<name>``; None on success, else the error in one line."""
    try:
        fs, base = resolve_fs(root)
        fs.create_dir(f"{base}/{PROBE_DIR}", recursive=True)
        with fs.open_output_stream(f"{base}/{PROBE_DIR}/{name}") as f:
            f.write(text.encode())
    except (OSError, pa.ArrowException, StorageError) as exc:
        return f"cannot write {probe_location(root, name)}: {one_line(exc, with_type=True)}"
    return None


def read_probe(root: str, name: str, expect: str) -> Optional[str]:
    """Check that ``<root>/_probe/<name>`` holds ``expect``; None if so, else why not."""
    try:
        fs, base = resolve_fs(root)
        with fs.open_input_stream(f"{base}/{PROBE_DIR}/{name}") as f:
            got = f.read().decode("utf-8", "replace")
    except (OSError, pa.ArrowException, StorageError) as exc:
        return f"cannot read {probe_location(root, name)}: {one_line(exc, with_type=True)}"
    if got != expect:
        return f"{probe_location(root, name)} holds another run's probe (a different store under the same path?)"
    return None


def remove_probe(root: str, name: str) -> None:
    """Delete a probe; the probe folder goes too once it is empty, so a check leaves nothing behind."""
    try:
        fs, base = resolve_fs(root)
        fs.delete_file(f"{base}/{PROBE_DIR}/{name}")
        if not fs.get_file_info(pafs.FileSelector(f"{base}/{PROBE_DIR}", allow_not_found=True)):
            fs.delete_dir(f"{base}/{PROBE_DIR}")
    except (OSError, pa.ArrowException, StorageError):
        pass


def probe_location(root: str, name: str) -> str:
    return f"{absolute_location(root).rstrip('/')}/{PROBE_DIR}/{name}"


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
    if pa.types.is_string(arr.type):
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
        yield (offsets - offsets[0]).tobytes()
        data = arr.buffers()[2]
        if data is not None:
            yield memoryview(data)[int(offsets[0]) : int(offsets[-1])]
    elif pa.types.is_fixed_size_list(arr.type):
        yield np.ascontiguousarray(arr.flatten().to_numpy()).tobytes()
    else:
        yield np.ascontiguousarray(arr.to_numpy(zero_copy_only=False)).tobytes()


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


def checksum_matches(table: pa.Table, recorded: str) -> bool:
    """Whether ``table`` has the checksum its footer recorded, in the scheme it was written with."""
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
        """Write a shard atomically (temporary name, then rename); returns its path."""
        table = conform(kind, table)
        meta = {
            b"delift.rows": str(table.num_rows).encode(),
            b"delift.checksum": table_checksum(table).encode(),
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
            elif not checksum_matches(table.replace_schema_metadata(None), meta.get(b"delift.checksum", b"").decode()):
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
            if want_h is not None:
                ids = _FOOTER_MEMO.get((self.root_uri, shard.path))
                if ids is None and shard.size is not None and shard.size <= WHOLE_READ_BYTES:
                    data = self.read_bytes(shard.path)
                ids = ids or self.footer_ids(shard.path, data)
                if ids is not None:
                    h, e = ids
                    if not _names_any(h, want_h) or (kind == UTILITY and not _names_any(e, want_e)):
                        continue
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


# --------------------------------------------------------------------------- fingerprint

_FULL_HASH_SUFFIXES = (".json", ".model", ".txt", ".jinja")
_EDGE_BYTES = 1 << 20


def _file_digest(path: str, full: bool) -> str:
    h = hashlib.blake2b(digest_size=16)
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if full or size <= 2 * _EDGE_BYTES:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        else:  # weights: size plus both ends, so multi-GB checkpoints hash in milliseconds
            h.update(f.read(_EDGE_BYTES))
            f.seek(size - _EDGE_BYTES)
            h.update(f.read(_EDGE_BYTES))
    return h.hexdigest()


def model_digest(model: str) -> str:
    """Hash of a local checkpoint's config/tokenizer files (whole) and weights (size and ends).

    A hub id that is not a local directory hashes as its name and, when the hub cache
    holds a snapshot of it, that snapshot's revision and files (:func:`model_identity`).
    """
    h = hashlib.blake2b(digest_size=16)
    ident = model_identity(model)
    if ident.get("snapshot"):
        h.update(f"hub:{model}@{ident['revision']}".encode())
        model = ident["snapshot"]
    if os.path.isdir(model):
        for name in sorted(os.listdir(model)):
            p = os.path.join(model, name)
            if os.path.isfile(p) and not name.startswith("."):
                h.update(name.encode())
                h.update(_file_digest(p, name.endswith(_FULL_HASH_SUFFIXES)).encode())
    else:
        h.update(f"hub:{model}".encode())
    return h.hexdigest()


def model_identity(model: str) -> dict:
    """Hub id and revision of a model: ``{"hub_id", "revision", "snapshot"}``, None where unknown.

    A local directory has no hub identity (its files are hashed instead). A hub id is
    resolved against the local hub cache only (never the network); the snapshot folder's
    name is the commit the weights came from, so a new upload changes the fingerprint.
    """
    if os.path.isdir(model):
        return {"hub_id": None, "revision": None, "snapshot": None}
    none = {"hub_id": model, "revision": None, "snapshot": None}
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        repo = os.path.join(constants.HF_HUB_CACHE, repo_folder_name(repo_id=model, repo_type="model"))
        with open(os.path.join(repo, "refs", "main")) as f:
            revision = f.read().strip()
    except (ImportError, OSError, ValueError):  # not cached, or not a hub id at all
        return none
    snap = os.path.join(repo, "snapshots", revision)
    if not revision or not os.path.isdir(snap):
        return none
    return {"hub_id": model, "revision": revision, "snapshot": snap}


def scorer_fingerprint(model_hash: str, fields: dict) -> str:
    """16 hex digits over the model hash and every setting that changes the numbers."""
    import json

    h = hashlib.blake2b(digest_size=8)
    h.update(model_hash.encode())
    h.update(json.dumps(fields, sort_keys=True).encode())
    return h.hexdigest()


def baseline_lookup(store: ShardStore, wanted: Optional[set] = None) -> dict[str, float]:
    """Sample id -> d(i, no example) of the stored baselines (all, or those ``wanted``)."""
    t = store.read_all(BASELINE) if wanted is None else store.read_relevant(BASELINE, wanted)
    return dict(zip(t.column("sample_id").to_pylist(), t.column("distance").to_pylist()))
