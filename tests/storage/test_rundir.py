"""The run directory: transactional commits, the manifest-checked reader, the reuse rule."""

import json
import os

import pyarrow as pa
import pytest

from delift_ray.errors import DeliftError
from delift_ray.rundir import (
    COMMIT_MARKER,
    RUN_JSON,
    SAMPLES,
    SELECTION,
    SUBSET,
    RunCounts,
    RunDir,
    inputs_digest,
    json_bytes,
    parquet_bytes,
    read_run,
    selection_table,
)


def run_files(tag: str, ids=("a", "b", "c"), selected=("b",)) -> dict[str, bytes]:
    samples = pa.table(
        {
            "sample_id": list(ids),
            "row": list(range(len(ids))),
            "set": ["pool"] * len(ids),
            "prompt": [f"{tag} p{i}" for i in ids],
            "response": [f"r{i}" for i in ids],
            "status": ["ok"] * len(ids),
        }
    )
    return {
        SAMPLES: parquet_bytes(samples),
        SELECTION: parquet_bytes(selection_table(list(selected), [1.0] * len(selected))),
        SUBSET: b"".join(f'{{"tag": "{tag}"}}\n'.encode() for _ in selected),
        RUN_JSON: json_bytes({"config": {"tag": tag}, "inputs_digest": tag}),
    }


def test_commit_writes_every_file_with_a_manifest_and_leaves_no_transaction(tmp_path):
    out = RunDir(str(tmp_path / "out"))
    paths = out.commit(run_files("one"))
    assert sorted(os.listdir(tmp_path / "out")) == sorted([SAMPLES, SELECTION, SUBSET, RUN_JSON])
    meta = json.loads((tmp_path / "out" / RUN_JSON).read_text())
    assert set(meta["files"]) == {SAMPLES, SELECTION, SUBSET}
    assert meta["files"][SUBSET]["bytes"] == os.path.getsize(paths[SUBSET])
    run = read_run(str(tmp_path / "out"))
    assert run.selected == ["b"] and run.config == {"tag": "one"} and run.pool.num_rows == 3


def test_reader_refuses_files_of_two_runs(tmp_path):
    """A selection from another commit next to this run.json is reported, never read as one run."""
    out = RunDir(str(tmp_path))
    out.commit(run_files("one"))
    other = run_files("two", selected=("c",))
    (tmp_path / SELECTION).write_bytes(other[SELECTION])
    with pytest.raises(DeliftError, match="selection.parquet does not belong to its run.json"):
        read_run(str(tmp_path))


def test_interrupted_commit_rolls_forward_after_its_commit_point_and_back_before_it(tmp_path):
    out = RunDir(str(tmp_path))
    out.commit(run_files("one"))
    before = {n: (tmp_path / n).read_bytes() for n in (SAMPLES, SELECTION, SUBSET, RUN_JSON)}
    # A writer killed before its commit point: its staged files are dropped, the old run stays.
    txn = tmp_path / ".txn-dead"
    txn.mkdir()
    for name, data in run_files("two").items():
        (txn / name).write_bytes(data)
    out.recover()
    assert not txn.exists() and {n: (tmp_path / n).read_bytes() for n in before} == before
    # A writer killed after its commit point, having moved one file: the rest follows.
    files = run_files("three", selected=("a", "c"))
    meta = json.loads(files[RUN_JSON])
    from delift_ray.rundir import digest

    meta["files"] = {n: {"bytes": len(d), "blake2b": digest(d)} for n, d in files.items() if n != RUN_JSON}
    files[RUN_JSON] = json_bytes(meta)
    txn.mkdir()
    for name, data in files.items():
        (txn / name).write_bytes(data)
    (txn / COMMIT_MARKER).write_text(json.dumps({"order": [SAMPLES, SELECTION, SUBSET, RUN_JSON]}))
    os.replace(txn / SAMPLES, tmp_path / SAMPLES)
    with pytest.raises(DeliftError, match="does not belong"):
        read_run(str(tmp_path))  # a mix is visible as such, not as a run
    out.recover()
    assert not txn.exists()
    assert read_run(str(tmp_path)).selected == ["a", "c"]


