"""Faults on a real local Ray cluster with the real vLLM CPU engine (tiny random Llama).

Every fault is checked against an undisturbed run of the same job: the selection must be
identical and the utility matrix complete, with every pair stored exactly once. The Ray
cluster of this module has the smallest object store Ray accepts (75 MiB), and the
driver-kill test's own embedded Ray gets the same: blocks travel as small token
payloads and come back as Parquet files, so object-store pressure never stops a run.
"""

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.fixtures import descendants, scorer_pids
from delift_ray.errors import ScoringError
from delift_ray.job import run
from delift_ray.lock import LOCK_NAME
from delift_ray.storage import BASELINE, TMP_PREFIX, UTILITY
from tests.helpers import assert_one_line_error, write_rows

pytestmark = [pytest.mark.engine, pytest.mark.ray]

MIN_OBJECT_STORE = 78643200  # ray._private.ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES
ENGINE = {"dtype": "float32", "max_model_len": 256, "block_size": 32, "kv_cache_space_gib": 1}
BLOCK = 2  # 10 x 10 pairs in 25 blocks: many shards, so a fault can land mid-run
POOL = [
    {"prompt": "Name a primary colour.", "response": "Red is a primary colour."},
    {"prompt": "What is two plus three?", "response": "Two plus three is five."},
    {"prompt": "Translate to French: Good morning", "response": "Bonjour."},
    {"prompt": "Give a synonym of happy.", "response": "Joyful."},
    {
        "prompt": "Write a haiku about rain.",
        "response": "Soft rain on the roof,\nquiet drums in the dark night,\nthe garden drinks deep.",
    },
    {"prompt": "What is the capital of Italy?", "response": "Rome is the capital of Italy."},
    {"prompt": "Sort the numbers 3, 1, 2.", "response": "1, 2, 3"},
    {"prompt": "Explain gravity in one sentence.", "response": "Gravity pulls masses toward each other."},
    {"prompt": "Name a mammal that swims.", "response": "A dolphin."},
    {"prompt": "What is ten minus four?", "response": "Ten minus four is six."},
]
N = len(POOL)


RAY_OBJECT_STORE = MIN_OBJECT_STORE  # read by the ray_cluster fixture (conftest.py)


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("data") / "pool.jsonl", POOL)


def config(model, out, data, **extra):
    cfg = {
        "data": data,
        "model": str(model),
        "out": str(out),
        "budget": 3,
        "engine": ENGINE,
        "scoring": {"block_size": BLOCK, "max_retries": 2},
    }
    for k, v in extra.items():
        if isinstance(v, dict):
            cfg.setdefault(k, {}).update(v)
        else:
            cfg[k] = v
    return cfg


@pytest.fixture(scope="module")
def reference(ray_cluster, tiny_model_dir, pool_file, tmp_path_factory):
    """The undisturbed run every fault is compared with."""
    out = tmp_path_factory.mktemp("reference")
    return run(config(tiny_model_dir, out, pool_file), progress=False)


def utility_table(out):
    files = [
        f
        for f in glob.glob(os.path.join(str(out), UTILITY, "*", "*.parquet"))
        if not os.path.basename(f).startswith(TMP_PREFIX)
    ]
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()


