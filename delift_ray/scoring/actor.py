"""The scorer actor: one vLLM engine that turns a block of pairs into a Parquet shard.

A block travels to the actor as a small :class:`PairBlock` / :class:`BaselineBlock`
holding only the token segments it needs; the actor writes its shard to the store itself
and returns a few counters, so block results never pass through the object store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from delift_ray.config import EngineConfig
from delift_ray.errors import EngineStartError
from delift_ray.prompts import TokenizedSet, baseline_sequence, pair_sequence
from delift_ray.scoring.engine import Scorer, ScoreRequest
from delift_ray.storage import BASELINE, UTILITY, ShardStore
from delift_ray.utility import distance


@dataclass
class BaselineBlock:
    """Samples to score without an example."""

    key: str
    sample_ids: list[str]
    tokens: TokenizedSet  # only no_example and response are used

    @property
    def size(self) -> int:
        return len(self.sample_ids)


@dataclass
class PairBlock:
    """Pairs (helped h_idx[k], example e_idx[k]) over local helped/example lists."""

    key: str
    helped_ids: list[str]
    helped: TokenizedSet  # tail and response are used
    d_without: np.ndarray  # baseline distance of each helped sample
    example_ids: list[str]
    examples: TokenizedSet  # head is used
    h_idx: np.ndarray
    e_idx: np.ndarray

    @property
    def size(self) -> int:
        return int(self.h_idx.size)

    def sample_ids(self) -> list[str]:
        return sorted(set(self.helped_ids) | set(self.example_ids))

    @property
    def group(self) -> tuple:
        """Dispatch affinity: blocks with the same examples share their prefixes."""
        return tuple(self.example_ids)


@dataclass
class BlockResult:
    key: str
    pairs: int
    stats: dict = field(default_factory=dict)  # this block's engine counters (EngineStats.delta)
    logprob_path: str = ""  # the scorer's path (engine.logprob_path, resolved)
    dtype: str = ""  # the engine's model dtype (engine.dtype, resolved)
    head_dtype: str = ""  # the hidden path's LM-head dtype (engine.head_dtype, resolved); "" on other paths


def pin_advice(pinned: str, dtype: str) -> str:
    """The setting that makes a scorer compute utilities in the store's pinned precision."""
    pinned_dtype, _, pinned_head = pinned.partition(", LM head ")
    if pinned_dtype != dtype:
        return f"engine.dtype: {pinned_dtype}"
    return "engine.head_dtype: float32" if pinned_head else "engine.head_dtype: engine"


class BlockScorer:
    """Scores blocks with one engine and writes their shards (plain Python; the actor wraps it)."""

    def __init__(
        self, model: str, engine: EngineConfig, store_root: str, fingerprint: str, eos: int, prefix_reuse: bool
    ):
        self.scorer = Scorer(model, engine)
        self.store = ShardStore(store_root, fingerprint)
        pinned = self.store.pin_dtype(self.scorer.precision)
        if pinned != self.scorer.precision:
            raise EngineStartError(
                f"this scorer computes utilities in {self.scorer.precision} (engine.dtype {engine.dtype}, "
                f"engine.head_dtype {engine.head_dtype}), but the store {store_root} holds utilities of this model "
                f"computed in {pinned}; set {pin_advice(pinned, self.scorer.dtype)} (or use another cache) so that "
                "two precisions never mix in one selection"
            )
        self.max_len = engine.max_model_len - 1  # one position is kept for the sampled token
        self.eos = eos
        self.prefix_reuse = prefix_reuse

    def probe(self, root: str, driver_probe: str, token: str, accelerator: str) -> dict:
        """Where this actor runs and whether it sees the store (dispatch.probe_here)."""
        from delift_ray.dispatch import probe_here

        return probe_here(root, driver_probe, token, accelerator)

    def score_baseline(self, block: BaselineBlock) -> BlockResult:
        before = self.scorer.stats.as_dict()
        reqs = [ScoreRequest(*baseline_sequence(block.tokens, k, self.eos)) for k in range(block.size)]
        lps = self.scorer.score(reqs)
        d = np.array([distance(lp) for lp in lps], dtype=np.float64)
        table = pa.table({"sample_id": block.sample_ids, "distance": d})
        self.store.write(BASELINE, block.key, table)
        return BlockResult(
            block.key,
            block.size,
            self.scorer.stats.delta(before),
            self.scorer.path,
            self.scorer.dtype,
            self.scorer.head_dtype,
        )

    def pair_requests(self, block: PairBlock) -> tuple[np.ndarray, np.ndarray, list[ScoreRequest]]:
        """(h_idx, e_idx, requests) of a block in example-major order.

        Consecutive requests then share the example prefix, so the prefix cache holds one
        example's KV blocks while all of its helped rows are scored.
        """
        order = np.lexsort((block.h_idx, block.e_idx))
        h_idx, e_idx = block.h_idx[order], block.e_idx[order]
        reqs = [
            ScoreRequest(*pair_sequence(block.helped, int(h), block.examples, int(e), self.eos, self.max_len))
            for h, e in zip(h_idx, e_idx)
        ]
        return h_idx, e_idx, reqs

    def pair_distances(self, block: PairBlock) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(h_idx, e_idx, d_with) of a block's pairs, scored without writing anything."""
        h_idx, e_idx, reqs = self.pair_requests(block)
        lps = self.scorer.score(reqs, read_cache=self.prefix_reuse)
        return h_idx, e_idx, np.array([distance(lp) for lp in lps], dtype=np.float64)

    def score_pairs(self, block: PairBlock) -> BlockResult:
        before = self.scorer.stats.as_dict()
        h_idx, e_idx, d_with = self.pair_distances(block)
        uf = block.d_without[h_idx] - d_with
        table = pa.table(
            {
                "helped_id": [block.helped_ids[h] for h in h_idx],
                "example_id": [block.example_ids[e] for e in e_idx],
                "utility": uf.astype(np.float32),
                "distance": d_with.astype(np.float32),
            }
        )
        self.store.write(UTILITY, block.key, table)
        return BlockResult(
            block.key,
            block.size,
            self.scorer.stats.delta(before),
            self.scorer.path,
            self.scorer.dtype,
            self.scorer.head_dtype,
        )

    def shutdown(self) -> None:
        self.scorer.shutdown()
