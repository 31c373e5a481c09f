"""Stored vectors: resumable Parquet shards of one embedding fingerprint.

Layout: ``<cache or out>/embedding/fp=<EncoderSpec.fingerprint>/<chunk key>.parquet`` with
columns ``sample_id`` and ``vector`` (fixed-size list of float32): the shard store's
``embedding`` kind (:mod:`delift_ray.storage`), validated and quarantined like the
utilities. A re-run embeds only the samples no valid shard holds.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from delift_ray.embedder.encoders import Embedder
from delift_ray.storage import EMBEDDING, ShardStore


class EmbeddingStore:
    """Embedding shards of one embedding fingerprint: the :class:`~delift_ray.storage.ShardStore`
    kind ``embedding`` (same validation and quarantine as the utilities)."""

    def __init__(self, root: str, fingerprint: str):
        self.shards = ShardStore(root if "://" in root else os.path.abspath(os.path.expanduser(root)), fingerprint)
        self.root_uri = self.shards.root_uri  # absolute: actors may run elsewhere
        self.fingerprint = fingerprint
        self.dir = self.shards.kind_dir(EMBEDDING)

    def write(self, ids: list[str], vectors: np.ndarray) -> str:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        key = hashlib.blake2b("\x1f".join(ids).encode(), digest_size=12).hexdigest()
        flat = pa.array(vectors.ravel(), pa.float32())
        table = pa.table(
            {
                "sample_id": pa.array(ids, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
            }
        )
        return self.shards.write(EMBEDDING, key, table)

    def read(self, ids: list[str], progress: bool = False) -> tuple[np.ndarray | None, np.ndarray]:
        """(vectors, stored): the stored vectors of ``ids`` in ``ids`` order (zero rows
        where not stored; None when nothing is) and which ids are stored.

        Shards are read a batch at a time straight into the result, so one copy of the
        vectors is in memory (at 1M samples x 576 dims that copy alone is 2.3 GB).
        """
        from tqdm import tqdm

        want = pa.array(ids, pa.string())
        uniq = pc.unique(want)  # in order of first occurrence: uniq == want when no id repeats
        vec, found = None, np.zeros(len(uniq), dtype=bool)
        with tqdm(
            total=len(uniq), unit="sample", desc="stored embeddings", disable=not progress, dynamic_ncols=True
        ) as bar:
            for t in self.shards.iter_relevant(EMBEDDING, ids, batch_rows=1 << 16):
                pos = pc.index_in(t.column("sample_id"), value_set=uniq)
                keep = pc.is_valid(pos).to_numpy(zero_copy_only=False)
                pos = pos.to_numpy(zero_copy_only=False)[keep].astype(np.int64)
                dim = t.schema.field("vector").type.list_size
                rows = t.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, dim)
                if vec is None:
                    vec = np.zeros((len(uniq), dim), dtype=np.float32)
                vec[pos] = rows[keep]
                bar.update(int(np.count_nonzero(~found[pos])))
                found[pos] = True
        at = pc.index_in(want, value_set=uniq).to_numpy(zero_copy_only=False).astype(np.int64)
        if np.array_equal(at, np.arange(len(ids))):  # no id repeats: no second copy
            return vec, found
        return (None if vec is None else vec[at]), found[at]


def write_missing(
    store: EmbeddingStore,
    embedder: Embedder,
    ids: list[str],
    texts: list[str],
    todo: np.ndarray,
    *,
    chunk: int = 1024,
    progress: bool = False,
) -> None:
    """Embed the positions ``todo`` of ``ids``/``texts`` with ``embedder`` in this process,
    one shard per ``chunk`` samples."""
    from tqdm import tqdm

    with tqdm(total=int(todo.size), unit="sample", desc="embeddings", disable=not progress, dynamic_ncols=True) as bar:
        for s in range(0, todo.size, chunk):
            part = todo[s : s + chunk]
            store.write([ids[i] for i in part], embedder.embed([texts[i] for i in part]))
            bar.update(part.size)


def embed_samples(
    ids: list[str], store: EmbeddingStore, write_missing: Callable[[np.ndarray], None], progress: bool = False
) -> tuple[np.ndarray, dict]:
    """(len(ids), dim) L2-normalised vectors in ``ids`` order, reusing stored shards.

    ``write_missing(todo)`` must store vectors for the positions ``todo`` (in this process,
    :func:`write_missing`, or on Ray actors). Returns the vectors and counters
    ``{"embedded": new, "embeddings_reused": stored}``.
    """
    vectors, stored = store.read(ids, progress)
    todo = np.flatnonzero(~stored)
    if todo.size:
        write_missing(todo)
        vectors, stored = store.read(ids, progress)
        if not stored.all():
            raise RuntimeError(f"{int((~stored).sum())} embeddings are missing from {store.dir} after embedding")
    return vectors, {"embedded": int(todo.size), "embeddings_reused": len(ids) - int(todo.size)}
