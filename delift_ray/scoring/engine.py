"""A vLLM engine that returns gold-token log-probabilities of pre-tokenised sequences.

Prefix reuse: vLLM skips prefix-cache *reads* for requests with prompt logprobs (or
all-token pooling) unless ``skip_reading_prefix_cache=False``. With reads on, nothing is
computed for the first ``num_cached_tokens`` positions, so the logprob at position t is
only valid for ``t >= num_cached_tokens + 1``; every request whose cache hit reaches its
first scored position is scored again with reads off (counted in ``stats['rescored']``).

Three request kinds ("paths", ``engine.logprob_path``):

* ``hidden`` (CPU default; any vLLM build, plain-LM-head models): the engine runs vLLM's
  pooling runner with ``ALL`` token pooling and returns the final hidden states of the
  computed positions; :class:`delift_ray.scoring.lm_head.LMHead` applies the LM head and
  the log-sum-exp to the response rows only, batched across requests.
* ``full`` (every vLLM build and model): ``SamplingParams(max_tokens=1, prompt_logprobs=0,
  detokenize=False, flat_logprobs=True)`` -- a full-vocabulary log-softmax at every
  computed prompt position; the gold rows are picked out afterwards.
* ``suffix`` (vLLM's V2 model runner, GPU): ``prompt_logprob_token_ids=[[t] for t in gold]``
  with ``prompt_logprob_start = first_scored - 1``; the LM head runs only on the scored
  rows and ``RequestOutput.prompt_token_id_logprobs`` holds exactly the gold logprobs
  (None when a cache hit passes the first scored row: re-scored like the full path).

``auto`` takes ``hidden`` on CPU engines when the model has a plain LM head; elsewhere it
probes the suffix kind with one tiny request at start-up and falls back to ``full`` when
the engine rejects it. Inputs are ``TokensPrompt``s, so the engine needs no tokenizer.

Model dtype (``engine.dtype``; :func:`resolve_dtype`): ``auto`` does not mean vLLM's
``auto``, which loads a float32 checkpoint as float16 -- on a CPU without fast float16
matmuls that made the hidden path 16x slower and moved utilities by 6.6e-3. ``auto`` is
bfloat16 on a CPU with bfloat16 instructions, else float32; on a GPU the checkpoint's
dtype, with float32 going to bfloat16. The hidden path's LM head runs in float32 whatever
the engine's dtype (``engine.head_dtype``, :func:`head_dtype`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from delift_ray.config import EngineConfig
from delift_ray.errors import DeliftError, EngineStartError, engine_start_message, exception_text, one_line

FULL, SUFFIX, HIDDEN = "full", "suffix", "hidden"
# Hidden states of one engine call stay under this many bytes (the hidden path batches its
# requests so): 512 MiB is 233k rows of a 576-wide model, 32k rows of a 4096-wide one.
HIDDEN_BATCH_BYTES = 512 * 1024**2
log = logging.getLogger(__name__)

# Full prompt logprobs hold about 6 bytes per (token, vocab entry) of an engine step
# (fp32 logits plus the log-softmax), outside vLLM's memory profiler (vLLM PR 52054).
LOGPROB_BYTES = 6
LOGPROB_WARN_BYTES = 4 * 1024**3


def logprob_step_bytes(max_num_batched_tokens: int, vocab_size: int) -> int:
    """Peak prompt-logprob memory of one engine step: tokens x vocab x 6 bytes."""
    return max_num_batched_tokens * vocab_size * LOGPROB_BYTES


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

    def delta(self, before: dict) -> dict:
        """Counters accumulated since the snapshot ``before`` (an earlier ``as_dict()``)."""
        return {k: v - before.get(k, 0) for k, v in self.__dict__.items()}


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
    if quiet_engine():
        kw["use_tqdm_on_load"] = False
    return kw


def quiet_engine() -> bool:
    """Whether vLLM's start-up output is hidden: ``VLLM_LOGGING_LEVEL`` ERROR or CRITICAL (the
    CLI's default; ``delift-ray -v`` sets INFO). Each engine then prints only its banner."""
    return os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper() in ("ERROR", "CRITICAL")


