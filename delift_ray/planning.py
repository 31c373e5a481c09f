"""Planning: which pairs a stage needs, which the store already has, and the blocks to score.

The matrix of each :class:`~delift_ray.stages.MatrixSpec` is cut into a grid of
``block_size x block_size`` cells (helped rows x example columns, in input order). A
cell's pairs that are already stored under the scorer fingerprint are reused; the rest
of the cell becomes one block, whose key is a hash of its pairs, so re-running the same
job plans the same blocks and finds their shards. Pairs shared by two matrices (a
sample in both the pool and the target set) are scored once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from delift_ray.stages import MatrixSpec


@dataclass
class PlannedBlock:
    """Pairs to score: helped set/example set names and local index arrays."""

    key: str
    helped_set: str
    example_set: str
    h_idx: np.ndarray  # indices into the helped set
    e_idx: np.ndarray  # indices into the example set

    @property
    def size(self) -> int:
        return int(self.h_idx.size)


@dataclass
class Plan:
    baseline: dict[str, list[np.ndarray]] = field(default_factory=dict)  # set -> index chunks
    blocks: list[PlannedBlock] = field(default_factory=list)
    pairs_total: int = 0
    pairs_reused: int = 0
    baselines_total: int = 0
    baselines_reused: int = 0

    @property
    def pairs_to_score(self) -> int:
        return sum(b.size for b in self.blocks)

    @property
    def baselines_to_score(self) -> int:
        return sum(len(c) for chunks in self.baseline.values() for c in chunks)


def block_key(fingerprint: str, helped_ids: list[str], example_ids: list[str]) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(fingerprint.encode())
    for a, b in zip(helped_ids, example_ids):
        h.update(f"{a}>{b};".encode())
    return h.hexdigest()


def stored_pairs(table: pa.Table) -> set[tuple[str, str]]:
    return set(zip(table.column("helped_id").to_pylist(), table.column("example_id").to_pylist()))


def plan_blocks(
    matrices: tuple[MatrixSpec, ...],
    ids: dict[str, list[str]],
    stored: set[tuple[str, str]],
    stored_baselines: set[str],
    *,
    fingerprint: str,
    block_size: int,
    baseline_chunk: int = 256,
) -> Plan:
    plan = Plan()
    planned: set[tuple[str, str]] = set()
    needs_baseline: dict[str, set[int]] = {}
    for m in matrices:
        H, E = ids[m.helped], ids[m.example]
        needs_baseline.setdefault(m.helped, set()).update(range(len(H)))
        for h0 in range(0, len(H), block_size):
            for e0 in range(0, len(E), block_size):
                hs, es = [], []
                for h in range(h0, min(h0 + block_size, len(H))):
                    for e in range(e0, min(e0 + block_size, len(E))):
                        pair = (H[h], E[e])
                        if pair in planned:
                            continue
                        planned.add(pair)
                        plan.pairs_total += 1
                        if pair in stored:
                            plan.pairs_reused += 1
                            continue
                        hs.append(h)
                        es.append(e)
                if hs:
                    key = block_key(fingerprint, [H[h] for h in hs], [E[e] for e in es])
                    plan.blocks.append(PlannedBlock(key, m.helped, m.example, np.array(hs), np.array(es)))
    seen: set[str] = set()
    for set_name, idx in needs_baseline.items():
        todo = []
        for i in sorted(idx):
            sid = ids[set_name][i]
            if sid in seen:
                continue
            seen.add(sid)
            plan.baselines_total += 1
            if sid in stored_baselines:
                plan.baselines_reused += 1
            else:
                todo.append(i)
        plan.baseline[set_name] = [np.array(todo[k : k + baseline_chunk]) for k in range(0, len(todo), baseline_chunk)]
    return plan
