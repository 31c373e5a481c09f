"""Score: the plan's baselines and pair blocks on the scorer actors, written as shards."""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from delift_ray import planning
from delift_ray.config import DeliftConfig
from delift_ray.prompts import IngestedSet, take
from delift_ray.steps.base import StepStats, id_list
from delift_ray.storage import ShardStore, baseline_lookup

log = logging.getLogger("delift_ray")


@dataclass
class ScoreStats(StepStats):
    pairs_scored: int = 0
    pairs_missing: int = 0
    pairs_redone: int = 0
    block_retries: int = 0
    failed_blocks: int = 0
    actor_deaths: int = 0
    # Requests whose prefix-cache hit reached a scored position and were scored again.
    rescored: int = 0
    cached_prompt_tokens: int = 0
    # How the actors computed gold logprobs (engine.logprob_path resolved: hidden/full/suffix).
    logprob_paths: list[str] = field(default_factory=list)
    # The model dtypes the actors resolved engine.dtype to, and their LM heads' (hidden path).
    dtypes: list[str] = field(default_factory=list)
    head_dtypes: list[str] = field(default_factory=list)
    node_losses: int = 0  # nodes lost while holding scorers
    blocks_requeued: int = 0  # in-flight blocks of lost nodes, sent again
    # Where each scorer ran: node id, accelerator ids (and whether its node was lost).
    scorers: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        extra = "".join(
            f", {v} {k.replace('_', ' ')}"
            for k, v in (
                ("pairs_missing", self.pairs_missing),
                ("block_retries", self.block_retries),
                ("actor_deaths", self.actor_deaths),
                ("node_losses", self.node_losses),
            )
            if v
        )
        how = "/".join(self.logprob_paths + self.dtypes + [f"LM head {d}" for d in self.head_dtypes]) or "no engine"
        return f"{self.pairs_scored} pairs scored ({how}){extra}"