def pooling_kwargs(model: str, cfg: EngineConfig, pooler_config) -> dict:
    """The scorer's engine arguments, with vLLM's pooling runner and ``pooler_config``."""
    kw = engine_kwargs(model, cfg)
    # vLLM's pooling front end needs the tokenizer even for pre-tokenised inputs.
    kw.update(runner="pooling", convert="embed", pooler_config=pooler_config, skip_tokenizer_init=False)
    return kw


def hidden_engine_kwargs(model: str, cfg: EngineConfig) -> dict:
    """Engine of the hidden path: raw final hidden states of every computed position."""
    from vllm.config import PoolerConfig

    return pooling_kwargs(model, cfg, PoolerConfig(task="token_embed", pooling_type="ALL", use_activation=False))


def hidden_params(read_cache: bool):
    from vllm import PoolingParams

    return PoolingParams(task="token_embed", use_activation=False, skip_reading_prefix_cache=not read_cache)


def hidden_rows(data, req: ScoreRequest) -> tuple[object, int]:
    """(hidden states predicting tokens[first_scored:], cached tokens) of one pooling output.

    The engine returns rows for the computed positions only: row 0 is position
    ``len(tokens) - rows``. None instead of the rows when the cache hit passes the row of
    position ``first_scored - 1``.
    """
    n = len(req.tokens)
    if req.first_scored < 1 or req.first_scored >= n:
        raise ValueError(f"first scored position {req.first_scored} outside 1..{n - 1}")
    cached = n - int(data.shape[0])
    if cached < 0:
        raise RuntimeError(f"engine returned {data.shape[0]} hidden rows for a {n}-token prompt")
    if cached > req.first_scored - 1:
        return None, cached
    return data[req.first_scored - 1 - cached : n - 1 - cached], cached


def batches_under(requests: Sequence[ScoreRequest], max_rows: int) -> list[list[int]]:
    """Consecutive index batches whose prompt tokens (the most rows they can return) fit max_rows."""
    out: list[list[int]] = []
    rows = 0
    for k, r in enumerate(requests):
        if out and rows + len(r.tokens) <= max_rows:
            out[-1].append(k)
            rows += len(r.tokens)
        else:
            out.append([k])
            rows = len(r.tokens)
    return out


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


def suffix_params_kwargs(req: ScoreRequest, read_cache: bool) -> dict:
    """SamplingParams arguments of a suffix-only request (gold rows only).

    Row i of ``prompt_logprob_token_ids`` scores its ids as the prediction of prompt token
    ``prompt_logprob_start + i + 1``; starting at ``first_scored - 1`` makes row i score
    ``tokens[first_scored + i]``, one row per scored position.
    """
    if req.first_scored < 1 or req.first_scored >= len(req.tokens):
        raise ValueError(f"first scored position {req.first_scored} outside 1..{len(req.tokens) - 1}")
    return dict(
        max_tokens=1,
        detokenize=False,
        prompt_logprob_token_ids=[[int(t)] for t in req.tokens[req.first_scored :]],
        prompt_logprob_start=req.first_scored - 1,
        skip_reading_prefix_cache=not read_cache,
    )


def full_params_kwargs(read_cache: bool) -> dict:
    """SamplingParams arguments of a full prompt-logprob request (every vLLM build)."""
    return dict(
        max_tokens=1, prompt_logprobs=0, detokenize=False, flat_logprobs=True, skip_reading_prefix_cache=not read_cache
    )


def suffix_logprobs(out, req: ScoreRequest) -> np.ndarray | None:
    """Gold logprobs from a suffix-only output; None when the engine left them out."""
    arr = getattr(out, "prompt_token_id_logprobs", None)
    if arr is None:
        return None
    arr = np.asarray(arr, dtype=np.float64)
    n = len(req.tokens) - req.first_scored
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1:
        raise RuntimeError(f"expected {n} x 1 suffix logprobs, engine returned shape {arr.shape}")
    return arr[:, 0]


def vllm_on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


DTYPES = ("float32", "bfloat16", "float16")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bfloat16 arithmetic: x86 ``avx512_bf16`` / ``amx_bf16``, Arm ``bf16``."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:  # no /proc (macOS, Windows): float32 is always fast and exact
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def checkpoint_dtype(hf_config) -> str | None:
    """The dtype a checkpoint's config names (``dtype`` / ``torch_dtype``), as a string."""
    value = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    name = str(value).replace("torch.", "") if value is not None else None
    return name if name in DTYPES else None


