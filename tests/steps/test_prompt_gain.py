"""selection.min_prompt_gain: excluded samples are never picked, in every stage, dense and sparse.

Known answers on small kernels, the planner's baseline-only set, and the gain rule. The
real-engine run is tests/evaluate/test_quality.py::test_min_prompt_gain_on_a_real_run.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from delift_ray import planning, stages
from delift_ray.config import SelectionConfig, load_config
from delift_ray.errors import BudgetError
from delift_ray.stages import STAGE_MATRICES
from delift_ray.steps.gate import low_prompt_gain


def _cfg(**kw):
    return SimpleNamespace(selection=SelectionConfig(**kw))


def _blocks() -> np.ndarray:
    # Two pairs that cover each other (0-1 strongly, 2-3 less): FL with budget 2 picks [0, 2].
    K = np.zeros((4, 4))
    K[:2, :2] = [[1.0, 0.9], [0.9, 1.0]]
    K[2:, 2:] = [[1.0, 0.5], [0.5, 1.0]]
    return K


@pytest.mark.parametrize("sparse", [False, True])
def test_excluded_samples_are_never_picked(sparse):
    def pick(excluded, budget=2):
        K = sp.csr_matrix(_blocks()) if sparse else _blocks()
        mask = None if excluded is None else np.isin(np.arange(4), excluded)
        idx, gains = stages.select("instruction", {"K": K}, budget, _cfg(), excluded=mask)
        return list(idx), list(np.round(gains, 6))

    assert pick(None) == ([0, 2], [1.9, 1.5])
    assert pick([0]) == ([1, 2], [1.9, 1.5])  # 1 covers 0 as well as 0 did
    assert pick([0, 2]) == ([1, 3], [1.9, 1.5])
    with pytest.raises(BudgetError, match="exceeds the 1 pool samples that may be picked"):
        pick([0, 1, 2], budget=2)


def test_zero_gain_picks_go_to_samples_not_excluded():
    K = np.zeros((4, 4))
    K[0, 0] = 1.0
    # Without exclusion the greedy fills with zero-gain picks by index: [0, 1, 2].
    assert list(stages.select("instruction", {"K": K.copy()}, 3, _cfg())[0]) == [0, 1, 2]
    idx, gains = stages.select(
        "instruction", {"K": K.copy()}, 3, _cfg(), excluded=np.array([False, True, False, False])
    )
    assert list(idx) == [0, 2, 3] and list(gains) == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("stage", ["task", "continual"])
def test_exclusion_in_the_task_and_continual_stages(stage):
    other = {"task": ("Q", np.ones((4, 2))), "continual": ("P", np.zeros((4, 1)))}[stage]
    excluded = np.array([True, False, False, False])
    idx, _ = stages.select(stage, {"K": _blocks(), other[0]: other[1]}, 2, _cfg(), excluded=excluded)
    assert 0 not in list(idx) and list(idx) == [1, 2]


def test_low_prompt_gain_rule():
    gains = np.array([0.3, 0.01, np.nan, -0.2])
    assert list(low_prompt_gain(0.05, gains)) == [False, True, False, True]  # a missing gain excludes nothing


def test_prompt_free_set_gets_baselines_and_no_pairs():
    ids = {"pool": ["a", "b", "c"], "prompt_free": ["fa", "fb", "fc"]}
    plan = planning.plan_blocks(STAGE_MATRICES["instruction"], ids, set(), {"fb"}, fingerprint="f", block_size=8)
    assert plan.pairs_total == 9
    assert {b.helped_set for b in plan.blocks} == {"pool"} and {b.example_set for b in plan.blocks} == {"pool"}
    assert [list(c) for c in plan.baseline["prompt_free"]] == [[0, 2]]  # fb is stored
    assert plan.baselines_total == 6 and plan.baselines_reused == 1
    # The continual stage's existing set is an example set: still no baselines for it.
    ids = {"pool": ["a", "b"], "existing": ["e"]}
    plan = planning.plan_blocks(STAGE_MATRICES["continual"], ids, set(), set(), fingerprint="f", block_size=8)
    assert "existing" not in plan.baseline and plan.baselines_total == 2


def test_config_key():
    base = {"data": "d.jsonl", "model": "m", "out": "o"}
    assert load_config(None, dict(base)).selection.min_prompt_gain is None
    assert load_config(None, {**base, "selection.min_prompt_gain": 0.02}).selection.min_prompt_gain == 0.02


def _near_miss() -> np.ndarray:
    # 0 and 1 intact, 2 a near-miss wrong answer the gate kept, 3 a wrong answer it excluded.
    # 2 "explains" 3 well (1.0) and the intact samples little (0.15 each); 0 and 1 cover
    # each other (0.4).
    K = np.zeros((4, 4))
    K[0, 1] = K[1, 0] = 0.4
    K[0, 2] = K[1, 2] = 0.15
    K[3, 2] = 1.0
    return K


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("stage", ["instruction", "task", "continual"])
def test_uncovered_excluded_samples_stop_rewarding_what_explains_them(stage, sparse):
    other = {"instruction": {}, "task": {"Q": np.ones((4, 2))}, "continual": {"P": np.zeros((4, 1))}}[stage]
    excluded = np.array([False, False, False, True])

    def pick(uncovered):
        K = sp.csr_matrix(_near_miss()) if sparse else _near_miss()
        idx, gains = stages.select(stage, {"K": K, **other}, 1, _cfg(), excluded=excluded, uncovered=uncovered)
        return list(idx), list(np.round(gains, 6))

    # Still counted as a sample to cover, 3 makes the near miss worth 1.3 against 0.4.
    assert pick(False) == ([2], [1.3])
    # Left out of the objective, 3 counts for nothing: 2 is worth 0.3, and 0 (0.4) wins.
    assert pick(True) == ([0], [0.4])


def test_zero_rows_dense_and_sparse_agree():
    K = np.arange(16, dtype=np.float64).reshape(4, 4)
    mask = np.array([True, False, True, False])
    dense = stages.zero_rows(K.copy(), mask)
    assert (dense[mask] == 0).all() and (dense[~mask] == K[~mask]).all()
    assert (stages.zero_rows(sp.csr_matrix(K), mask).toarray() == dense).all()


def test_the_noise_gates_exclusions_leave_the_objective_and_min_prompt_gains_stay_covered():
    from delift_ray.steps.select import select

    cfg = SimpleNamespace(stage="instruction", selection=SelectionConfig())
    excluded = np.array([False, False, False, True])
    gated, _ = select(cfg, {"K": _near_miss()}, 1, excluded, noise_gate=True)
    assert list(gated.indices) == [0]
    older, _ = select(cfg, {"K": _near_miss()}, 1, excluded)  # selection.min_prompt_gain's exclusions
    assert list(older.indices) == [2]
