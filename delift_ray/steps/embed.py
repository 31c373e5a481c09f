"""Embed (knn kernels only): sample embeddings, then each helped sample's candidate examples."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from delift_ray.config import DeliftConfig
from delift_ray.steps.base import StepStats, id_list
from delift_ray.steps.ingest import IngestedSet


@dataclass
class EmbedStats(StepStats):
    embedded: int = 0
    embeddings_reused: int = 0
    embedding_backend: str = ""

    def summary(self) -> str:
        return f"{self.embedded} samples embedded, {self.embeddings_reused} reused ({self.embedding_backend})"


@dataclass
class NeighbourStats(StepStats):
    k: int = 0
    random: int = 0
    candidates: dict[str, int] | None = None  # matrix -> candidate pairs

    def summary(self) -> str:
        pairs = ", ".join(f"{m} {n} candidate pairs" for m, n in (self.candidates or {}).items())
        return f"k {self.k} + random {self.random}: {pairs}"


def embed(cfg: DeliftConfig, sets: dict[str, IngestedSet], progress: bool) -> tuple[dict[str, np.ndarray], EmbedStats]:
    """L2-normalised vectors of every sample of every set, reusing the stored ones."""
    from delift_ray import embeddings

    kc = cfg.kernel
    names = list(sets)
    all_ids = [sid for n in names for sid in sets[n].samples.sample_ids]
    texts = [
        embeddings.sample_text(p, r) for n in names for p, r in zip(sets[n].samples.prompts, sets[n].samples.responses)
    ]
    source = embeddings.resolve_source(kc.embedding, cfg.model)
    backend = embeddings.resolve_backend(kc.embedding_backend, kc.embedding)
    dtype = cfg.engine.dtype if backend == "vllm" else "float32"
    # In the content-keyed cache, like the utilities: a later run or reselect over the same
    # samples reuses the vectors.
    store = embeddings.EmbeddingStore(
        cfg.cache or cfg.out, embeddings.embedding_fingerprint(source, kc.embedding_max_length, backend, dtype)
    )
    if backend == "vllm":

        def write_missing(todo):
            embed_on_actors(cfg, source, store, all_ids, texts, todo, progress)
    else:

        def write_missing(todo):
            embeddings.write_missing_locally(
                store,
                all_ids,
                texts,
                todo,
                source=source,
                max_length=kc.embedding_max_length,
                batch_size=kc.embedding_batch_size,
                trust_remote_code=cfg.engine.trust_remote_code,
                progress=progress,
            )

    vec, counts = embeddings.embed_samples(all_ids, store, write_missing, progress=progress)
    by_set, start = {}, 0
    for n in names:
        by_set[n] = vec[start : start + len(sets[n].samples)]
        start += len(sets[n].samples)
    return by_set, EmbedStats(counts["embedded"], counts["embeddings_reused"], backend)


def neighbours(
    cfg: DeliftConfig, vectors: dict[str, np.ndarray], progress: bool = False
) -> tuple[dict[str, np.ndarray], NeighbourStats]:
    """Each matrix's (n_helped, k + r) candidate examples (-1 marks an empty slot)."""
    from delift_ray import neighbours as nb
    from delift_ray.stages import STAGE_MATRICES

    kc = cfg.kernel
    seed = cfg.seed if kc.seed is None else kc.seed
    candidates = {
        m.name: nb.candidates(
            vectors[m.helped], vectors[m.example], kc.k, kc.random, exact_max=kc.exact_max, seed=seed, progress=progress
        )
        for m in STAGE_MATRICES[cfg.stage]
    }
    return candidates, NeighbourStats(kc.k, kc.random, {m: int((c >= 0).sum()) for m, c in candidates.items()})


def embed_on_actors(
    cfg: DeliftConfig, source: str, store, ids: list[str], texts: list[str], todo: np.ndarray, progress: bool
) -> None:
    """Embed the samples at ``todo`` with vLLM pooling engines on Ray actors (one per scorer slot).

    The actors write embedding shards themselves and are gone before the scorers start, so
    each device holds one engine at a time.
    """
    from tqdm import tqdm

    from delift_ray import dispatch
    from delift_ray.scoring.embedder import BlockEmbedder, EmbedBlock

    per_block = 32 * cfg.kernel.embedding_batch_size
    blocks = [
        EmbedBlock(f"embed-{s}", [ids[i] for i in todo[s : s + per_block]], [texts[i] for i in todo[s : s + per_block]])
        for s in range(0, todo.size, per_block)
    ]
    model = os.path.abspath(source) if os.path.isdir(source) else source
    with (
        dispatch.actor_pool(
            cfg, BlockEmbedder, model, cfg.engine, store.root_uri, store.fingerprint, cfg.kernel.embedding_max_length
        ) as pool,
        tqdm(total=int(todo.size), unit="sample", desc="embeddings", disable=not progress, dynamic_ncols=True) as bar,
    ):
        dispatch.dispatch(
            pool,
            blocks,
            "embed_block",
            max_retries=cfg.scoring.max_retries,
            on_done=lambda block, n: bar.update(n),
            describe=lambda b: f"{b.key} (embeddings of samples {id_list(b.sample_ids)})",
        )