def resolve_dtype(
    requested: str, checkpoint: str | None, *, on_cpu: bool, cpu_bf16: bool = False, gpu_bf16: bool = True
) -> str:
    """The engine's model dtype for ``engine.dtype`` (see the module doc); explicit values pass through.

    * CPU: bfloat16 where the CPU has it, else float32 (never float16: no fast matmul);
    * GPU: the checkpoint's float16/bfloat16; float32 (or unknown) goes to bfloat16, or to
      float16 on a GPU without bfloat16.
    """
    if requested != "auto":
        return requested
    if on_cpu:
        return "bfloat16" if cpu_bf16 else "float32"
    dtype = checkpoint if checkpoint in ("float16", "bfloat16") else "bfloat16"
    return "float16" if dtype == "bfloat16" and not gpu_bf16 else dtype


def engine_dtype(model: str, cfg: EngineConfig) -> tuple[str, str | None]:
    """(resolved engine dtype, checkpoint dtype) of ``model`` on this process's vLLM platform."""
    checkpoint = None
    try:
        from delift_ray.scoring import lm_head

        checkpoint = checkpoint_dtype(lm_head.load_hf_config(model, cfg.trust_remote_code))
    except Exception:  # no readable config: vLLM reports the real problem when it loads the model
        pass
    if cfg.dtype != "auto":
        return cfg.dtype, checkpoint
    on_cpu = vllm_on_cpu()
    gpu_bf16 = True
    if not on_cpu:
        import torch

        gpu_bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return resolve_dtype(
        "auto", checkpoint, on_cpu=on_cpu, cpu_bf16=on_cpu and cpu_has_bf16(), gpu_bf16=gpu_bf16
    ), checkpoint


def head_dtype(model_dtype, on_cpu: bool, cpu_bf16: bool = True, requested: str = "auto"):
    """The hidden path's LM-head matmul dtype (``engine.head_dtype``).

    ``auto`` / ``float32``: float32 on every device. A bfloat16 head rounds each logit to 8
    mantissa bits (|z| ~ 20 moves by ~0.04), an error of the order of the off-diagonal
    utilities themselves; in float32 only the body's rounding is left (docs/checkpoints.md,
    section 6). ``engine``: the model's dtype, as vLLM's own head runs, except float32 on a CPU
    for float16, and for bfloat16 where the CPU lacks bfloat16 instructions (there float32
    is also about 50x faster; benchmarks/lm_head_dtype.py).
    """
    import torch

    if requested in ("auto", "float32"):
        return torch.float32
    if on_cpu and (model_dtype == torch.float16 or (model_dtype == torch.bfloat16 and not cpu_bf16)):
        return torch.float32
    return model_dtype


def start_llm(llm_class, kwargs: dict):
    """``llm_class(**kwargs)``; a start failure of a known class (missing weights, remote code,
    unsupported architecture, memory) becomes a one-line :class:`EngineStartError`."""
    try:
        return llm_class(**kwargs)
    except Exception as exc:
        msg = engine_start_message(exception_text(exc), kwargs.get("model", ""))
        if msg is None:
            raise
        # The message names the cause; the engine's own stack (dozens of lines, repeated by
        # Ray for an actor) is logged at debug level only.
        log.debug("engine start failed", exc_info=True)
        raise EngineStartError(msg) from None