def test_check_reusable_refuses_other_inputs_unless_overwrite(tmp_path):
    out = RunDir(str(tmp_path))
    out.check_reusable("x", overwrite=False)  # empty dir: nothing to protect
    out.commit(run_files("one"))
    out.check_reusable("one", overwrite=False)  # same inputs: resume
    with pytest.raises(DeliftError, match="holds a finished run of other data or settings.*--overwrite"):
        out.check_reusable("two", overwrite=False)
    out.check_reusable("two", overwrite=True)
    # With the new config the error names what differs (operational keys such as out never count).
    with pytest.raises(DeliftError, match=r"tag: 'one' -> 'two'\)"):
        out.check_reusable("two", overwrite=False, config={"tag": "two", "out": "elsewhere"})
    with pytest.raises(DeliftError, match="other data or scoring model"):
        out.check_reusable("two", overwrite=False, config={"tag": "one"})


def test_settings_changed_names_nested_keys():
    from delift_ray.rundir import settings_changed

    old = {"out": "a", "kernel": {"diagonal": "keep", "k": 32}, "ray": {"address": "x"}}
    new = {"out": "b", "kernel": {"diagonal": "drop", "k": 32}, "ray": {"address": "y"}}
    assert settings_changed(old, new) == ["kernel.diagonal: 'keep' -> 'drop'"]
    # A setting newer than the stored run is named even when its value is None; a section the
    # stored run.json holds as null is compared, not a crash.
    assert settings_changed({"kernel": {"k": 1}}, {"kernel": {"k": 1, "seed": None}}) == [
        "kernel.seed: <absent> -> None"
    ]
    assert settings_changed({"engine": None}, {"engine": {"dtype": "x"}}) == [
        "engine: None -> <absent>",
        "engine.dtype: <absent> -> 'x'",
    ]


def test_inputs_digest_ignores_operational_settings_only():
    cfg = {
        "data": "d",
        "out": "a",
        "budget": 3,
        "ray": {"num_scorers": 1},
        "engine": {"dtype": "float32", "max_num_seqs": 8},
    }
    base = inputs_digest(cfg, "fp", {"pool": ["a", "b"]})
    assert (
        inputs_digest(
            {**cfg, "out": "b", "ray": {"num_scorers": 4}, "engine": {"dtype": "float32", "max_num_seqs": 64}},
            "fp",
            {"pool": ["a", "b"]},
        )
        == base
    )
    assert inputs_digest({**cfg, "budget": 4}, "fp", {"pool": ["a", "b"]}) != base
    assert inputs_digest(cfg, "fp2", {"pool": ["a", "b"]}) != base
    assert inputs_digest(cfg, "fp", {"pool": ["b", "a"]}) != base
    assert inputs_digest(cfg, "fp", {"pool": ["a"], "target": ["b"]}) != inputs_digest(cfg, "fp", {"pool": ["a", "b"]})


def test_run_counts_read_like_run_json():
    c = RunCounts(samples=3, pairs_scored=9)
    assert c["pairs_scored"] == 9 and c.get("embedded") is None and "embedded" not in c.as_dict()
    with pytest.raises(KeyError):
        c["nope"]


