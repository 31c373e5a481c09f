"""New data versions: the content-keyed cache, its key index, the fingerprint, and reselect.

Unit tests first (pure diffs, the footer key index, the fingerprint); then what a new
version must cost and select, on a real local Ray cluster and the real vLLM CPU engine with the
tiny model: 20 -> 22 samples (+10%) scores the pairs touching the 2 new samples only and
selects what a from-scratch run selects; an unchanged version scores nothing; a version
that only removes samples scores nothing and selects anew.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from delift_ray.config import validate_config
from delift_ray.errors import DeliftError
from delift_ray.job import run
from delift_ray.lock import LOCK_NAME
from delift_ray.report.data import load
from delift_ray.reselect import continual_budget, diff_ids, reselect, selection_diff
from delift_ray.steps.plan import fingerprint
from delift_ray.storage import BASELINE, UTILITY, ShardStore, model_identity
from tests.browser import report_sections
from tests.helpers import write_rows

ENGINE = {"dtype": "float32", "max_model_len": 256, "block_size": 32, "kv_cache_space_gib": 1}


# --------------------------------------------------------------------------- pure parts


REPORT_SECTIONS = ["summary", "curve", "utilities", "map", "selected", "left-out"]


def test_diff_ids_by_hash():
    d = diff_ids(["a", "b", "c"], ["c", "d", "a", "e"])
    assert d.added == ["d", "e"] and d.removed == ["b"] and d.unchanged == ["c", "a"]
    assert d.counts() == {"added": 2, "removed": 1, "unchanged": 2}


def test_selection_diff_entered_left_kept():
    t = selection_diff(["a", "b", "c"], ["c", "x", "a"]).to_pydict()
    assert t["sample_id"] == ["c", "x", "a", "b"]
    assert t["change"] == ["kept", "entered", "kept", "left"]
    assert t["rank_before"] == [2, -1, 0, 1] and t["rank_after"] == [0, 1, 2, -1]


@pytest.mark.parametrize(
    "budget,sel,n,added,expect", [(0.3, 6, 20, 10, 3), (0.3, 6, 20, 2, 1), (5, 5, 10, 8, 4), (0.9, 9, 10, 4, 3)]
)
def test_continual_budget(budget, sel, n, added, expect):
    assert continual_budget(budget, sel, n, added) == expect


# --------------------------------------------------------------------------- key index


def pairs(h, e):
    return pa.table(
        {
            "helped_id": h,
            "example_id": e,
            "utility": np.arange(len(h), dtype=np.float32),
            "distance": np.zeros(len(h), np.float32),
        }
    )


def test_footer_index_reads_only_relevant_shards(tmp_path, monkeypatch):
    store = ShardStore(str(tmp_path), "fp")
    store.write(UTILITY, "ab", pairs(["a", "a", "b"], ["a", "b", "a"]))
    store.write(UTILITY, "cd", pairs(["c", "d"], ["d", "c"]))
    store.write(UTILITY, "ac", pairs(["a"], ["c"]))
    store.write(BASELINE, "base", pa.table({"sample_id": ["a", "b"], "distance": [0.1, 0.2]}))
    read = []
    orig = ShardStore.read_valid
    monkeypatch.setattr(
        ShardStore, "read_valid", lambda self, p, data=None: read.append(os.path.basename(p)) or orig(self, p, data)
    )
    t = store.read_relevant(UTILITY, {"a", "b"}, {"a", "b"})
    assert read == ["ab.parquet"] and t.num_rows == 3
    read.clear()
    assert store.read_relevant(UTILITY, {"a"}, {"c", "d"}).num_rows == 1 and read == ["ac.parquet"]
    assert store.read_relevant(BASELINE, {"z"}).num_rows == 0
    # A shard added later (a concurrent run) is seen at once.
    ShardStore(str(tmp_path), "fp").write(UTILITY, "ab2", pairs(["b"], ["b"]))
    assert store.read_relevant(UTILITY, {"b"}, {"b"}).num_rows == 4


def test_footer_index_and_quarantine(tmp_path):
    store = ShardStore(str(tmp_path), "fp")
    path = store.write(UTILITY, "ab", pairs(["a", "b"], ["b", "a"]))
    store.footer_ids(path)  # memoised before the damage
    t = pq.read_table(path)
    pq.write_table(t.slice(0, 1).replace_schema_metadata(t.schema.metadata), path)  # footer ids intact, rows lost
    assert store.read_relevant(UTILITY, {"a", "b"}, {"a", "b"}).num_rows == 0
    assert os.listdir(tmp_path / "quarantine") and not os.listdir(store.kind_dir(UTILITY))


def test_shard_without_footer_ids_is_read(tmp_path):
    store = ShardStore(str(tmp_path), "fp")
    path = store.write(UTILITY, "old", pairs(["a"], ["b"]))
    t = pq.read_table(path)
    meta = {k: v for k, v in t.schema.metadata.items() if not k.startswith((b"delift.helped", b"delift.examples"))}
    pq.write_table(t.replace_schema_metadata(meta), path)
    fresh = ShardStore(str(tmp_path), "fp")
    assert fresh.footer_ids(path) is None
    assert fresh.read_relevant(UTILITY, {"a"}, {"b"}).num_rows == 1


# --------------------------------------------------------------------------- fingerprint


def cfg_for(model, **extra):
    tree = {"data": "x.jsonl", "model": str(model), "out": "o", "engine": ENGINE}
    tree.update(extra)
    return validate_config(tree)


def test_fingerprint_follows_model_files_and_templates(tiny_model_dir, tmp_path):
    base = fingerprint(cfg_for(tiny_model_dir))
    assert fingerprint(cfg_for(tiny_model_dir)) == base
    other = tmp_path / "model"
    shutil.copytree(tiny_model_dir, other)
    same_files = fingerprint(cfg_for(other))
    cfg_json = json.load(open(other / "config.json"))
    cfg_json["rms_norm_eps"] = cfg_json.get("rms_norm_eps", 1e-6) * 2
    json.dump(cfg_json, open(other / "config.json", "w"))
    assert fingerprint(cfg_for(other)) not in (base, same_files)
    t = {"no_example": "Answer this.\n\nQuery: {query}\n"}
    assert fingerprint(cfg_for(tiny_model_dir, templates=t)) != base
    assert fingerprint(cfg_for(tiny_model_dir, engine={**ENGINE, "dtype": "bfloat16"})) != base
    assert fingerprint(cfg_for(tiny_model_dir, engine={**ENGINE, "max_model_len": 512})) != base


def test_fingerprint_follows_hub_id_and_revision(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--m"
    (repo / "refs").mkdir(parents=True)
    (repo / "snapshots" / "rev1").mkdir(parents=True)
    (repo / "snapshots" / "rev1" / "config.json").write_text("{}")
    uncached = fingerprint(cfg_for("org/m"))
    (repo / "refs" / "main").write_text("rev1")
    assert model_identity("org/m") == {
        "hub_id": "org/m",
        "revision": "rev1",
        "snapshot": str(repo / "snapshots" / "rev1"),
    }
    rev1 = fingerprint(cfg_for("org/m"))
    (repo / "snapshots" / "rev2").mkdir()
    (repo / "snapshots" / "rev2" / "config.json").write_text("{}")
    (repo / "refs" / "main").write_text("rev2")
    rev2 = fingerprint(cfg_for("org/m"))
    assert len({uncached, rev1, rev2, fingerprint(cfg_for("org/other"))}) == 4


def test_reselect_needs_a_finished_run(tmp_path):
    with pytest.raises(DeliftError, match="not a finished delift-ray run: run.json is missing"):
        reselect(str(tmp_path), "new.jsonl", str(tmp_path / "out"))


def test_reselect_refuses_a_locked_out_dir_before_any_work(tmp_path, lock_holder):
    """A second writer (a run, or another reselect) holds the out dir: nothing is read or written."""
    out = tmp_path / "out"
    out.mkdir()
    holder = lock_holder(out)
    # The previous run does not even exist: the lock is checked first.
    with pytest.raises(DeliftError, match=f"is in use by another run \\(pid {holder.pid} on host"):
        reselect(str(tmp_path / "no-such-run"), "new.jsonl", str(out))
    assert sorted(os.listdir(out)) == [LOCK_NAME]


def test_run_rejects_a_lock_of_another_directory(tmp_path):
    import pyarrow.fs as pafs

    from delift_ray.lock import RunLock

    (tmp_path / "a").mkdir()
    with RunLock(pafs.LocalFileSystem(), str(tmp_path / "a"), str(tmp_path / "a")) as lock:
        with pytest.raises(ValueError, match="not the held lock"):
            run({"data": "d.jsonl", "model": "m", "out": str(tmp_path / "b")}, lock=lock)


# --------------------------------------------------------------------------- real engine

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "grey", "brown"]


def make_rows(n):
    """n distinct short samples (arithmetic and colour questions)."""
    rows = []
    for k in range(n):
        if k % 2:
            rows.append({"prompt": f"What is {k} plus {k + 3}?", "response": f"{k} plus {k + 3} is {2 * k + 3}."})
        else:
            c = COLOURS[(k // 2) % len(COLOURS)]
            rows.append(
                {
                    "prompt": f"Name a thing that is {c}.",
                    "response": f"A {c} {['ball', 'car', 'hat'][k % 3]} number {k}.",
                }
            )
    return rows


@pytest.fixture(scope="module")
def v1_run(ray_cluster, tiny_model_dir, tmp_path_factory):
    """Version 1: 20 samples, budget 0.3 (6 picks); its out dir is its cache."""
    d = tmp_path_factory.mktemp("versions")
    data = {
        "v1": write_rows(d / "v1.jsonl", make_rows(20)),
        "v2": write_rows(d / "v2.jsonl", make_rows(22)),
        "same": write_rows(d / "v1-again.jsonl", make_rows(20)),
    }
    out = d / "run-v1"
    r = run(
        {
            "data": data["v1"],
            "model": str(tiny_model_dir),
            "out": str(out),
            "budget": 0.3,
            "engine": ENGINE,
            "scoring": {"block_size": 8},
        },
        progress=False,
    )
    assert r.counts["pairs_scored"] == 400
    return {"dir": str(out), "result": r, "data": data, "tmp": d}


@pytest.mark.engine
@pytest.mark.ray
def test_ten_percent_more_scores_only_new_pairs_and_matches_scratch(v1_run, tiny_model_dir):
    d = v1_run["tmp"]
    r = reselect(v1_run["dir"], v1_run["data"]["v2"], str(d / "re-v2"), progress=False)
    c = r.counts
    assert r.diff.counts() == {"added": 2, "removed": 0, "unchanged": 20}
    assert c["pairs_total"] == 22 * 22 and c["pairs_scored"] == 22 * 22 - 20 * 20 and c["pairs_reused"] == 400
    assert c["pairs_scored"] <= 0.25 * 22 * 22
    scratch = run(
        {
            "data": v1_run["data"]["v2"],
            "model": str(tiny_model_dir),
            "out": str(d / "scratch-v2"),
            "budget": 0.3,
            "engine": ENGINE,
            "scoring": {"block_size": 8},
        },
        progress=False,
    )
    assert scratch.counts["pairs_scored"] == 22 * 22  # its own cache: nothing reused
    assert r.selected_ids == scratch.selected_ids and len(r.selected_ids) == 7
    meta = json.load(open(d / "re-v2" / "run.json"))
    assert meta["config"]["data"] == v1_run["data"]["v2"] and meta["counts"]["pairs_scored"] == 84
    assert meta["reselect"]["data"] == {"added": 2, "removed": 0, "unchanged": 20}
    assert meta["config"]["cache"] == v1_run["dir"]  # chained runs keep the shared cache
    sd = json.load(open(d / "re-v2" / "selection_diff.json"))
    assert set(sd["entered"] + sd["kept"]) == set(r.selected_ids)
    assert set(sd["kept"] + sd["left"]) == set(v1_run["result"].selected_ids)
    # The report of a reselect shows what changed against the previous version.
    assert report_sections(str(d / "re-v2")) == [*REPORT_SECTIONS, "changes"]
    shown = load(str(d / "re-v2"))
    assert shown.diff["counts"] == r.changes and set(shown.diff["first"]["entered"]) == set(sd["entered"])


@pytest.mark.engine
@pytest.mark.ray
def test_unchanged_version_scores_nothing(v1_run):
    out = v1_run["tmp"] / "re-same"
    r = reselect(v1_run["dir"], v1_run["data"]["same"], str(out), progress=False)
    assert r.counts["pairs_scored"] == 0 and r.counts["baselines_scored"] == 0 and r.counts["pairs_reused"] == 400
    assert r.selected_ids == v1_run["result"].selected_ids
    assert r.changes == {"entered": 0, "left": 0, "kept": 6}


@pytest.mark.engine
@pytest.mark.ray
def test_removal_only_scores_nothing_and_selects_anew(v1_run):
    rows = make_rows(20)
    first = v1_run["result"].selected_ids[:2]
    samples = pq.read_table(os.path.join(v1_run["dir"], "samples.parquet")).to_pydict()
    row_of = dict(zip(samples["sample_id"], samples["row"]))
    drop = {row_of[s] for s in first}
    data = write_rows(v1_run["tmp"] / "v1-minus.jsonl", [r for k, r in enumerate(rows) if k not in drop])
    r = reselect(v1_run["dir"], data, str(v1_run["tmp"] / "re-minus"), progress=False)
    c = r.counts
    assert c["pairs_scored"] == 0 and c["pairs_total"] == 18 * 18 and (len(r.diff.added), len(r.diff.removed)) == (0, 2)
    assert len(r.selected_ids) == 5 and not set(first) & set(r.selected_ids)
    assert r.changes["left"] >= 2 and r.changes["entered"] + r.changes["kept"] == 5
    diff = pq.read_table(v1_run["tmp"] / "re-minus" / "selection_diff.parquet").to_pydict()
    assert {s for s, ch in zip(diff["sample_id"], diff["change"]) if ch == "left"} >= set(first)


@pytest.mark.engine
@pytest.mark.ray
@pytest.mark.parametrize("condition_on,n_cond", [("selected", 6), ("all", 20)])
def test_continual_picks_from_added_conditioned_on_previous(v1_run, condition_on, n_cond):
    rows = make_rows(20) + make_rows(26)[20:]  # 6 added samples
    data = write_rows(v1_run["tmp"] / f"v-plus6-{condition_on}.jsonl", rows)
    out = v1_run["tmp"] / f"re-cont-{condition_on}"
    r = reselect(v1_run["dir"], data, str(out), mode="continual", condition_on=condition_on, progress=False)
    c = r.counts
    # K over the 6 added, P[i][e] over added x conditioning set.
    assert c["pairs_total"] == 6 * 6 + 6 * n_cond
    assert c["pairs_scored"] + c["pairs_reused"] == c["pairs_total"]
    added = set(r.diff.added)
    prev = v1_run["result"].selected_ids
    assert r.selected_ids[:6] == prev and len(r.selected_ids) == 6 + 2  # round(0.3 * 6) = 2 picks
    assert set(r.selected_ids[6:]) <= added and r.changes == {"entered": 2, "left": 0, "kept": 6}
    cond = [json.loads(x) for x in open(out / "continual" / "condition.jsonl")]
    assert len(cond) == n_cond
    sel = pq.read_table(out / "selection.parquet").to_pydict()
    assert sel["origin"] == ["kept"] * 6 + ["picked"] * 2
    # The result chains: a later reselect diffs against this whole version.
    assert pq.read_table(out / "samples.parquet").num_rows == 26
    # Its report: the changes, and the FLCG run over the added samples has a report of its own.
    assert report_sections(str(out)) == [*REPORT_SECTIONS, "changes"]
    assert report_sections(str(out / "continual" / "run")) == REPORT_SECTIONS
    assert load(str(out)).curve.gains.size == 8  # kept picks (no gain) and the 2 new ones


@pytest.mark.engine
@pytest.mark.ray
def test_shared_cache_reuses_across_runs_and_never_reuses_stale(v1_run, tiny_model_dir):
    """A different run over a subset reuses the shared cache; a changed template reuses nothing."""
    data = write_rows(v1_run["tmp"] / "six.jsonl", make_rows(6))
    base = {
        "data": data,
        "model": str(tiny_model_dir),
        "budget": 2,
        "engine": ENGINE,
        "scoring": {"block_size": 8},
        "cache": v1_run["dir"],
    }
    r = run({**base, "out": str(v1_run["tmp"] / "six")}, progress=False)
    assert r.counts["pairs_scored"] == 0 and r.counts["pairs_reused"] == 36
    t = {"no_example": "Please answer.\n\nQuery: {query}\n"}
    r2 = run({**base, "out": str(v1_run["tmp"] / "six-t"), "templates": t}, progress=False)
    assert r2.counts["pairs_reused"] == 0 and r2.counts["pairs_scored"] == 36 and r2.counts["baselines_reused"] == 0
    fps = os.listdir(os.path.join(v1_run["dir"], UTILITY))
    assert len(fps) == 2  # two fingerprints side by side in one cache


@pytest.mark.engine
@pytest.mark.ray
def test_cli_reselect_unchanged(v1_run, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "delift_ray.cli",
        "reselect",
        "--previous",
        v1_run["dir"],
        "--data",
        v1_run["data"]["same"],
        "--out",
        str(tmp_path / "cli"),
        "--quiet",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "0 scored, 400 reused" in p.stdout and "0 entered, 0 left, 6 kept" in p.stdout
    bad = subprocess.run(
        cmd[:-3] + ["--out", str(tmp_path / "x"), "--mode", "sideways"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
