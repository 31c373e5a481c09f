"""The kernel-type registry: each type declared once, and the steps, estimate and report ask it.

The last test registers a new type the package does not have and runs it through the config,
the plan and assemble steps, the estimate and the report's label without any other change:
what "a new kernel type is one module" means.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from delift_ray import kernel_types
from delift_ray.config import load_config
from delift_ray.errors import ConfigError
from delift_ray.estimate import SetLengths, compute_estimate, format_table
from delift_ray.steps.assemble import assemble
from delift_ray.steps.plan import plan
from delift_ray.storage import UTILITY, ShardStore

IDS = list("abcd")
# UF(h <- e) for the four samples; rows helped, columns examples.
UF = np.array(
    [[5.0, 1.0, 2.0, 3.0], [0.5, 5.0, 1.5, 2.5], [4.0, 0.0, 5.0, 1.0], [2.0, 3.0, 0.25, 5.0]],
    dtype=np.float32,
)


def config(tmp_path, **kernel):
    return load_config(
        None,
        {"data": str(tmp_path / "p.jsonl"), "model": "m", "out": str(tmp_path / "o")}
        | {f"kernel.{k}": v for k, v in kernel.items()},
    )


class Samples(list):
    """The part of an ingested set the plan and assemble steps read."""

    @property
    def sample_ids(self) -> list[str]:
        return list(self)


def sets():
    return {"pool": SimpleNamespace(samples=Samples(IDS))}


def filled_store(tmp_path) -> ShardStore:
    store = ShardStore(str(tmp_path / "cache"), "fp")
    h, e = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    store.write(
        UTILITY,
        "all",
        pa.table(
            {
                "helped_id": [IDS[i] for i in h.ravel()],
                "example_id": [IDS[j] for j in e.ravel()],
                "utility": UF.ravel(),
                "distance": np.zeros(16, np.float32),
            }
        ),
    )
    return store


def test_registry_holds_dense_then_knn_and_the_config_accepts_exactly_those():
    assert kernel_types.names() == ("dense", "knn")
    assert [t.needs_candidates for t in kernel_types.all_types()] == [False, True]
    with pytest.raises(ValueError, match=r"one of \('dense', 'knn'\), got 'cosine'"):
        kernel_types.get("cosine")


def test_config_refuses_an_unknown_type_and_a_knn_kernel_with_no_pair(tmp_path):
    assert config(tmp_path).kernel.type == "dense"
    with pytest.raises(ConfigError, match="kernel type must be one of"):
        config(tmp_path, type="cosine")
    with pytest.raises(ConfigError, match="leaves K no pair"):
        config(tmp_path, type="knn", k=1, random=0)
    assert config(tmp_path, type="knn", k=1, random=0, diagonal="keep").kernel.k == 1  # the rule is knn's own


def test_dense_plan_and_assemble_are_every_pair_minmax_scaled_without_the_diagonal(tmp_path):
    cfg = config(tmp_path)
    store = ShardStore(str(tmp_path / "cache"), "fp")
    planned, stats = plan(cfg, sets(), store)
    assert (stats.pairs_total, stats.pairs_to_score) == (16, 16)
    store = filled_store(tmp_path)
    planned, stats = plan(cfg, sets(), store)
    assert (stats.pairs_to_score, stats.pairs_reused, stats.blocks) == (0, 16, 0)
    kernels, astats = assemble(cfg, sets(), store)
    off = ~np.eye(4, dtype=bool)
    lo, hi = UF[off].min(), UF[off].max()
    want = np.where(off, (UF - lo) / (hi - lo), 0)
    assert isinstance(kernels["K"], np.ndarray)
    np.testing.assert_allclose(kernels["K"], want, rtol=1e-6)
    assert (astats.kernel, astats.kernel_nnz) == ("dense", {})


def test_knn_plan_and_assemble_keep_only_the_candidate_pairs(tmp_path):
    cfg = config(tmp_path, type="knn", k=2, random=0)
    cand = {"K": np.array([[0, 1], [1, 3], [2, 0], [3, -1]])}  # -1: no candidate
    planned, stats = plan(cfg, sets(), ShardStore(str(tmp_path / "empty"), "fp"), cand)
    assert stats.pairs_total == 7
    kernels, astats = assemble(cfg, sets(), filled_store(tmp_path), cand)
    K = kernels["K"]
    assert sp.isspmatrix_csr(K)
    # Stored off-diagonal candidates: (a, b) 1.0, (b, d) 2.5, (c, a) 4.0; min-max over those.
    want = np.zeros((4, 4), np.float32)
    want[1, 3], want[2, 0] = (2.5 - 1.0) / 3.0, 1.0
    np.testing.assert_allclose(K.toarray(), want, rtol=1e-6)
    assert (astats.kernel, astats.kernel_nnz) == ("knn", {"K": 2})  # the minimum scales to 0, unstored


def test_estimate_has_one_column_per_registered_type():
    cfg = load_config(None, {"data": "/d.jsonl", "model": "m", "out": "/o", "kernel.k": 2, "kernel.random": 1})
    n = 10
    ones = np.full(n, 3)
    est = compute_estimate(cfg, {"pool": SetLengths(n, ones, ones, ones)}, 1000.0, rate_source="given")
    assert est["dense"]["pairs"] == n * n and est["knn"]["pairs"] == n * 3
    assert est["dense"]["kernel_bytes"] == n * n * 4
    assert est["knn"]["kernel_bytes"] == n * 3 * 8 + (n + 1) * 8
    table = format_table(est)
    assert "dense" in table and "knn k 2 + random 1" in table


@pytest.fixture()
def csr_dense(monkeypatch):
    """A type the package does not have: every pair scored, held as a CSR matrix."""
    dense = kernel_types.get("dense")

    def to_csr(*args, **kw):
        return sp.csr_matrix(dense.assemble_matrix(*args, **kw))

    kind = kernel_types.KernelType(
        name="dense_csr",
        description="every pair, kept sparse",
        needs_candidates=False,
        plan_pairs=dense.plan_pairs,
        assemble_matrix=to_csr,
        transpose=lambda M: M.T.tocsr(),
        candidates_per_row=lambda kernel, n_examples: n_examples,
        kernel_bytes=lambda r, c, per_row: r * per_row * 8 + (r + 1) * 8,
        assembly_peak_bytes=lambda r, c, per_row: 2 * (r * per_row * 8 + (r + 1) * 8),
        label=lambda options: "every pair, in CSR",
    )
    monkeypatch.setitem(kernel_types.REGISTRY._entries, kind.name, kind)
    return kind


def test_a_new_type_runs_through_config_steps_estimate_and_report_with_no_other_change(tmp_path, csr_dense):
    cfg = config(tmp_path, type="dense_csr")
    store = filled_store(tmp_path)
    planned, stats = plan(cfg, sets(), store)
    assert (stats.pairs_total, stats.pairs_reused) == (16, 16)
    kernels, astats = assemble(cfg, sets(), store)
    dense, _ = assemble(config(tmp_path), sets(), store)
    np.testing.assert_allclose(kernels["K"].toarray(), dense["K"])
    assert astats.kernel == "dense_csr" and astats.kernel_nnz == {"K": int(kernels["K"].nnz)}
    ones = np.full(4, 3)
    est = compute_estimate(cfg, {"pool": SetLengths(4, ones, ones, ones)}, 1000.0, rate_source="given")
    assert est["dense_csr"]["pairs"] == 16 and "every pair, in CSR" in format_table(est)
    assert kernel_types.label(cfg.kernel.model_dump()) == "every pair, in CSR"


def test_a_recorded_type_this_version_does_not_know_is_shown_by_name():
    assert kernel_types.label({"type": "cosine"}) == "cosine"
    assert kernel_types.label({}) == "dense"  # run.json before kernel types were recorded
