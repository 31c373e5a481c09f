"""kernel.diagonal and kernel.scaling: known answers, dense and sparse, config and alias."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from delift_ray.config import load_config
from delift_ray.errors import ConfigError
from delift_ray.kernel import assemble_sparse, assemble_sparse_from_tables, finish_dense, scale_values, self_positions
from delift_ray.rundir import RunDocument
from delift_ray.selection import facility_location

BASE = {"data": "d.jsonl", "model": "m", "out": "o"}


def test_scale_values_known_answers():
    v = np.array([-1.0, 0.0, 1.0, 3.0], dtype=np.float32)
    assert np.allclose(scale_values(v, "minmax"), [0.0, 0.25, 0.5, 1.0])
    assert np.allclose(scale_values(v, "clip"), [0.0, 0.0, 1 / 3, 1.0])
    # Nothing helps: clip gives an all-zero kernel, minmax still spreads the harm over [0, 1].
    assert np.allclose(scale_values(np.array([-2.0, -1.0]), "clip"), [0.0, 0.0])
    assert np.allclose(scale_values(np.array([-2.0, -1.0]), "minmax"), [0.0, 1.0])
    assert np.allclose(scale_values(np.array([0.5, 0.5]), "minmax"), [0.0, 0.0])
    with pytest.raises(ValueError, match="scaling"):
        scale_values(v, "zscore")


def test_finish_dense_drop_takes_the_diagonal_out_of_scaling():
    ids = ["a", "b"]
    M = np.array([[4.0, 1.0], [-1.0, 2.0]], dtype=np.float32)
    keep = finish_dense(M.copy(), ids, ids, diagonal="keep", scaling="minmax")
    assert np.allclose(keep, [[1.0, 0.4], [0.0, 0.6]])
    drop = finish_dense(M.copy(), ids, ids, diagonal="drop", scaling="minmax")
    assert np.allclose(drop, [[0.0, 1.0], [0.0, 0.0]])  # off-diagonal 1 and -1 -> 1 and 0
    clip = finish_dense(M.copy(), ids, ids, diagonal="drop", scaling="clip")
    assert np.allclose(clip, [[0.0, 1.0], [0.0, 0.0]])
    clip_keep = finish_dense(M.copy(), ids, ids, diagonal="keep", scaling="clip")
    assert np.allclose(clip_keep, [[1.0, 0.25], [0.0, 0.5]])
    with pytest.raises(ValueError, match="diagonal"):
        finish_dense(M.copy(), ids, ids, diagonal="zero", scaling="minmax")


def test_finish_dense_missing_pairs_and_cross_set_self_pairs():
    # Q-like matrix: helped = targets (t, x), examples = pool (x, y); x is in both sets.
    M = np.array([[0.2, np.nan], [0.9, 0.4]], dtype=np.float32)
    assert [tuple(a) for a in self_positions(["t", "x"], ["x", "y"])] == [(1,), (0,)]
    out = finish_dense(M.copy(), ["t", "x"], ["x", "y"], diagonal="drop", scaling="minmax")
    # (1, 0) is x helping itself: dropped; the NaN (missing) pair is 0; 0.2 and 0.4 -> 0 and 1.
    assert np.allclose(out, [[0.0, 0.0], [0.0, 1.0]])


def _diagonal_kernel():
    # Samples 0 and 1 are their own best examples (3.0, 2.9); sample 2 helps every other
    # sample (0.5) but barely itself; nothing else helps anyone.
    uf = np.zeros((4, 4), dtype=np.float32)
    np.fill_diagonal(uf, [3.0, 2.9, 0.1, 0.1])
    uf[[0, 1, 3], 2] = 0.5
    return uf


def test_the_diagonal_changes_the_picks():
    ids = list("abcd")
    keep = finish_dense(_diagonal_kernel(), ids, ids, diagonal="keep", scaling="minmax")
    idx, gains = facility_location(keep, 2)
    # keep: K = UF / 3. Gains of the first pick: 1.0 (a), 0.967 (b), 1.6/3 = 0.533 (c);
    # then b still adds 2.9/3, c only (0.5 + 0.1 + 0.5)/3 = 0.367.
    assert list(idx) == [0, 1]
    assert np.allclose(gains, [1.0, 2.9 / 3], atol=1e-6)
    drop = finish_dense(_diagonal_kernel(), ids, ids, diagonal="drop", scaling="minmax")
    idx, gains = facility_location(drop, 1)
    # drop: off-diagonal max 0.5 -> 1, so c covers the three other samples fully.
    assert list(idx) == [2] and np.isclose(gains[0], 3.0)


def test_clipping_changes_the_picks():
    ids = list("abcd")
    uf = np.zeros((4, 4), dtype=np.float32)
    uf[1, 0], uf[2, 0], uf[3, 0] = 1.0, -1.0, -1.0  # a helps b a lot and hurts c and d
    uf[[0, 2, 3], 1] = 0.3  # b helps every other sample a little
    # minmax over the off-diagonal entries [-1, 1]: UF -> (UF + 1) / 2, so UF = 0 is 0.5.
    mm = finish_dense(uf.copy(), ids, ids, diagonal="drop", scaling="minmax")
    idx, gains = facility_location(mm, 1)
    assert list(idx) == [1] and np.isclose(gains[0], 3 * 0.65)  # columns c, d: 3 x 0.5 = 1.5
    cl = finish_dense(uf.copy(), ids, ids, diagonal="drop", scaling="clip")
    idx, gains = facility_location(cl, 1)
    assert list(idx) == [0] and np.isclose(gains[0], 1.0)  # b's column is 3 x 0.3 = 0.9


def test_sparse_options_match_dense():
    rng = np.random.default_rng(0)
    n = 12
    uf = rng.normal(size=(n, n)).astype(np.float32)
    rows, cols = np.nonzero(np.ones((n, n), dtype=bool))
    ids = [f"s{i}" for i in range(n)]
    for diagonal in ("keep", "drop"):
        for scaling in ("minmax", "clip"):
            dense = finish_dense(uf.copy(), ids, ids, diagonal=diagonal, scaling=scaling)
            drop = (np.arange(n) * n + np.arange(n)) if diagonal == "drop" else None
            S = assemble_sparse(rows, cols, uf[rows, cols], (n, n), scaling=scaling, drop_keys=drop)
            assert np.allclose(S.toarray(), dense, atol=1e-6), (diagonal, scaling)


def test_sparse_from_tables_drops_self_pairs_by_id():
    import pyarrow as pa

    t = pa.table(
        {
            "helped_id": ["a", "a", "b", "b"],
            "example_id": ["a", "b", "a", "b"],
            "utility": pa.array([5.0, 1.0, -1.0, 2.0], pa.float32()),
            "distance": pa.array([0.0] * 4, pa.float32()),
        }
    )
    M = assemble_sparse_from_tables(t, ["a", "b"], ["a", "b"], diagonal="drop", scaling="clip")
    assert np.allclose(M.toarray(), [[0.0, 1.0], [0.0, 0.0]])
    M = assemble_sparse_from_tables(t, ["a", "b"], ["a", "b"], diagonal="keep", scaling="clip")
    assert np.allclose(M.toarray(), [[1.0, 0.2], [0.0, 0.4]])
    # Across two sets (Q, P) a self pair sits wherever the sets share a sample, not on (i, i).
    M = assemble_sparse_from_tables(t, ["b", "a"], ["a", "b"], diagonal="drop", scaling="clip")
    assert np.allclose(M.toarray(), [[0.0, 0.0], [0.0, 1.0]])
    M = assemble_sparse_from_tables(t, ["b", "a"], ["a", "b"], diagonal="keep", scaling="clip")
    assert np.allclose(M.toarray(), [[0.0, 0.4], [1.0, 0.2]])


def test_config_keys_defaults_and_the_deprecated_alias():
    cfg = load_config(None, dict(BASE))
    # drop-minmax: the variant the quality study supports (docs/quality.md, "Which kernel?").
    assert (cfg.kernel.diagonal, cfg.kernel.scaling) == ("drop", "minmax")
    cfg = load_config(None, {**BASE, "kernel.diagonal": "keep", "kernel.scaling": "clip"})
    assert (cfg.kernel.diagonal, cfg.kernel.scaling) == ("keep", "clip")
    with pytest.warns(DeprecationWarning, match="kernel.diagonal"):
        cfg = load_config(None, {**BASE, "scoring.exclude_self": True})
    assert cfg.kernel.diagonal == "drop"
    with pytest.warns(DeprecationWarning):
        assert load_config(None, {**BASE, "scoring.exclude_self": "false"}).kernel.diagonal == "keep"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ConfigError, match="contradicts kernel.diagonal"):
            load_config(None, {**BASE, "scoring.exclude_self": True, "kernel.diagonal": "keep"})
        # Consistent: both say drop.
        assert (
            load_config(None, {**BASE, "scoring.exclude_self": True, "kernel.diagonal": "drop"}).kernel.diagonal
            == "drop"
        )
    with pytest.raises(ConfigError, match="kernel.scaling"):
        load_config(None, {**BASE, "kernel.scaling": "zscore"})
    # A dumped config (run.json) validates again to the same options, so a run made with the
    # earlier default (keep) is reselected with keep, not with today's default.
    cfg = load_config(None, {**BASE, "kernel.diagonal": "keep"})
    assert load_config(None, cfg.model_dump(mode="json")).kernel.diagonal == "keep"


def test_knn_with_drop_needs_a_pair_besides_the_sample_itself():
    knn = {**BASE, "kernel.type": "knn", "kernel.k": 1, "kernel.random": 0}
    with pytest.raises(ConfigError, match="leaves K no pair"):
        load_config(None, knn)
    assert load_config(None, {**knn, "kernel.diagonal": "keep"}).kernel.k == 1
    assert load_config(None, {**knn, "kernel.random": 1}).kernel.diagonal == "drop"


def test_reselect_keeps_the_previous_runs_kernel_options():
    import pyarrow as pa

    from delift_ray.reselect import PreviousRun, version_config

    made = load_config(None, {**BASE, "kernel.diagonal": "keep", "kernel.scaling": "clip"}).model_dump(mode="json")
    prev = PreviousRun("v1", made, pa.table({"sample_id": pa.array([], pa.string())}), [], "cache")
    cfg = version_config(prev, "v2.jsonl", "out2")
    assert (cfg.kernel.diagonal, cfg.kernel.scaling, cfg.data) == ("keep", "clip", "v2.jsonl")
    # A run.json written before the kernel section existed holds scoring.exclude_self instead.
    old = {k: v for k, v in made.items() if k != "kernel"}
    old["scoring"] = {**old["scoring"], "exclude_self": False}
    with pytest.warns(DeprecationWarning):
        assert (
            version_config(PreviousRun("v0", old, prev.pool, [], "cache"), "v2.jsonl", "out2").kernel.diagonal == "keep"
        )


def test_cli_flags():
    from delift_ray.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        ["select", "--data", "d", "--model", "m", "--out", "o", "--kernel.diagonal", "drop", "--kernel.scaling", "clip"]
    )
    cfg = config_from_args(args)
    assert (cfg.kernel.diagonal, cfg.kernel.scaling) == ("drop", "clip")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["select", "--kernel.diagonal", "zero"])


def test_arms_from_a_shard_store(tmp_path):
    """evaluate's arms read the stored utilities: variants, self-utility, hardness and example utility by hand."""
    import pyarrow as pa

    from delift_ray.evaluate.arms import Variant, arm_subsets, delift_variant, parse_variants, pool_pair_scores, top_k
    from delift_ray.evaluate.inputs import Pool, RunData
    from delift_ray.storage import BASELINE, UTILITY, ShardStore

    ids = list("abcd")
    uf = _diagonal_kernel()
    store = ShardStore(str(tmp_path / "cache"), "fp0")
    h, e = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    for half in (slice(0, 8), slice(8, 16)):  # two shards
        store.write(
            UTILITY,
            f"u{half.start}",
            pa.table(
                {
                    "helped_id": [ids[i] for i in h.ravel()[half]],
                    "example_id": [ids[j] for j in e.ravel()[half]],
                    "utility": uf.ravel()[half],
                    "distance": np.zeros(8, np.float32),
                }
            ),
        )
    store.write(BASELINE, "b", pa.table({"sample_id": ids, "distance": [0.5, 0.9, 0.7, 0.9]}))
    run = RunData(
        run_dir=tmp_path,
        config={"selection": {}},
        stage="instruction",
        budget=2,
        pool=Pool(ids, ["p"] * 4, ["r"] * 4),
        selected=[0, 1],
        others={},
        doc=RunDocument(cache=str(tmp_path / "cache"), model={"fingerprint": "fp0"}),
    )
    assert delift_variant(run, Variant("keep", "minmax"), 2) == [0, 1]  # the known answer above
    assert delift_variant(run, Variant("drop", "minmax"), 1) == [2]
    arms = arm_subsets(run, 2, parse_variants("drop-clip"), ("self_utility", "hardness", "example_utility"))
    assert arms["self_utility"] == [0, 1]  # UF(i <- i) = 3.0, 2.9, 0.1, 0.1
    assert arms["hardness"] == [1, 3]  # d = 0.9, 0.9: ties to the lower index
    # Sum of UF(i <- j) - lo over i != j, lo = 0: 0, 0, 1.5, 0 (c's own 0.1 left out): c, then a by the tie rule.
    assert arms["example_utility"] == [2, 0]
    own, helps = pool_pair_scores(run)
    assert own.tolist() == pytest.approx(np.diag(uf).tolist())
    assert helps.tolist() == pytest.approx([0.0, 0.0, 1.5, 0.0])
    assert arms["delift:drop-clip"][0] == 2
    assert top_k(np.array([np.nan, 1.0, 2.0]), 2) == [2, 1]
    from delift_ray.errors import DeliftError

    with pytest.raises(DeliftError, match="unknown kernel variant"):
        parse_variants("drop-zscore")