class Scorer:
    """One vLLM engine. ``score(requests)`` returns the gold log-probabilities of each."""

    def __init__(self, model: str, cfg: EngineConfig):
        for k, v in cpu_engine_env(cfg).items():
            os.environ.setdefault(k, v)
        from vllm import LLM  # imported late: importing vLLM is slow and needs the env above

        self.requested_dtype = cfg.dtype
        self.dtype, checkpoint = engine_dtype(model, cfg)
        cfg = cfg.model_copy(update={"dtype": self.dtype})
        self.cfg = cfg
        self.stats = EngineStats()
        self.head = self.hidden_head(model, cfg)
        with warnings.catch_warnings():
            if quiet_engine():  # torch/transformers deprecation notes of the engine start
                warnings.simplefilter("ignore")
            self._start(model, cfg, LLM)
        print(self.banner(model, checkpoint), file=sys.stderr, flush=True)

    def _start(self, model: str, cfg: EngineConfig, LLM) -> None:
        if self.head is not None:
            self.llm = start_llm(LLM, hidden_engine_kwargs(model, cfg))
            on_cpu = vllm_on_cpu()
            self.head.to_dtype(
                head_dtype(self.llm.llm_engine.model_config.dtype, on_cpu, on_cpu and cpu_has_bf16(), cfg.head_dtype)
            )
            self.path = HIDDEN
        else:
            self.llm = start_llm(LLM, engine_kwargs(model, cfg))
            self.path = self.choose_path(cfg.logprob_path)
            if self.path == FULL:
                self.warn_logprob_memory()

    @property
    def head_dtype(self) -> str:
        """The hidden path's LM-head dtype ("float32", ...); "" where vLLM's own head runs."""
        return str(self.head.weight_t.dtype).replace("torch.", "") if self.head is not None else ""

    @property
    def precision(self) -> str:
        """What the utilities were computed in: the model dtype, plus the LM head's where it differs."""
        if self.head_dtype and self.head_dtype != self.dtype:
            return f"{self.dtype}, LM head {self.head_dtype}"
        return self.dtype

    def banner(self, model: str, checkpoint: str | None) -> str:
        """The one line an engine prints at start (vLLM's own start-up log is quiet unless ``-v``)."""
        device = "cpu" if vllm_on_cpu() else "gpu"
        how = (
            f"auto from a {checkpoint or 'unknown-dtype'} checkpoint"
            if self.requested_dtype == "auto"
            else "as configured"
        )
        head = f", LM head in {self.head_dtype}" if self.head is not None else ""
        return (
            f"delift-ray scorer engine: model {os.path.basename(model.rstrip('/')) or model}, device {device}, "
            f"dtype {self.dtype} ({how}), logprob path {self.path}{head}"
        )

    @staticmethod
    def hidden_head(model: str, cfg: EngineConfig):
        """The model's LM head when the hidden path runs (``hidden``; ``auto`` on CPU), else None.

        ``hidden`` fails with a one-line error when the model does not allow it; ``auto``
        then logs why and keeps the generating engine.
        """
        if cfg.logprob_path not in (HIDDEN, "auto"):
            return None
        if cfg.logprob_path == "auto" and not vllm_on_cpu():
            return None
        from delift_ray.scoring import lm_head

        try:
            hf_config = lm_head.load_hf_config(model, cfg.trust_remote_code)
            why = lm_head.unsupported_reason(hf_config)
            head = None if why else lm_head.LMHead.from_checkpoint(model, hf_config)
        except Exception as exc:  # no config or weights it can read: the generating engine may still run
            why, head = one_line(exc, with_type=True), None
        if head is not None:
            return head
        if cfg.logprob_path == HIDDEN:
            raise DeliftError(f"engine.logprob_path='hidden' is not supported for {model}: {why}")
        log.info("logprob path: full (hidden needs a plain LM head: %s)", why)
        return None

    def warn_logprob_memory(self) -> None:
        try:
            vocab = int(self.llm.llm_engine.model_config.get_vocab_size())
        except Exception:  # an engine without this attribute path: nothing to check
            return
        tokens = engine_kwargs("", self.cfg)["max_num_batched_tokens"]
        need = logprob_step_bytes(tokens, vocab)
        if need > LOGPROB_WARN_BYTES:
            log.warning(
                "prompt logprobs of one engine step need about %.1f GiB (%d tokens x %d vocab x %d B) "
                "that vLLM does not reserve; lower engine.max_num_batched_tokens if the scorer runs out of memory",
                need / 1024**3,
                tokens,
                vocab,
                LOGPROB_BYTES,
            )

    def choose_path(self, wanted: str) -> str:
        """``full`` or ``suffix`` on a generating engine: ``auto`` takes suffix when the probe works."""
        if wanted == FULL:
            return FULL
        error = self.probe_suffix()
        if error is None:
            return SUFFIX
        if wanted == SUFFIX:
            raise DeliftError(f"engine.logprob_path='suffix' is not supported by this vLLM engine: {error}")
        return FULL

    def probe_suffix(self) -> str | None:
        """None if a suffix-only request returns the right logprobs, else why not."""
        req = ScoreRequest([1, 2, 3, 4], 2)
        try:
            out = self._generate([req], read_cache=False, path=SUFFIX)[0]
            lp = suffix_logprobs(out, req)
        except Exception as exc:  # vLLM raises VLLMValidationError/ValueError/TypeError here
            return one_line(exc, with_type=True)
        if lp is None or not np.all(np.isfinite(lp)):
            return "the probe request returned no suffix logprobs"
        return None

    def _generate(self, requests: list[ScoreRequest], read_cache: bool, path: str | None = None):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        path = path or self.path
        prompts = [TokensPrompt(prompt_token_ids=r.tokens) for r in requests]
        if path == SUFFIX:
            params = [SamplingParams(**suffix_params_kwargs(r, read_cache)) for r in requests]
        else:
            params = SamplingParams(**full_params_kwargs(read_cache))
        return self.llm.generate(prompts, params, use_tqdm=False)

    def _extract(self, out, req: ScoreRequest) -> np.ndarray | None:
        if self.path == SUFFIX:
            return suffix_logprobs(out, req)
        return gold_logprobs(out.prompt_logprobs, req.tokens, req.first_scored)

    def score(self, requests: list[ScoreRequest], *, read_cache: bool = False) -> list[np.ndarray]:
        """Gold-token logprobs at positions first_scored.. of each request, in input order.

        With ``read_cache`` requests may reuse cached prefixes; results whose cache hit
        overlaps the scored positions are recomputed without cache reads.
        """
        t0 = time.perf_counter()
        read_cache = read_cache and self.cfg.enable_prefix_caching
        result: list[np.ndarray | None] = [None] * len(requests)
        redo = self._score_into(result, list(range(len(requests))), requests, read_cache)
        if redo and read_cache:
            self.stats.rescored += len(redo)
            redo = self._score_into(result, redo, requests, read_cache=False)
        if redo:
            raise RuntimeError("the engine returned no logprobs for a request without cache reads")
        self.stats.requests += len(requests)
        self.stats.prompt_tokens += sum(len(r.tokens) for r in requests)
        self.stats.seconds += time.perf_counter() - t0
        return result  # type: ignore[return-value]

    def _score_into(self, result: list, idx: list[int], requests: list[ScoreRequest], read_cache: bool) -> list[int]:
        """Scores requests[k] for k in idx into result[k]; returns the k left unscored.

        A request is left unscored when it read the cache and its hit reached a scored
        position; without cache reads that cannot happen, so the caller treats it as an error.
        """
        if self.path == HIDDEN:
            return self._score_hidden(result, idx, requests, read_cache)
        reqs = [requests[k] for k in idx]
        left = []
        for k, req, out in zip(idx, reqs, self._generate(reqs, read_cache)):
            cached = out.num_cached_tokens or 0
            self.stats.cached_tokens += cached
            lp = None if (read_cache and cached >= req.first_scored) else self._extract(out, req)
            if lp is None:
                left.append(k)
            else:
                result[k] = lp
        return left

    def _score_hidden(self, result: list, idx: list[int], requests: list[ScoreRequest], read_cache: bool) -> list[int]:
        import torch
        from vllm.inputs import TokensPrompt

        max_rows = max(1, HIDDEN_BATCH_BYTES // (4 * self.head.hidden_size))
        left = []
        for batch in batches_under([requests[k] for k in idx], max_rows):
            ks = [idx[b] for b in batch]
            reqs = [requests[k] for k in ks]
            outs = self.llm.encode(
                [TokensPrompt(prompt_token_ids=r.tokens) for r in reqs],
                pooling_params=hidden_params(read_cache),
                pooling_task="token_embed",
                use_tqdm=False,
            )
            rows, golds, done = [], [], []
            for k, req, out in zip(ks, reqs, outs):
                h, cached = hidden_rows(out.outputs.data, req)
                self.stats.cached_tokens += cached
                if h is None:
                    left.append(k)
                    continue
                rows.append(h)
                golds.append(np.asarray(req.tokens[req.first_scored :], dtype=np.int64))
                done.append(k)
            if not done:
                continue
            # One LM-head pass over the response rows of the whole batch.
            lps = self.head.gold_logprobs(torch.cat(rows), np.concatenate(golds))
            for k, part in zip(done, np.split(lps, np.cumsum([g.size for g in golds])[:-1])):
                result[k] = part
        return left

    def shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
