"""Embed (knn kernels only): sample embeddings, then each helped sample's candidate examples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from delift_ray.config import DeliftConfig
from delift_ray.prompts import IngestedSet
from delift_ray.steps.base import StepStats, id_list

if TYPE_CHECKING:  # pragma: no cover
    from delift_ray.embedder import EmbeddingStore, EncoderSpec


@dataclass
class EmbedStats(StepStats):
    embedded: int = 0
    embeddings_reused: int = 0
    embedding_backend: str = ""
    encoder: dict | None = None  # the embedder: EncoderSpec.record(dim), in run.json steps[name=embed]

    def summary(self) -> str:
        who = (self.encoder or {}).get("source", "")
        return (
            f"{self.embedded} samples embedded, {self.embeddings_reused} reused"
            f" ({who + ', ' if who else ''}{self.embedding_backend})"
        )


@dataclass
class NeighbourStats(StepStats):
    k: int = 0
    random: int = 0
    candidates: dict[str, int] | None = None  # matrix -> candidate pairs

    def summary(self) -> str:
        pairs = ", ".join(f"{m} {n} candidate pairs" for m, n in (self.candidates or {}).items())
        return f"k {self.k} + random {self.random}: {pairs}"


def embed(cfg: DeliftConfig, sets: dict[str, IngestedSet], progress: bool) -> tuple[dict[str, np.ndarray], EmbedStats]:
    """L2-normalised vectors of every sample of every set, reusing the stored ones.

    One embedder (:mod:`delift_ray.embedder`): the spec of the ``kernel.embedding*`` keys,
    its vLLM backend on Ray actors or its transformers backend in this process (on the CPU).
    """
    from delift_ray import embedder

    names = list(sets)
    all_ids = [sid for n in names for sid in sets[n].samples.sample_ids]
    texts = [
        embedder.sample_text(p, r) for n in names for p, r in zip(sets[n].samples.prompts, sets[n].samples.responses)
    ]
    spec = embedder.knn_spec(cfg)
    # In the content-keyed cache, like the utilities: a later run or reselect over the same
    # samples reuses the vectors.
    store = embedder.EmbeddingStore(cfg.cache or cfg.out, spec.fingerprint)
    if spec.backend == "vllm":

        def write_missing(todo):
            embed_on_actors(cfg, spec, store, all_ids, texts, todo, progress)
    else:

        def write_missing(todo):
            enc = embedder.TransformersEmbedder(spec, device="cpu", batch_size=cfg.kernel.embedding_batch_size)
            try:
                embedder.write_missing(store, enc, all_ids, texts, todo, progress=progress)
            finally:
                enc.close()

    vec, counts = embedder.embed_samples(all_ids, store, write_missing, progress=progress)
    by_set, start = {}, 0
    for n in names:
        by_set[n] = vec[start : start + len(sets[n].samples)]
        start += len(sets[n].samples)
    dim = None if vec is None else int(vec.shape[1])
    return by_set, EmbedStats(counts["embedded"], counts["embeddings_reused"], spec.backend, spec.record(dim))


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
    cfg: DeliftConfig,
    spec: "EncoderSpec",
    store: "EmbeddingStore",
    ids: list[str],
    texts: list[str],
    todo: np.ndarray,
    progress: bool,
) -> None:
    """Embed the samples at ``todo`` with ``spec``'s vLLM backend on Ray actors (one per scorer slot).

    The actors write embedding shards themselves and are gone before the scorers start, so
    each device holds one engine at a time.
    """
    from tqdm import tqdm

    from delift_ray import dispatch
    from delift_ray.scoring.embed_actor import BlockEmbedder, EmbedBlock

    per_block = 32 * cfg.kernel.embedding_batch_size
    blocks = [
        EmbedBlock(f"embed-{s}", [ids[i] for i in todo[s : s + per_block]], [texts[i] for i in todo[s : s + per_block]])
        for s in range(0, todo.size, per_block)
    ]
    with (
        dispatch.actor_pool(cfg, BlockEmbedder, spec, cfg.engine, store.root_uri) as pool,
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