def _sparse_run(tmp_path, pairs: dict[tuple[str, str], float], cache: str = "cache"):
    """A run over samples abcd whose cache stores only ``pairs`` ((helped, example) -> UF)."""
    import pyarrow as pa

    from delift_ray.evaluate.inputs import Pool, RunData
    from delift_ray.storage import BASELINE, UTILITY, ShardStore

    ids = list("abcd")
    store = ShardStore(str(tmp_path / "cache"), "fp0")
    store.write(
        UTILITY,
        "u",
        pa.table(
            {
                "helped_id": [h for h, _ in pairs],
                "example_id": [e for _, e in pairs],
                "utility": np.array(list(pairs.values()), np.float32),
                "distance": np.zeros(len(pairs), np.float32),
            }
        ),
    )
    store.write(BASELINE, "b", pa.table({"sample_id": ids, "distance": [0.5, 0.9, 0.7, 0.9]}))
    return RunData(
        run_dir=tmp_path,
        config={"selection": {}},
        stage="instruction",
        budget=1,
        pool=Pool(ids, ["p"] * 4, ["r"] * 4),
        selected=[1],
        others={},
        doc=RunDocument(cache=str(tmp_path / cache), model={"fingerprint": "fp0"}),
    )


def test_example_utility_is_the_drop_minmax_first_pick_on_sparse_pairs(tmp_path):
    """A knn run stores few pairs: a missing pair counts as the least useful one, as in the kernel,
    so b (three pairs of 0.3) beats c (one pair of 0.5), which the mean over stored pairs would pick."""
    from delift_ray.evaluate.arms import Variant, delift_variant, pool_pair_scores

    run = _sparse_run(
        tmp_path,
        {("a", "b"): 0.3, ("c", "b"): 0.3, ("d", "b"): 0.3, ("a", "c"): 0.5, ("b", "d"): -0.1, ("a", "a"): 9.0},
    )
    own, helps = pool_pair_scores(run)
    assert helps.tolist() == pytest.approx([0.0, 1.2, 0.6, 0.0])  # lo = -0.1; a's 9.0 is its own
    assert np.isnan(own[1:]).all() and own[0] == pytest.approx(9.0)  # only a's self pair is stored
    assert delift_variant(run, Variant("drop", "minmax"), 1) == [1]


