"""Scorer throughput: vLLM's default scoring vs the job's prefix reuse, side by side in one process.

    python -m benchmarks.scoring [--model DIR] [--data FILE] [--n 16] [--json]
        [--checkpoint-dtype float32|float16|bfloat16] [--write-result NAME]

Scores the n x n pairs of the first n samples (the instruction stage's K) with the job's
own code (``BlockScorer.pair_distances`` on the planner's blocks). Phases (``--phases``):

* ``naive``: vLLM's default -- prompt-logprob requests (the ``full`` path) that never read
  the prefix cache;
* ``reuse``: what the job does -- the logprob path ``engine.logprob_path`` picks
  (``--logprob-path``; on CPU ``auto`` is ``hidden``) with ``scoring.prefix_reuse``
  (example-major order, cache reads, re-scoring of requests whose hit reaches a scored
  position);
* ``nocache``: the job's path without cache reads (what prefix reuse alone gains);
* ``reuse_full``: the ``full`` path with prefix reuse (what the logprob path alone gains);
* ``reuse_head_engine``: the job's path with the hidden path's LM head in the engine's
  dtype (``engine.head_dtype: engine``, the default before issue 27) instead of float32;
* ``reuse_engine_float32``: the job's path on a second engine, started beside the first in
  this process, with ``engine.dtype: float32`` (what exact utilities cost where ``auto`` is
  bfloat16);
* ``raw``: a generating engine's prefill of the same token stream, no logprobs, no
  cache reads; ``reuse_nolp``: the reuse request stream with cache reads and no logprobs.

The prompt-logprob phases and the raw passes run on a generating engine. When the job's
path is ``hidden`` (a pooling engine), a second, generating engine with the same engine
settings starts beside it in the same process; otherwise the scorer's engine serves all
phases. The prefix cache is reset before each phase. One JSON line (``--json``) holds:

* ``naive_pairs_per_s``, ``reuse_pairs_per_s``, ``speedup`` = reuse / naive;
* ``max_abs_diff``: the largest |UF_naive - UF_reuse| over the same pairs;
* with ``nocache``: ``reuse_speedup_same_path`` = reuse / nocache; with ``reuse_full``:
  ``path_speedup`` = reuse / reuse_full;
* ``raw_prefill_tok_per_s``: prompt tokens / s of the raw pass;
* ``efficiency`` = needed / (elapsed_reuse x raw_prefill_tok_per_s), where ``needed`` is
  the tokens that must be computed at all: each example head once per engine plus every
  pair's query, response and EOS tokens. 1.0 means the reuse path runs as fast as a bare
  prefill of only the necessary tokens (``<phase>_efficiency`` for the other phases).

Defaults: the demo model (``delift_ray.assets.demo_model_dir``) and demo data
(``write_demo_dataset`` into a temp dir). ``--checkpoint-dtype`` first saves the model in
that dtype (once, in the cache dir), as a user's float32 or float16 checkpoint would come;
``--dtype`` is ``engine.dtype`` (default ``auto``, resolved as the job resolves it; the JSON
names the resolved ``dtype``). ``--data code`` is ``benchmarks/data/code_functions.jsonl``,
16 short Python functions with docstrings. ``--write-result NAME`` writes the figures with
``benchmarks.results.write_result``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Timed scoring phases: (on the generating full-path engine?, prefix reuse?).
PHASES = {
    "naive": (True, False),
    "reuse": (False, True),
    "nocache": (False, False),
    "reuse_full": (True, True),
    "reuse_head_engine": (False, True),
    "reuse_engine_float32": (False, True),
}


def prefill_seconds(llm, request_batches, read_cache: bool) -> float:
    """Seconds a generating engine takes to prefill the batches (no logprobs), cache reset first.

    ``request_batches`` may be lazy: building the requests is timed, as in the scoring phases.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm.reset_prefix_cache()
    sp = SamplingParams(max_tokens=1, detokenize=False, skip_reading_prefix_cache=not read_cache)
    t0 = time.perf_counter()
    for reqs in request_batches:
        llm.generate([TokensPrompt(prompt_token_ids=r.tokens) for r in reqs], sp, use_tqdm=False)
    return time.perf_counter() - t0


CODE_DATA = Path(__file__).resolve().parent / "data" / "code_functions.jsonl"


