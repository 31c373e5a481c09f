"""The embedding actor: Ray plumbing around the one embedder's vLLM backend.

A :class:`BlockEmbedder` holds one :class:`delift_ray.embedder.VllmEmbedder` (the knn
step's :class:`~delift_ray.embedder.EncoderSpec`, the scorer's engine settings), so a GPU
cluster embeds on the same actors' devices as it scores. A block of texts goes in; the
actor writes their vectors (``embed(texts)``: masked mean pooling, L2 normalisation; see
:mod:`delift_ray.embedder`) as one shard of the spec's embedding store and returns a count.
"""

from __future__ import annotations

from dataclasses import dataclass

from delift_ray.config import EngineConfig
from delift_ray.embedder import EncoderSpec


@dataclass
class EmbedBlock:
    key: str
    sample_ids: list[str]
    texts: list[str]

    @property
    def size(self) -> int:
        return len(self.sample_ids)


class BlockEmbedder:
    """One pooling engine; ``embed_block`` writes a block's vectors to the embedding store at ``store_root``."""

    def __init__(self, spec: EncoderSpec, cfg: EngineConfig, store_root: str):
        from delift_ray.embedder import EmbeddingStore, VllmEmbedder

        self.embedder = VllmEmbedder(spec, cfg)
        self.store = EmbeddingStore(store_root, spec.fingerprint)

    def embed_block(self, block: EmbedBlock) -> int:
        self.store.write(block.sample_ids, self.embedder.embed(block.texts))
        return block.size

    def shutdown(self) -> None:
        self.embedder.close()
