"""A vLLM engine that returns gold-token log-probabilities of pre-tokenised sequences.

Requests use ``SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False,
flat_logprobs=True)`` on ``TokensPrompt`` inputs, so the engine never needs a tokenizer.

Prefix reuse: vLLM skips prefix-cache *reads* for requests with prompt logprobs unless
``skip_reading_prefix_cache=False``. With reads on, the logprob at position t is only
valid for ``t >= num_cached_tokens + 1``; every request whose cache hit reaches its first
scored position is scored again with reads off (counted in ``stats['rescored']``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from delift_ray.config import EngineConfig


@dataclass
class ScoreRequest:
    tokens: list[int]
    first_scored: int  # first position whose logprob is scored


@dataclass
class EngineStats:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    rescored: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def cpu_engine_env(cfg: EngineConfig) -> dict[str, str]:
    """Environment a CPU vLLM engine needs; values already set by the user win."""
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, int(round(cfg.kv_cache_space_gib)))),
        # The engine core runs in-process: a killed actor leaves no orphan engine behind.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    return {k: os.environ.get(k, v) for k, v in env.items()}


def engine_kwargs(model: str, cfg: EngineConfig) -> dict:
    kw = dict(
        model=model,
        skip_tokenizer_init=True,
        dtype=cfg.dtype,
        max_model_len=cfg.max_model_len,
        max_num_batched_tokens=max(cfg.max_num_batched_tokens, cfg.max_model_len),
        max_num_seqs=cfg.max_num_seqs,
        enable_prefix_caching=cfg.enable_prefix_caching,
        enforce_eager=cfg.enforce_eager,
        trust_remote_code=cfg.trust_remote_code,
        seed=cfg.seed,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
    )
    if cfg.block_size is not None:
        kw["block_size"] = cfg.block_size
    return kw


def gold_logprobs(prompt_logprobs, tokens: Sequence[int], first: int) -> np.ndarray:
    """Log-probabilities of tokens[first:] from a request's prompt logprobs."""
    if prompt_logprobs is None:
        raise RuntimeError("the engine returned no prompt logprobs")
    gold = np.asarray(tokens[first:], dtype=np.int64)
    if hasattr(prompt_logprobs, "start_indices"):  # FlatLogprobs
        starts = np.asarray(prompt_logprobs.start_indices[first:], dtype=np.int64)
        ids = np.asarray(prompt_logprobs.token_ids, dtype=np.int64)
        lps = np.asarray(prompt_logprobs.logprobs, dtype=np.float64)
        if starts.size != gold.size:
            raise RuntimeError(f"expected {gold.size} scored positions, engine returned {starts.size}")
        # With prompt_logprobs=0 each position holds exactly the prompt token.
        if not np.array_equal(ids[starts], gold):
            raise RuntimeError("prompt logprobs do not belong to the prompt tokens")
        return lps[starts]
    return np.array([prompt_logprobs[t][tok].logprob for t, tok in zip(range(first, len(tokens)), gold)])


class Scorer:
    """One vLLM engine. ``score(requests)`` returns the gold log-probabilities of each."""

    def __init__(self, model: str, cfg: EngineConfig):
        for k, v in cpu_engine_env(cfg).items():
            os.environ.setdefault(k, v)
        from vllm import LLM  # imported late: importing vLLM is slow and needs the env above

        self.cfg = cfg
        self.llm = LLM(**engine_kwargs(model, cfg))
        self.stats = EngineStats()

    def _params(self, read_cache: bool):
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=1,
            prompt_logprobs=0,
            detokenize=False,
            flat_logprobs=True,
            skip_reading_prefix_cache=not read_cache,
        )

    def _generate(self, requests: list[ScoreRequest], read_cache: bool):
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=r.tokens) for r in requests]
        return self.llm.generate(prompts, self._params(read_cache), use_tqdm=False)

    def score(self, requests: list[ScoreRequest], *, read_cache: bool = False) -> list[np.ndarray]:
        """Gold-token logprobs at positions first_scored.. of each request, in input order.

        With ``read_cache`` requests may reuse cached prefixes; results whose cache hit
        overlaps the scored positions are recomputed without cache reads.
        """
        t0 = time.perf_counter()
        read_cache = read_cache and self.cfg.enable_prefix_caching
        outs = self._generate(requests, read_cache)
        result: list[np.ndarray | None] = [None] * len(requests)
        redo = []
        for k, (req, out) in enumerate(zip(requests, outs)):
            cached = out.num_cached_tokens or 0
            self.stats.cached_tokens += cached
            if read_cache and cached >= req.first_scored:
                redo.append(k)
                continue
            result[k] = gold_logprobs(out.prompt_logprobs, req.tokens, req.first_scored)
        if redo:
            self.stats.rescored += len(redo)
            again = self._generate([requests[k] for k in redo], read_cache=False)
            for k, out in zip(redo, again):
                result[k] = gold_logprobs(out.prompt_logprobs, requests[k].tokens, requests[k].first_scored)
        self.stats.requests += len(requests)
        self.stats.prompt_tokens += sum(len(r.tokens) for r in requests)
        self.stats.seconds += time.perf_counter() - t0
        return result  # type: ignore[return-value]

    def shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
