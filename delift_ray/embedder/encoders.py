"""The :class:`Embedder` interface and its two backends.

Both turn texts into the same vectors. A text is tokenised by the encoder's tokenizer
(with its special tokens, truncated to ``spec.max_length`` tokens); with the encoder's
last hidden states ``h_t`` (t over those tokens) and the attention mask ``m_t``,

    v = sum_t m_t h_t / max(sum_t m_t, 1),    e = v / max(||v||_2, 1e-12),

so ``e`` is a unit vector (the zero vector for a text of no tokens) and inner products are
cosine similarities. This is the sentence-transformers pipeline of all-MiniLM-L6-v2
(Transformer -> mean Pooling -> Normalize), and vLLM's ``MEAN`` pooler with the embed
task's activation (the L2 normalisation).

* :class:`TransformersEmbedder`: the model in this process (``AutoModel``: an encoder, or
  the base model of a causal LM), batches of texts sorted by length, right padding (the
  mask keeps padding out of the mean), :func:`mean_pool`;
* :class:`VllmEmbedder`: vLLM's pooling runner (``runner="pooling"``, ``convert="embed"``)
  on the scorer's engine arguments; texts are tokenised exactly as the transformers route
  tokenises them and passed as token ids. Its vectors equal the transformers route's to
  float rounding (tested on the tiny model in float32). The job runs it on Ray actors
  (:mod:`delift_ray.scoring.embed_actor`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from delift_ray.embedder.spec import EncoderSpec
from delift_ray.errors import ConfigError, one_line

if TYPE_CHECKING:  # pragma: no cover
    from delift_ray.config import EngineConfig


@runtime_checkable
class Embedder(Protocol):
    """One encoder, loaded: ``embed(texts)`` is a float32 array (len(texts), dim) of unit vectors."""

    spec: EncoderSpec

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def close(self) -> None: ...


def mean_pool(hidden, mask):
    """``e = v / ||v||``, ``v = sum_t m_t h_t / max(sum_t m_t, 1)``: torch (batch, T, d), (batch, T) -> (batch, d) float32."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    v = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(v.float(), p=2, dim=-1)


def load_tokenizer(spec: EncoderSpec):
    """The encoder's tokenizer, padding on the right (with EOS where it has no pad token)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(spec.source, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the encoder {spec.source}: {one_line(exc)}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def check_finite(vectors: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """``vectors``, or FloatingPointError naming the first text whose vector is not finite."""
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1)) if vectors.size else []
    if len(bad):
        raise FloatingPointError(f"non-finite embedding for {len(bad)} text(s), first: {texts[bad[0]][:80]!r}")
    return vectors


class TransformersEmbedder:
    """The encoder of ``spec`` (backend ``transformers``) in this process, float32, on ``device``
    (default: cuda when torch sees one, else cpu); ``batch_size`` texts per forward pass."""

    def __init__(self, spec: EncoderSpec, *, device: Optional[str] = None, batch_size: int = 32):
        import torch
        from transformers import AutoModel

        if spec.backend != "transformers":
            raise ValueError(f"TransformersEmbedder needs a transformers spec, got backend {spec.backend}")
        self.spec = spec
        self.batch_size = int(batch_size)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tok = load_tokenizer(spec)
        torch.manual_seed(0)  # weights the checkpoint lacks (a pooler head) are never read, but seeded
        try:
            model = AutoModel.from_pretrained(
                spec.source, dtype=torch.float32, trust_remote_code=spec.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the encoder {spec.source}: {one_line(exc)}") from None
        self.model = model.to(self.device).eval()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors, in ``texts`` order."""
        import torch

        order = sorted(range(len(texts)), key=lambda k: len(texts[k]))  # less padding per batch
        out = None
        with torch.no_grad():
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                batch = self.tok(
                    [texts[k] for k in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.spec.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                vec = mean_pool(hidden.last_hidden_state, batch["attention_mask"]).cpu().numpy()
                if out is None:
                    out = np.zeros((len(texts), vec.shape[1]), dtype=np.float32)
                out[idx] = vec
        if out is None:  # no texts
            out = np.zeros((0, int(self.model.config.hidden_size)), dtype=np.float32)
        return check_finite(out, texts)

    def close(self) -> None:
        del self.model


def pooling_engine_kwargs(spec: EncoderSpec, cfg: "EngineConfig") -> dict:
    """The scorer's engine arguments (``cfg``), turned into a mean-pooling embedding engine of ``spec``."""
    from vllm.config import PoolerConfig

    from delift_ray.scoring.engine import pooling_kwargs

    kw = pooling_kwargs(spec.source, cfg, PoolerConfig(pooling_type="MEAN", use_activation=True))
    kw.update(enable_prefix_caching=False, max_model_len=min(cfg.max_model_len, max(spec.max_length, 64)))
    kw["max_num_batched_tokens"] = max(kw["max_num_batched_tokens"], kw["max_model_len"])
    return kw


class VllmEmbedder:
    """The encoder of ``spec`` (backend ``vllm``) as a vLLM pooling engine, with the scorer's
    engine settings ``cfg`` (``engine.*``); the dtype is ``cfg.dtype`` (``spec.dtype``)."""

    def __init__(self, spec: EncoderSpec, cfg: "EngineConfig"):
        from delift_ray.scoring.engine import cpu_engine_env

        if spec.backend != "vllm":
            raise ValueError(f"VllmEmbedder needs a vllm spec, got backend {spec.backend}")
        for k, v in cpu_engine_env(cfg).items():
            os.environ.setdefault(k, v)
        from vllm import LLM

        self.spec = spec
        self.tok = load_tokenizer(spec)
        self.llm = LLM(**pooling_engine_kwargs(spec, cfg))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors, in ``texts`` order."""
        from vllm.inputs import TokensPrompt

        # Tokenised exactly as the transformers route does (special tokens, truncation).
        ids = self.tok(list(texts), truncation=True, max_length=self.spec.max_length)["input_ids"]
        outs = self.llm.embed([TokensPrompt(prompt_token_ids=list(t)) for t in ids], use_tqdm=False)
        return check_finite(np.asarray([o.outputs.embedding for o in outs], dtype=np.float32), texts)

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()


def open_embedder(
    spec: EncoderSpec,
    *,
    engine: Optional["EngineConfig"] = None,
    device: Optional[str] = None,
    batch_size: int = 32,
) -> Embedder:
    """The :class:`Embedder` of ``spec``'s backend: transformers on ``device`` (``batch_size`` texts a
    pass), or a vLLM engine with the settings ``engine`` (required for vllm)."""
    if spec.backend == "vllm":
        if engine is None:
            raise ValueError("a vllm embedder needs the engine settings (engine=)")
        return VllmEmbedder(spec, engine)
    return TransformersEmbedder(spec, device=device, batch_size=batch_size)