def test_out_dir_inside_a_data_folder_is_refused_before_anything_is_written(tmp_path):
    from delift_ray.job import run

    data = tmp_path / "data"
    data.mkdir()
    (data / "part-0.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    with pytest.raises(DeliftError, match="lies inside the pool data folder"):
        run({"data": str(data), "model": str(tmp_path / "model"), "out": str(data / "runs" / "x")}, progress=False)
    assert sorted(os.listdir(data)) == ["part-0.jsonl"]


def test_step_log_times_each_step_and_keeps_its_stats():
    from dataclasses import dataclass

    from delift_ray.steps.base import StepLog, StepStats

    @dataclass
    class Counted(StepStats):
        n: int = 0

    steps = StepLog()
    assert steps.run("one", lambda x: (x * 2, Counted(x)), 4) == 8
    assert steps.run("two", lambda: Counted(1)).n == 1
    with pytest.raises(TypeError, match="returned no StepStats"):
        steps.run("bad", lambda: 3)
    rows = steps.as_list()
    assert [r["name"] for r in rows] == ["one", "two"] and rows[0]["n"] == 4
    assert all(r["seconds"] >= 0 and r["peak_rss_gib"] > 0 for r in rows)


def test_run_json_of_format_1_is_migrated_and_a_newer_format_refused(tmp_path):
    from delift_ray.rundir import RUN_FORMAT, parse_run_document

    # Format 1: no format key; a reselect's continual commit recorded config.cache or nothing.
    old = {"config": {"cache": "/shared/cache"}, "counts": {"selected": 2}, "selection": {"stage": "task", "budget": 2}}
    doc = parse_run_document(json_bytes(old), "s3://b/run")
    assert (doc.format, doc.cache, doc.selection.stage, doc.counts["selected"]) == (
        RUN_FORMAT,
        "/shared/cache",
        "task",
        2,
    )
    doc = parse_run_document(json_bytes({"config": {}, "cache": None}), "s3://b/run")
    assert doc.cache == "s3://b/run"  # a run without a shared cache keeps its shards in its own dir
    doc = parse_run_document(json_bytes({"cache": "/c", "model": {"fingerprint": "fp"}, "future_key": 1}), "r")
    assert (doc.cache, doc.fingerprint, doc.model_extra) == ("/c", "fp", {"future_key": 1})
    assert json.loads(doc.to_bytes())["future_key"] == 1  # kept through a rewrite
    for raw, message in [
        (json_bytes({"format": RUN_FORMAT + 1}), f"has format {RUN_FORMAT + 1}; this delift-ray reads formats 1 to"),
        (b"[1, 2]", "is not a JSON object"),
        (b"{not json", "is not JSON"),
        (json_bytes({"selection": {"stage": "task"}}), "selection.budget: Field required"),
        (json_bytes({"files": {"x": {"bytes": "many"}}}), "files.x.bytes"),
    ]:
        with pytest.raises(DeliftError, match=message) as exc:
            parse_run_document(raw, "/r")
        assert "\n" not in str(exc.value)


def test_a_commit_records_the_current_format_and_the_reader_refuses_a_newer_one(tmp_path):
    from delift_ray.rundir import RUN_FORMAT, read_run_document

    RunDir(str(tmp_path)).commit(run_files("one"))
    doc = read_run(str(tmp_path)).doc
    assert doc.format == RUN_FORMAT and read_run_document(str(tmp_path)) == doc
    assert doc.cache == str(tmp_path)  # format 1 input: the run's own dir
    raw = json.loads((tmp_path / RUN_JSON).read_text())
    (tmp_path / RUN_JSON).write_text(json.dumps({**raw, "format": RUN_FORMAT + 1}))
    with pytest.raises(DeliftError, match="a newer delift-ray wrote it"):
        read_run(str(tmp_path))
    with pytest.raises(DeliftError, match="is missing"):
        read_run_document(str(tmp_path / "nothing"))


def test_run_json_is_read_only_through_rundir():
    """No module parses run.json by hand: each goes through rundir's RunDocument."""
    from tests.helpers import ROOT as root

    offenders, paths = [], [*root.glob("delift_ray/**/*.py"), *root.glob("benchmarks/*.py"), *root.glob("docs/*.py")]
    assert root / "delift_ray" / "job.py" in paths and root / "docs" / "generate.py" in paths  # the scan reaches them
    for path in paths:
        if path.name == "rundir.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "json.loads" in line and ("run.json" in line or "RUN_JSON" in line):
                offenders.append(f"{path.relative_to(root)}:{n}")
    assert offenders == []


def test_a_run_json_this_version_cannot_read_is_not_resumed_over(tmp_path):
    """A newer format (or one that fails the model) is refused unless --overwrite; a file that
    is not JSON at all resumes as before (nothing to compare against)."""
    import numpy as np

    from delift_ray.rundir import RUN_FORMAT, RunDocument

    out = RunDir(str(tmp_path))
    out.commit(run_files("one"))
    raw = json.loads((tmp_path / RUN_JSON).read_text())
    (tmp_path / RUN_JSON).write_text(json.dumps({**raw, "format": RUN_FORMAT + 1}))
    with pytest.raises(DeliftError, match="cannot resume .*pass --overwrite") as exc:
        out.check_reusable("one", overwrite=False)
    assert "\n" not in str(exc.value)
    out.check_reusable("one", overwrite=True)
    (tmp_path / RUN_JSON).write_text("{cut sh")
    out.check_reusable("other", overwrite=False)
    # A numpy scalar among the stats is written as its number.
    doc = json.loads(RunDocument(counts={"n": np.int64(3), "share": np.float32(0.5)}).to_bytes())
    assert doc["counts"] == {"n": 3, "share": 0.5}


def test_a_commit_marker_cut_short_drops_that_commit(tmp_path):
    out = RunDir(str(tmp_path))
    out.commit(run_files("one"))
    before = (tmp_path / SELECTION).read_bytes()
    txn = tmp_path / ".txn-cut"
    txn.mkdir()
    (txn / SELECTION).write_bytes(b"half")
    (txn / COMMIT_MARKER).write_text('{"order": [')  # an object store's writer killed mid-marker
    out.recover()
    assert not txn.exists() and (tmp_path / SELECTION).read_bytes() == before