def assert_complete_matrix(out):
    t = utility_table(out)
    assert len(t) == N * N, len(t)
    assert not t.duplicated(["helped_id", "example_id"]).any()
    return t


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for(predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def shard_count(out, kind=UTILITY):
    return len(glob.glob(os.path.join(str(out), kind, "*", "*.parquet")))


# --------------------------------------------------------------------------- faults


def test_reference_run(reference):
    assert reference.counts["pairs_scored"] == N * N and reference.counts["actor_deaths"] == 0
    assert_complete_matrix(reference.out)
    assert not os.path.exists(os.path.join(reference.out, LOCK_NAME))  # released at the end


def test_scorer_actor_killed_mid_run(ray_cluster, tiny_model_dir, pool_file, reference, tmp_path):
    out = tmp_path / "killed-actor"
    killed = []

    def killer():
        # After the first pair shard: the engine is up and most blocks are still to come.
        if wait_for(lambda: shard_count(out) >= 1, timeout=300):
            for pid in scorer_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    r = run(config(tiny_model_dir, out, pool_file), progress=False)
    t.join()
    assert killed, "no scorer actor was found to kill"
    assert r.counts["actor_deaths"] >= 1 and r.counts["block_retries"] >= 1
    assert r.counts["pairs_missing"] == 0
    t = assert_complete_matrix(out)
    ref = utility_table(reference.out).set_index(["helped_id", "example_id"]).sort_index()
    np.testing.assert_array_equal(t.set_index(["helped_id", "example_id"]).sort_index().utility, ref.utility)
    assert r.selected_ids == reference.selected_ids


def cli_select(model, out, data, *extra):
    return [
        sys.executable,
        "-m",
        "delift_ray.cli",
        "select",
        "--data",
        data,
        "--model",
        str(model),
        "--out",
        str(out),
        "--budget",
        "3",
        "--engine.dtype",
        "float32",
        "--engine.max-model-len",
        "256",
        "--engine.block-size",
        "32",
        "--engine.kv-cache-space-gib",
        "1",
        "--scoring.block-size",
        str(BLOCK),
        "--ray.object-store-memory",
        str(MIN_OBJECT_STORE),
        "--quiet",
        *extra,
    ]


def test_driver_killed_mid_run_resumes(tiny_model_dir, pool_file, reference, tmp_path):
    """SIGKILL to `delift-ray select` (its own embedded Ray, 75 MiB object store); the same command resumes."""
    out = tmp_path / "killed-driver"
    cmd = cli_select(tiny_model_dir, out, pool_file)
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: shard_count(out) >= 3 or first.poll() is not None, timeout=400)
        assert first.poll() is None, first.communicate()[1][-2000:]
        its_ray = descendants(first.pid)  # its raylet, GCS and scorer actor
        scorers_before = scorer_pids(first.pid)
        assert scorers_before
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    done_before = sum(
        pq.read_metadata(f).num_rows
        for f in glob.glob(os.path.join(str(out), UTILITY, "*", "*.parquet"))
        if not os.path.basename(f).startswith(TMP_PREFIX)
    )
    assert os.path.exists(os.path.join(out, LOCK_NAME))  # the dead driver's lock is left behind
    # Its embedded Ray's raylet, GCS and scorer share the driver's fate: nothing keeps writing
    # into the out dir. (Ray 2.60 leaves its DashboardAgent and RuntimeEnvAgent running: ours
    # to clean up here.)
    scorers = scorers_before
    assert wait_for(lambda: not [p for p in scorers if alive(p)], timeout=60)
    for p in its_ray:
        if alive(p):
            os.kill(p, signal.SIGKILL)

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "taking over a stale lock" in second.stderr
    counts = json.load(open(out / "run.json"))["counts"]
    assert counts["pairs_total"] == N * N
    assert 0 < counts["pairs_scored"] < N * N and counts["pairs_reused"] >= done_before > 0
    assert counts["pairs_scored"] + counts["pairs_reused"] == N * N
    assert_complete_matrix(out)
    assert pq.read_table(out / "selection.parquet").column("sample_id").to_pylist() == reference.selected_ids