def score(
    cfg: DeliftConfig, sets: dict[str, IngestedSet], store: ShardStore, plan: planning.Plan, eos: int, progress: bool
) -> ScoreStats:
    """Score the plan's baseline and pair blocks on scorer actors."""
    if not (plan.blocks or plan.baselines_to_score):
        return ScoreStats()
    from tqdm import tqdm

    from delift_ray import dispatch
    from delift_ray.scoring.actor import BlockScorer, PairBlock

    model = os.path.abspath(cfg.model) if os.path.isdir(cfg.model) else cfg.model
    counters: Counter = Counter()
    engine: Counter = Counter()  # per-block engine counters, summed (each result holds its block's delta)
    # What the actors resolved engine.logprob_path, engine.dtype and engine.head_dtype to.
    resolved: dict[str, set[str]] = {"logprob_paths": set(), "dtypes": set(), "head_dtypes": set()}

    def record(result) -> None:
        engine.update(result.stats)
        for name, value in zip(resolved, (result.logprob_path, result.dtype, result.head_dtype)):
            if value:
                resolved[name].add(value)

    with dispatch.actor_pool(
        cfg,
        BlockScorer,
        model,
        cfg.engine,
        store.root_uri,
        store.fingerprint,
        eos,
        cfg.scoring.prefix_reuse,
        probe_root=store.root_uri,
    ) as pool:
        base_src = [(n, chunk) for n, chunks in plan.baseline.items() for chunk in chunks]
        bar = tqdm(
            total=plan.baselines_to_score,
            unit="sample",
            desc="baselines",
            disable=not progress or not base_src,
            dynamic_ncols=True,
        )

        def base_done(block, result):
            bar.update(block.size)
            record(result)

        def base_dispatch(src, skip_failed):
            rep = dispatch.dispatch(
                pool,
                [baseline_block(sets, store, n, c) for n, c in src],
                "score_baseline",
                max_retries=cfg.scoring.max_retries,
                skip_failed=skip_failed,
                on_done=base_done,
                describe=lambda b: f"{b.key} (baselines of samples {id_list(b.sample_ids)})",
            )
            counters["block_retries"] += rep.retries
            counters["actor_deaths"] += rep.actor_deaths
            return rep

        # A failing baseline block (up to 256 samples) is scored again one sample per block,
        # so one bad sample costs its own row, and the error names exactly that sample.
        rep = base_dispatch(base_src, skip_failed=True)
        if rep.failed:
            by_key = {baseline_block(sets, store, n, c).key: (n, c) for n, c in base_src}
            singles = [(n, c[k : k + 1]) for b, _ in rep.failed for n, c in [by_key[b.key]] for k in range(len(c))]
            log.warning(
                "%d baseline block(s) failed; scoring their %d samples one by one", len(rep.failed), len(singles)
            )
            rep = base_dispatch(singles, skip_failed=cfg.scoring.skip_failed_blocks)
            counters["failed_blocks"] += len(rep.failed)
        bar.close()

        d_base = baseline_lookup(store, {sid for s in sets.values() for sid in s.samples.sample_ids})
        pair_blocks = []
        for b in plan.blocks:
            H, E = sets[b.helped_set], sets[b.example_set]
            # A helped sample without a baseline (its baseline block failed and was skipped)
            # has no utility: its pairs are missing, not scored.
            has_base = np.array([H.samples.sample_ids[i] in d_base for i in b.h_idx], dtype=bool)
            if not has_base.all():
                counters["pairs_missing"] += int((~has_base).sum())
                if not has_base.any():
                    continue
                b = planning.PlannedBlock(b.key, b.helped_set, b.example_set, b.h_idx[has_base], b.e_idx[has_base])
            hu, h_local = np.unique(b.h_idx, return_inverse=True)
            eu, e_local = np.unique(b.e_idx, return_inverse=True)
            helped_ids = [H.samples.sample_ids[i] for i in hu]
            pair_blocks.append(
                PairBlock(
                    b.key,
                    helped_ids,
                    take(H.tokens, hu),
                    np.array([d_base[s] for s in helped_ids]),
                    [E.samples.sample_ids[i] for i in eu],
                    take(E.tokens, eu),
                    h_local,
                    e_local,
                )
            )
        bar = tqdm(
            total=plan.pairs_to_score,
            unit="pair",
            desc="pairs",
            disable=not progress or not pair_blocks,
            dynamic_ncols=True,
        )

        def pair_done(block, result):
            bar.update(block.size)
            counters["pairs_scored"] += block.size
            record(result)

        rep = dispatch.dispatch(
            pool,
            pair_blocks,
            "score_pairs",
            max_retries=cfg.scoring.max_retries,
            skip_failed=cfg.scoring.skip_failed_blocks,
            on_done=pair_done,
            describe=lambda b: f"{b.key} ({b.size} pairs; samples {id_list(b.sample_ids())})",
        )
        bar.close()
        counters["block_retries"] += rep.retries
        counters["actor_deaths"] += rep.actor_deaths
        counters["pairs_redone"] += rep.redone
        counters["node_losses"] += len(pool.lost_nodes)
        counters["blocks_requeued"] += rep.requeued
        scorers = pool.placements()
        counters["pairs_missing"] += sum(b.size for b, _ in rep.failed)
        counters["failed_blocks"] += len(rep.failed)
    return ScoreStats(
        **{
            k: int(counters.get(k, 0))
            for k in (
                "pairs_scored",
                "pairs_missing",
                "pairs_redone",
                "block_retries",
                "failed_blocks",
                "actor_deaths",
                "node_losses",
                "blocks_requeued",
            )
        },
        rescored=int(engine.get("rescored", 0)),
        cached_prompt_tokens=int(engine.get("cached_tokens", 0)),
        **{name: sorted(values) for name, values in resolved.items()},
        scorers=scorers,
    )


def baseline_block(sets: dict[str, IngestedSet], store: ShardStore, set_name: str, chunk: np.ndarray):
    from delift_ray.scoring.actor import BaselineBlock

    ids = [sets[set_name].samples.sample_ids[i] for i in chunk]
    return BaselineBlock(
        planning.block_key(store.fingerprint, ids, ["-"] * len(ids)), ids, take(sets[set_name].tokens, chunk)
    )
