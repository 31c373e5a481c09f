"""The embedding actor: the scoring model in vLLM's pooling runner, mean-pooled.

For the knn kernel the default embedding of a sample is its scoring model's last hidden
states, averaged over the tokens of ``prompt + "\\n" + response`` and L2-normalised:

    e_i = normalise( (1/T) sum_t h_t ),  t over the first ``max_length`` tokens.

This is vLLM's ``runner="pooling"`` with ``convert="embed"`` and ``MEAN`` pooling (the
activation of the embed task is the L2 normalisation), so a GPU cluster embeds on the
same actors' GPUs as it scores, and the numbers equal the transformers route
(:class:`delift_ray.embeddings.MeanPoolEncoder`) to float rounding. A block of texts goes
in; the actor writes its vectors as one embedding shard and returns a count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from delift_ray.config import EngineConfig
from delift_ray.scoring.engine import cpu_engine_env, pooling_kwargs


@dataclass
class EmbedBlock:
    key: str
    sample_ids: list[str]
    texts: list[str]

    @property
    def size(self) -> int:
        return len(self.sample_ids)


def pooling_engine_kwargs(model: str, cfg: EngineConfig, max_length: int) -> dict:
    """The scorer's engine arguments, turned into a mean-pooling embedding engine."""
    from vllm.config import PoolerConfig

    kw = pooling_kwargs(model, cfg, PoolerConfig(pooling_type="MEAN", use_activation=True))
    kw.update(enable_prefix_caching=False, max_model_len=min(cfg.max_model_len, max(max_length, 64)))
    kw["max_num_batched_tokens"] = max(kw["max_num_batched_tokens"], kw["max_model_len"])
    return kw


class BlockEmbedder:
    """One pooling engine; ``embed_block`` writes a block's vectors to the embedding store."""

    def __init__(self, model: str, cfg: EngineConfig, store_root: str, fingerprint: str, max_length: int):
        for k, v in cpu_engine_env(cfg).items():
            os.environ.setdefault(k, v)
        from transformers import AutoTokenizer
        from vllm import LLM

        from delift_ray.embeddings import EmbeddingStore

        self.tok = AutoTokenizer.from_pretrained(model, trust_remote_code=cfg.trust_remote_code)
        self.max_length = max_length
        self.llm = LLM(**pooling_engine_kwargs(model, cfg, max_length))
        self.store = EmbeddingStore(store_root, fingerprint)

    def encode(self, texts: list[str]) -> np.ndarray:
        from vllm.inputs import TokensPrompt

        # Tokenised exactly as the transformers route does (special tokens, truncation).
        ids = self.tok(texts, truncation=True, max_length=self.max_length)["input_ids"]
        outs = self.llm.embed([TokensPrompt(prompt_token_ids=list(t)) for t in ids], use_tqdm=False)
        vec = np.asarray([o.outputs.embedding for o in outs], dtype=np.float32)
        if not np.isfinite(vec).all():
            bad = [i for i, v in enumerate(vec) if not np.isfinite(v).all()]
            raise FloatingPointError(f"non-finite embedding for {len(bad)} text(s), first: {texts[bad[0]][:80]!r}")
        return vec

    def embed_block(self, block: EmbedBlock) -> int:
        self.store.write(block.sample_ids, self.encode(block.texts))
        return block.size

    def shutdown(self) -> None:
        import gc

        del self.llm
        gc.collect()