def checkpoint_in_dtype(model: str, dtype: str) -> str:
    """``model`` saved in ``dtype`` under the cache dir (once); its path."""
    from delift_ray import assets

    out = assets.cache_root() / "models" / f"{Path(model.rstrip('/')).name}-{dtype}"
    if (out / "config.json").exists():
        return str(out)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(model).save_pretrained(tmp)
    os.replace(tmp, out)
    return str(out)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF checkpoint dir (default: the demo model)")
    ap.add_argument("--data", help="JSONL/Parquet/... data file (default: demo ShareGPT data)")
    ap.add_argument("--n", type=int, default=16, help="samples; n x n pairs are scored (default 16)")
    ap.add_argument("--block-size", type=int, default=None, help="scoring.block_size (default: config default)")
    ap.add_argument("--kv-block-size", type=int, default=None, help="engine.block_size (default: config default)")
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--dtype", default="auto", help="engine.dtype (default auto)")
    ap.add_argument(
        "--checkpoint-dtype",
        choices=["float32", "float16", "bfloat16"],
        help="save the model in this dtype first and score that checkpoint",
    )
    ap.add_argument("--write-result", metavar="NAME", help="write the JSON to benchmarks/results/NAME.json")
    ap.add_argument(
        "--logprob-path",
        default=None,
        choices=["auto", "hidden", "full", "suffix"],
        help="engine.logprob_path (default: config default)",
    )
    ap.add_argument(
        "--phases", default="naive,reuse,raw", help="comma list of naive, reuse, nocache, reuse_full, reuse_nolp, raw"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the phases this many times, interleaved; each phase reports its fastest run",
    )
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout carries only the JSON
    # As the job's actor does (dispatch.plan_actors): vLLM otherwise drops to 1 torch thread.
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    if args.json:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    from transformers import AutoTokenizer

    from delift_ray import assets
    from delift_ray.config import validate_config
    from delift_ray.scoring.actor import BlockScorer

    tmp = Path(tempfile.mkdtemp(prefix="delift-bench-"))
    model = args.model or str(assets.demo_model_dir())
    if args.checkpoint_dtype:
        model = checkpoint_in_dtype(model, args.checkpoint_dtype)
    data = str(CODE_DATA) if args.data == "code" else args.data
    data = data or str(assets.write_demo_dataset(tmp / "demo.jsonl", n=args.n, tokenizer=model))
    tree = {
        "data": data,
        "model": model,
        "out": str(tmp / "out"),
        "max_samples": args.n,
        "engine": {"dtype": args.dtype, "max_model_len": args.max_model_len},
    }
    if args.kv_block_size:
        tree["engine"]["block_size"] = args.kv_block_size
    if args.logprob_path:
        tree["engine"]["logprob_path"] = args.logprob_path
    if args.max_num_batched_tokens:
        tree["engine"]["max_num_batched_tokens"] = args.max_num_batched_tokens
    if args.block_size:
        tree["scoring"] = {"block_size": args.block_size}
    cfg = validate_config(tree)
    eos = AutoTokenizer.from_pretrained(model).eos_token_id
    # The engine starts before delift_ray.job is imported: job imports the selection code,
    # which loads numba/llvmlite, and vllm-cpu 0.32's start-up scan of sys.modules crashes
    # on llvmlite's FFI wrapper ("'_lib_fn_wrapper' object has no attribute 'get'").
    bs = BlockScorer(model, cfg.engine, str(tmp / "out"), "bench", eos, True)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    from delift_ray.scoring.engine import FULL, HIDDEN, Scorer

    unknown = set(phases) - set(PHASES) - {"raw", "reuse_nolp"}
    if unknown:
        raise SystemExit(f"unknown phase(s) {sorted(unknown)}")
    # The full-path and raw phases need a generating engine: the scorer's own unless it pools
    # (hidden path); then a second one, with the same engine settings and the full path.
    generating = bs.scorer
    if bs.scorer.path == HIDDEN and {"naive", "reuse_full", "raw", "reuse_nolp"} & set(phases):
        generating = Scorer(model, cfg.engine.model_copy(update={"logprob_path": FULL}))

    float32_engine = None
    if "reuse_engine_float32" in phases:
        float32_engine = Scorer(model, cfg.engine.model_copy(update={"dtype": "float32"}))

    from delift_ray import planning, stages
    from delift_ray.prompts import baseline_sequence, take
    from delift_ray.scoring.actor import BaselineBlock, PairBlock
    from delift_ray.scoring.engine import ScoreRequest
    from delift_ray.steps.ingest import ingest, load_tokenizer
    from delift_ray.utility import distance

    tokenizer = load_tokenizer(cfg)
    pool = ingest(cfg, tokenizer)[0]["pool"]
    n = len(pool.samples)
    ids = {"pool": pool.samples.sample_ids}
    plan = planning.plan_blocks(
        stages.STAGE_MATRICES["instruction"], ids, set(), set(), fingerprint="bench", block_size=cfg.scoring.block_size
    )

    scorer = bs.scorer
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))

    # Baselines (not timed into pairs/s) and a warm-up of the engine's first steps.
    base = BaselineBlock("b", pool.samples.sample_ids, pool.tokens)
    base_reqs = [ScoreRequest(*baseline_sequence(base.tokens, k, bs.eos)) for k in range(n)]
    d_without = np.array([distance(lp) for lp in scorer.score(base_reqs)])
    if generating is not scorer:
        generating.score(base_reqs)  # the same warm-up (vLLM compiles its rank kernel on first use)
    if float32_engine is not None:  # its utilities use the first engine's baselines: a timing only
        float32_engine.score(base_reqs)

    blocks = []
    for b in plan.blocks:
        hu, h_local = np.unique(b.h_idx, return_inverse=True)
        eu, e_local = np.unique(b.e_idx, return_inverse=True)
        blocks.append(
            PairBlock(
                b.key,
                [ids["pool"][i] for i in hu],
                take(pool.tokens, hu),
                d_without[hu],
                [ids["pool"][i] for i in eu],
                take(pool.tokens, eu),
                h_local,
                e_local,
            )
        )
    pairs = sum(b.size for b in blocks)

    # Token accounting over the requests as the job builds them.
    all_reqs, needed = [], 0
    heads: dict[str, int] = {}  # each example head once per engine, across blocks
    for b in blocks:
        h_idx, e_idx, reqs = bs.pair_requests(b)
        all_reqs += reqs
        for h, e, r in zip(h_idx, e_idx, reqs):
            head_len = r.first_scored - 1 - len(b.helped.tail[h])
            eid = b.example_ids[e]
            heads[eid] = max(heads.get(eid, 0), head_len)
            needed += len(r.tokens) - head_len
    needed += sum(heads.values())
    prompt_tokens = sum(len(r.tokens) for r in all_reqs)

    def run_phase(reuse: bool, engine, head_dtype=None):
        engine.llm.reset_prefix_cache()
        bs.prefix_reuse, bs.scorer = reuse, engine
        head_before = engine.head.weight_t.dtype if head_dtype is not None else None
        if head_dtype is not None:
            engine.head.to_dtype(head_dtype)
        before = engine.stats.as_dict()
        t0 = time.perf_counter()
        uf = {}
        for b in blocks:
            h_idx, e_idx, d_with = bs.pair_distances(b)
            for h, e, d in zip(h_idx, e_idx, d_with):
                uf[(b.helped_ids[h], b.example_ids[e])] = b.d_without[h] - d
        bs.scorer = scorer
        if head_before is not None:
            engine.head.to_dtype(head_before)
        return time.perf_counter() - t0, uf, engine.stats.delta(before)

    res: dict = {}
    out: dict = {
        "model": Path(model).name,
        "n": n,
        "pairs": pairs,
        "blocks": len(blocks),
        "block_size": cfg.scoring.block_size,
        "kv_block_size": cfg.engine.block_size,
        "max_num_batched_tokens": cfg.engine.max_num_batched_tokens,
        "checkpoint_dtype": args.checkpoint_dtype or "as saved",
        "dtype_requested": cfg.engine.dtype,
        "dtype": scorer.dtype,
        "naive_dtype": generating.dtype,
        "logprob_path": scorer.path,
        "head_dtype": scorer.head_dtype,
        "data": "code" if args.data == "code" else (Path(args.data).name if args.data else "demo"),
        "prompt_tokens": prompt_tokens,
        "needed_tokens": needed,
        "mean_pair_tokens": round(prompt_tokens / max(pairs, 1), 1),
    }
    for ph in phases * args.repeat:
        if ph in PHASES:
            log(f"{ph}: scoring {pairs} pairs in {len(blocks)} blocks ...")
            on_generating, reuse = PHASES[ph]
            head = None
            if ph == "reuse_head_engine":
                if scorer.path != HIDDEN:
                    raise SystemExit("reuse_head_engine needs the hidden path")
                import torch

                from delift_ray.scoring.engine import cpu_has_bf16, head_dtype, vllm_on_cpu

                on_cpu = vllm_on_cpu()
                head = head_dtype(getattr(torch, scorer.dtype), on_cpu, on_cpu and cpu_has_bf16(), "engine")
                out["head_engine_dtype"] = str(head).replace("torch.", "")
            engine = generating if on_generating else (float32_engine if ph == "reuse_engine_float32" else scorer)
            secs, uf, st = run_phase(reuse, engine, head)
            if ph in res:  # a repeat: keep the fastest run, check the results did not move
                out[f"{ph}_repeat_max_abs_diff"] = max(
                    out.get(f"{ph}_repeat_max_abs_diff", 0.0), float(max(abs(res[ph][k] - uf[k]) for k in uf))
                )
                secs = min(secs, out[f"{ph}_s"])
            res[ph] = uf
            out[f"{ph}_s"] = round(secs, 3)
            out[f"{ph}_pairs_per_s"] = round(pairs / secs, 3)
            out[f"{ph}_tok_per_s"] = round(prompt_tokens / secs, 1)
            out[f"{ph}_cached_tokens"] = int(st["cached_tokens"])
            out[f"{ph}_rescored"] = int(st["rescored"])
        elif ph == "reuse_nolp":
            # The reuse path's exact request stream and cache reads, without prompt
            # logprobs: what the reuse path would cost if logprobs were free.
            log("reuse_nolp: the reuse stream with cache reads and no logprobs ...")
            secs = prefill_seconds(generating.llm, (bs.pair_requests(b)[2] for b in blocks), read_cache=True)
            out["reuse_nolp_s"] = round(min(secs, out.get("reuse_nolp_s", float("inf"))), 3)
        elif ph == "raw":
            log("raw: prefill of the same token stream, no logprobs, no cache reads ...")
            secs = min(prefill_seconds(generating.llm, [all_reqs], read_cache=False), out.get("raw_s", float("inf")))
            out["raw_s"] = round(secs, 3)
            out["raw_prefill_tok_per_s"] = round(prompt_tokens / secs, 1)
    if "naive" in res and "reuse" in res:
        out["speedup"] = round(out["reuse_pairs_per_s"] / out["naive_pairs_per_s"], 3)
        out["max_abs_diff"] = float(max(abs(res["naive"][k] - res["reuse"][k]) for k in res["naive"]))
    if "reuse" in res and "nocache" in res:
        out["reuse_speedup_same_path"] = round(out["reuse_pairs_per_s"] / out["nocache_pairs_per_s"], 3)
    if "reuse" in res and "reuse_head_engine" in res:
        out["head_float32_over_engine"] = round(out["reuse_pairs_per_s"] / out["reuse_head_engine_pairs_per_s"], 3)
        out["head_max_abs_diff"] = float(max(abs(res["reuse"][k] - res["reuse_head_engine"][k]) for k in res["reuse"]))
    if "reuse" in res and "reuse_engine_float32" in res:
        out["engine_float32_over_reuse"] = round(out["reuse_engine_float32_pairs_per_s"] / out["reuse_pairs_per_s"], 3)
    if "reuse" in res and "reuse_full" in res:
        out["path_speedup"] = round(out["reuse_pairs_per_s"] / out["reuse_full_pairs_per_s"], 3)
        out["path_max_abs_diff"] = float(max(abs(res["reuse"][k] - res["reuse_full"][k]) for k in res["reuse"]))
    if "raw_prefill_tok_per_s" in out:
        for ph in PHASES:
            if f"{ph}_s" in out:
                out[f"{ph}_efficiency"] = round(needed / (out[f"{ph}_s"] * out["raw_prefill_tok_per_s"]), 3)
        if "reuse_efficiency" in out:
            out["efficiency"] = out["reuse_efficiency"]
        if "reuse_nolp_s" in out:
            out["reuse_nolp_efficiency"] = round(needed / (out["reuse_nolp_s"] * out["raw_prefill_tok_per_s"]), 3)
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    for engine in {id(e): e for e in (scorer, generating, float32_engine) if e is not None}.values():
        engine.shutdown()
    from benchmarks.results import emit

    return emit(out, args.write_result)


if __name__ == "__main__":
    main()