def test_corrupt_shards_are_quarantined_and_recomputed(
    ray_cluster, tiny_model_dir, pool_file, reference, tmp_path, caplog
):
    out = tmp_path / "corrupt"
    shutil.copytree(reference.out, out)
    shards = sorted(glob.glob(os.path.join(str(out), UTILITY, "*", "*.parquet")))
    truncated, short = shards[0], shards[1]
    damaged_pairs = pq.read_metadata(truncated).num_rows + pq.read_metadata(short).num_rows
    with open(truncated, "r+b") as f:  # a partial write
        f.truncate(os.path.getsize(truncated) // 2)
    t = pq.read_table(short)  # one row lost, the recorded row count kept
    pq.write_table(t.slice(0, t.num_rows - 1).replace_schema_metadata(t.schema.metadata), short)
    # A temp file from an interrupted write, full of values that would change the selection if read.
    bogus = pq.read_table(shards[2]).to_pandas()
    bogus["utility"] = 1e6
    leftover = os.path.join(os.path.dirname(shards[2]), f"{TMP_PREFIX}deadbeef-1234.parquet")
    pq.write_table(pa.Table.from_pandas(bogus, preserve_index=False), leftover)

    with caplog.at_level(logging.WARNING, logger="delift_ray"):
        r = run(config(tiny_model_dir, out, pool_file), progress=False)
    warnings = [m for m in caplog.messages if "quarantined" in m]
    assert any("row count" in m for m in warnings) and any("unreadable" in m for m in warnings)
    assert any("interrupted write" in m for m in warnings)
    assert len(os.listdir(out / "quarantine")) == 3 and not os.path.exists(leftover)
    assert r.counts["pairs_scored"] == damaged_pairs and r.counts["pairs_reused"] == N * N - damaged_pairs
    t = assert_complete_matrix(out)
    assert t.utility.max() < 1e3  # the leftover's values never reached the matrix
    assert r.selected_ids == reference.selected_ids


# --------------------------------------------------------------------------- a sample the engine cannot score


@pytest.fixture(scope="module")
def poisoned(tiny_model_dir, tmp_path_factory):
    """The tiny model with one token's input embedding set to NaN, and a pool where only one
    sample contains that token: the engine returns NaN log-probabilities for exactly the
    sequences holding it (a real engine failure on one input, like broken weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from delift_ray.config import TemplateConfig

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    bad_row = {"prompt": "Spell the word zephyr backwards.", "response": "ryhpez"}
    t = TemplateConfig()
    others = [r["prompt"] + "\n" + r["response"] for r in POOL] + [t.no_example, t.with_example]
    common = {i for text in others for i in tok(text, add_special_tokens=False)["input_ids"]}
    own = [
        i
        for i in tok(bad_row["prompt"] + "\n" + bad_row["response"], add_special_tokens=False)["input_ids"]
        if i not in common
    ]
    assert own, "the poison sample shares every token with the rest"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    emb = model.get_input_embeddings().weight.data
    # Untie the output layer first, or the NaN row would poison every position's softmax.
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(emb.shape[1], emb.shape[0], bias=False)
    model.lm_head.weight.data = emb.clone()
    emb[own[0]] = float("nan")
    d = tmp_path_factory.mktemp("poisoned-model")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    data = write_rows(tmp_path_factory.mktemp("poisoned-data") / "pool.jsonl", POOL + [bad_row])
    from delift_ray.data import normalise_text, sample_id

    return d, data, sample_id(normalise_text(bad_row["prompt"]), normalise_text(bad_row["response"]))


def test_failing_sample_stops_the_job_naming_it(ray_cluster, poisoned, tmp_path):
    model, data, bad_id = poisoned
    out = tmp_path / "fails"
    with pytest.raises(ScoringError) as err:
        run(config(model, out, data, scoring={"block_size": 5, "max_retries": 1}), progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"baselines of samples {bad_id})" in msg and "failed 2 times" in msg
    assert "non-finite log-probability" in msg and "--scoring.skip-failed-blocks" in msg and "re-run" in msg
    # Nothing already written is lost: the other samples' baselines were scored one by one and kept.
    kept = pq.read_table(os.path.join(out, BASELINE)).column("sample_id").to_pylist()
    assert len(kept) == N and bad_id not in kept
    assert not os.path.exists(os.path.join(out, LOCK_NAME))


def test_skip_failed_blocks_reports_missing_pairs(ray_cluster, poisoned, tmp_path):
    model, data, bad_id = poisoned
    out = tmp_path / "skips"
    b = 5
    r = run(
        config(model, out, data, scoring={"block_size": b, "max_retries": 0, "skip_failed_blocks": True}),
        progress=False,
    )
    c = r.counts
    n = N + 1
    ids = pq.read_table(os.path.join(out, "samples.parquet")).column("sample_id").to_pylist()
    col = ids.index(bad_id) // b  # the example-column block of the bad sample
    col_width = len(ids[col * b : (col + 1) * b])
    # Its own row (no baseline) and every block where it is the example (other rows) are missing.
    assert c["pairs_missing"] == n + (n - 1) * col_width, c
    assert c["pairs_scored"] == n * n - c["pairs_missing"]
    # The bad sample's own baseline, plus one pair block per row chunk that holds another sample.
    row_chunks = {i // b for i in range(n) if ids[i] != bad_id}
    assert c["failed_blocks"] == 1 + len(row_chunks), c
    t = utility_table(out)
    assert len(t) == c["pairs_scored"] and not t.duplicated(["helped_id", "example_id"]).any()
    assert bad_id not in set(t.helped_id) and bad_id not in set(t.example_id)
    assert len(r.selected_ids) == 3
    assert json.load(open(out / "run.json"))["counts"]["pairs_missing"] == c["pairs_missing"]


# --------------------------------------------------------------------------- one run per out dir


def test_second_run_on_a_locked_out_dir_refuses(tiny_model_dir, pool_file, tmp_path, lock_holder):
    out = tmp_path / "locked"
    out.mkdir()
    holder = lock_holder(out)
    p = subprocess.run(cli_select(tiny_model_dir, out, pool_file), capture_output=True, text=True, timeout=120)
    assert_one_line_error(p, f"is in use by another run (pid {holder.pid} on host")
    assert not os.path.exists(out / "samples.parquet")  # it stopped before touching anything
