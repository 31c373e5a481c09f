"""Storage locations: local paths and URIs, the S3 rules, and the one atomic write.

* ``s3://`` locations use the ``storage.endpoint`` config key or the AWS SDKs' standard
  endpoint variables; credentials come from the standard AWS chain only, never from a
  location (a location that carries them is refused, so none is ever written to run.json).
* :func:`atomic_write` is the single primitive under every file delift-ray writes.
* The reachability probe: a file the driver writes and each node reads back.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any, Callable, Optional, Union

import pyarrow as pa
import pyarrow.fs as pafs

from delift_ray.errors import StorageError, one_line

log = logging.getLogger(__name__)

TMP_PREFIX = "_tmp-"

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


# pyarrow type names whose objects appear only when their upload completes. Not abfs: Arrow's Azure
# stream creates an empty blob under the name first, so Azure keeps the temporary name and rename.
OBJECT_STORES = ("s3", "gcs")


def atomic_write(fs: pafs.FileSystem, path: str, data: Union[bytes, pa.Buffer, Callable[[Any], None]]) -> str:
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
            data = buf.getvalue()  # an Arrow buffer: written as is, not copied into bytes
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


def _write_stream(fs: pafs.FileSystem, path: str, data: Union[bytes, pa.Buffer, Callable[[Any], None]]) -> None:
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
