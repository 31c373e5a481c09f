"""Plan: the scorer fingerprint, the keys the store lacks, and the blocks that score them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from delift_ray import kernel_types, planning
from delift_ray.config import DeliftConfig
from delift_ray.prompts import IngestedSet
from delift_ray.stages import STAGE_MATRICES
from delift_ray.steps.base import StepStats
from delift_ray.storage import BASELINE, UTILITY, ShardStore, model_digest, model_identity, scorer_fingerprint


@dataclass
class PlanStats(StepStats):
    pairs_total: int = 0
    pairs_to_score: int = 0
    pairs_reused: int = 0
    baselines_total: int = 0
    baselines_to_score: int = 0
    baselines_reused: int = 0
    blocks: int = 0

    @classmethod
    def of(cls, plan: planning.Plan) -> "PlanStats":
        return cls(
            plan.pairs_total,
            plan.pairs_to_score,
            plan.pairs_reused,
            plan.baselines_total,
            plan.baselines_to_score,
            plan.baselines_reused,
            len(plan.blocks),
        )

    def summary(self) -> str:
        return (
            f"{self.pairs_to_score} of {self.pairs_total} pairs to score ({self.pairs_reused} reused) in "
            f"{self.blocks} blocks; {self.baselines_to_score} of {self.baselines_total} baselines to score"
        )


@dataclass(frozen=True)
class ScorerIdentity:
    """Who scores, computed once per run: ``fingerprint`` keys the shard store, ``record`` is
    run.json's ``model`` (the path, the fingerprint and the checkpoint's hub id and revision)."""

    fingerprint: str
    record: dict


def scorer_identity(cfg: DeliftConfig) -> ScorerIdentity:
    """The scorer fingerprint covers the model's files and every setting that changes a utility."""
    ident = model_identity(cfg.model)
    fields = {
        "model": os.path.abspath(cfg.model) if os.path.isdir(cfg.model) else cfg.model,
        "hub_id": ident["hub_id"],
        "revision": ident["revision"],
        "dtype": cfg.engine.dtype,
        "max_model_len": cfg.engine.max_model_len,
        "templates": cfg.templates.model_dump(),
        # Scoring parameters that change the numbers: the sequence layout and the distance.
        "scoring": {"eos_after_context": True, "eos_after_response": True, "tokenize_special": False},
        "utility": "d=sqrt(mean((1-p)^2)); teacher forcing; v1",
    }
    fp = scorer_fingerprint(model_digest(cfg.model), fields)
    record = {"path": cfg.model, "fingerprint": fp, **{k: v for k, v in ident.items() if k != "snapshot"}}
    return ScorerIdentity(fp, record)


def fingerprint(cfg: DeliftConfig) -> str:
    return scorer_identity(cfg).fingerprint


def open_store(cfg: DeliftConfig, identity: Optional[ScorerIdentity] = None) -> ShardStore:
    """The content-keyed shard store of this scorer: the shared ``cache``, or the out dir."""
    return ShardStore(cfg.cache or cfg.out, (identity or scorer_identity(cfg)).fingerprint)


def sample_ids(sets: dict[str, IngestedSet]) -> dict[str, list[str]]:
    return {name: s.samples.sample_ids for name, s in sets.items()}


def stored_baselines(store: ShardStore, ids: dict[str, list[str]]) -> set[str]:
    all_ids = {sid for v in ids.values() for sid in v}
    return set(store.read_relevant(BASELINE, all_ids).column("sample_id").to_pylist())


def plan(
    cfg: DeliftConfig,
    sets: dict[str, IngestedSet],
    store: ShardStore,
    candidates: Optional[dict[str, np.ndarray]] = None,
) -> tuple[planning.Plan, PlanStats]:
    """The pairs of every matrix of the stage that the kernel type scores (every pair, or the
    candidates), less what the store holds; the type's memory guard runs first."""
    kind = kernel_types.get(cfg.kernel.type)
    matrices = STAGE_MATRICES[cfg.stage]
    # The memory guard runs before hours of scoring, not after.
    kind.check_fits({m.name: (len(sets[m.helped].samples), len(sets[m.example].samples)) for m in matrices})
    ids = sample_ids(sets)
    all_ids = {sid for v in ids.values() for sid in v}
    index = planning.IdIndex(ids)
    stored = planning.stored_pair_keys(store.iter_relevant(UTILITY, all_ids, all_ids), index)
    plan = kind.plan_pairs(
        matrices,
        candidates,
        ids,
        stored,
        stored_baselines(store, ids),
        index=index,
        fingerprint=store.fingerprint,
        block_size=cfg.scoring.block_size,
    )
    return plan, PlanStats.of(plan)