def test_baselines_from_a_missing_cache_raise_or_are_left_out(tmp_path, caplog):
    """A run whose cache is gone: a baseline asked for by name raises; auto leaves it out, saying so,
    instead of ranking NaNs into the first k pool indices."""
    from delift_ray.errors import DeliftError
    from delift_ray.evaluate.arms import BaselineScores
    from delift_ray.evaluate.runner import extra_arms

    run = _sparse_run(tmp_path, {("a", "b"): 0.3}, cache="moved")
    with pytest.raises(DeliftError, match="0 of 4 pool samples"):
        BaselineScores(run).subset("self_utility", 1)
    with pytest.raises(DeliftError, match="is the cache named in run.json still there"):
        extra_arms(run, None, "hardness")
    with caplog.at_level("WARNING", logger="delift_ray"):
        got = extra_arms(run, None, "auto")
    assert set(got) == {"longest"}  # the one baseline that reads no shard
    assert caplog.text.count("left out") == 4  # self_utility, hardness, example_utility, ifd
    live = _sparse_run(tmp_path, {("a", "b"): 0.3, ("b", "a"): 0.1, ("a", "a"): 0.5})
    got = extra_arms(live, None, "auto")
    assert {k: v for k, v in got.items() if k != "longest"} == {
        "self_utility": [0],
        "hardness": [1],
        "example_utility": [1],
    }


def test_baselines_read_the_pool_utilities_once(tmp_path, monkeypatch):
    """self_utility and example_utility come from one pass over the pool's utility shards."""
    from delift_ray.evaluate.runner import extra_arms
    from delift_ray.storage import UTILITY, ShardStore

    reads = []
    real = ShardStore.iter_relevant
    monkeypatch.setattr(
        ShardStore, "iter_relevant", lambda self, kind, *a, **k: reads.append(kind) or real(self, kind, *a, **k)
    )
    run = _sparse_run(tmp_path, {("a", "b"): 0.3, ("b", "a"): 0.1, ("a", "a"): 0.5})
    assert set(extra_arms(run, None, "auto")) == {"self_utility", "hardness", "example_utility", "longest"}
    assert reads.count(UTILITY) == 1
