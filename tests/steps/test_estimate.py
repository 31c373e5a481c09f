"""estimate.dry_run_report: the dry run's counts and tokens, from the job's own plan."""

from __future__ import annotations

import json

import numpy as np
import pytest

from delift_ray import estimate, planning
from delift_ray.config import load_config
from delift_ray.stages import STAGE_MATRICES


@pytest.fixture(scope="module")
def ingested(tiny_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    from delift_ray.steps.ingest import ingest

    tmp = tmp_path_factory.mktemp("est")
    rng = np.random.default_rng(1)
    words = ["red", "green", "blue", "cyan", "magenta", "yellow"]
    with open(tmp / "p.jsonl", "w") as f:
        for i in range(30):
            f.write(
                json.dumps(
                    {
                        "prompt": f"{i} " + " ".join(rng.choice(words, rng.integers(1, 40))),
                        "response": " ".join(rng.choice(words, rng.integers(1, 40))),
                    }
                )
                + "\n"
            )
    cfg = load_config(
        None,
        {
            "data": str(tmp / "p.jsonl"),
            "model": str(tiny_model_dir),
            "out": str(tmp / "o"),
            "engine.max_model_len": 512,
            "kernel.type": "knn",
            "kernel.k": 4,
            "kernel.random": 2,
            "ray.num_scorers": 2,
        },
    )
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return cfg, ingest(cfg, tok)[0], tok.eos_token_id


@pytest.mark.parametrize("reuse", [False, True])
def test_dry_run_tokens_are_the_plans_sequences(ingested, reuse):
    from delift_ray.prompts import baseline_sequence, pair_sequence

    cfg, sets, eos = ingested
    cfg = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"prefix_reuse": reuse})})
    pool = sets["pool"]
    n = len(pool.samples)
    ids = {"pool": pool.samples.sample_ids}
    index = planning.IdIndex(ids)
    cand = np.stack([np.random.default_rng(i).choice(n, 6, replace=False) for i in range(n)])
    stored = np.sort(index.gidx["pool"][:3] * index.size + index.gidx["pool"][cand[:3, 0]])  # 3 pairs already stored
    plan = planning.plan_knn(
        STAGE_MATRICES["instruction"],
        {"K": cand},
        ids,
        stored,
        set(ids["pool"][:5]),
        index=index,
        fingerprint="f",
        block_size=4,
    )
    rep = estimate.dry_run_report(cfg, sets, plan, 1000.0)
    max_len = cfg.engine.max_model_len - 1
    seqs = [
        pair_sequence(pool.tokens, int(h), pool.tokens, int(e), eos, max_len)[0]
        for b in plan.blocks
        for h, e in zip(b.h_idx, b.e_idx)
    ]
    bases = [baseline_sequence(pool.tokens, int(i), eos)[0] for c in plan.baseline["pool"] for i in c]
    assert (rep.pairs_total, rep.pairs_reused, rep.pairs_to_score) == (n * 6, 3, n * 6 - 3)
    assert (rep.baselines_total, rep.baselines_reused, rep.baselines_to_score) == (n, 5, n - 5)
    assert rep.prompt_tokens == sum(map(len, seqs)) + sum(map(len, bases))
    if not reuse:
        assert rep.computed_tokens == rep.prompt_tokens
    else:  # per pair: its own part plus half a KV block of the head; each example's head once
        half = ((cfg.engine.block_size or 128) - 1) / 2
        lengths = estimate.set_lengths(pool)
        pairs = [(int(h), int(e)) for b in plan.blocks for h, e in zip(b.h_idx, b.e_idx)]
        own = sum(min(lengths.tail_resp[h] + min(half, lengths.head[e]), len(s)) for (h, e), s in zip(pairs, seqs))
        heads = sum(lengths.head[e] for e in {e for _, e in pairs})
        want = own + heads + sum(map(len, bases))
        assert abs(rep.computed_tokens - want) < len(plan.blocks)  # whole tokens per block
        assert rep.computed_tokens < rep.prompt_tokens
    assert rep.engine_hours == pytest.approx(rep.computed_tokens / 1000.0 / 3600)
    assert rep.wall_hours == pytest.approx(rep.engine_hours / 2)
    text = rep.format()
    assert f"pairs: {rep.pairs_total:,} total, {rep.pairs_to_score:,} to score, 3 reused" in text
    assert f"tokens to compute: {rep.computed_tokens:,}" in text and "wall hours on 2 engines" in text
    assert len(text.splitlines()) <= 8
    assert json.loads(json.dumps(rep.as_dict()))["computed_tokens"] == rep.computed_tokens


def test_dry_run_without_a_rate_says_how_to_get_hours(ingested):
    cfg, sets, _ = ingested
    ids = {"pool": sets["pool"].samples.sample_ids}
    plan = planning.plan_blocks(STAGE_MATRICES["instruction"], ids, set(), set(), fingerprint="f", block_size=8)
    rep = estimate.dry_run_report(cfg, sets, plan)
    n = len(ids["pool"])
    assert rep.pairs_to_score == n * n and rep.engine_hours is None
    assert "--tokens-per-s" in rep.format()


def test_dry_run_counts_the_prompt_free_baselines_of_min_prompt_gain(ingested, tmp_path):
    """selection.min_prompt_gain adds one baseline per pool sample with an empty prompt: the dry
    run plans and prices them (it raised KeyError on the baseline-only set before)."""
    from transformers import AutoTokenizer

    from delift_ray import job
    from delift_ray.prompts import baseline_sequence
    from delift_ray.steps.ingest import PROMPT_FREE, baseline_only_sets

    cfg, sets, eos = ingested
    dense = {
        **cfg.model_dump(mode="json"),
        "out": str(tmp_path / "o"),
        "cache": str(tmp_path / "c"),
        "kernel": {**cfg.kernel.model_dump(mode="json"), "type": "dense"},
    }
    gated_cfg = job.coerce_config({**dense, "selection": {**dense["selection"], "min_prompt_gain": 0.0}})
    plain = job.run(dense, dry_run=True, progress=False)
    gated = job.run(gated_cfg, dry_run=True, progress=False)
    n = len(sets["pool"].samples)
    assert (plain.report.baselines_total, gated.report.baselines_total) == (n, 2 * n)
    assert gated.report.pairs_total == plain.report.pairs_total == n * n
    free = baseline_only_sets(gated_cfg, sets, AutoTokenizer.from_pretrained(gated_cfg.model))[PROMPT_FREE]
    extra = sum(len(baseline_sequence(free.tokens, i, eos)[0]) for i in range(n))
    assert extra > 0
    assert gated.report.prompt_tokens - plain.report.prompt_tokens == extra
    assert gated.report.computed_tokens - plain.report.computed_tokens == extra
    assert gated.report.samples == {"pool": n, PROMPT_FREE: n}
