"""The job's steps without an engine: ingest, plan and the dry run that stops before scoring."""

import os
import subprocess
import sys

import pytest

from delift_ray.config import validate_config
from tests.helpers import write_rows

ROWS = [{"prompt": f"Question {i}: what is {i} plus {i}?", "response": f"It is {2 * i}."} for i in range(12)]


def test_ingest_keeps_what_fits_and_sets_the_rest_aside(tiny_model_dir, tmp_path):
    from delift_ray.steps.ingest import ingest, load_tokenizer

    rows = ROWS[:5] + [{"prompt": "Tell a long story.", "response": "once upon a time " * 300}] + ROWS[5:8]
    cfg = validate_config(
        {
            "data": write_rows(tmp_path / "p.jsonl", rows),
            "model": str(tiny_model_dir),
            "out": str(tmp_path / "o"),
            "engine": {"max_model_len": 256},
        }
    )
    sets, stats = ingest(cfg, load_tokenizer(cfg))
    pool = sets["pool"]
    assert len(pool.samples) == 8 and pool.rejected.rows == [5] and len(pool.tokens) == 8
    assert stats.samples_by_set == {"pool": 8} and stats.rows_read == {"pool": 9} and stats.skipped == {"too_long": 1}
    assert "pool 8 samples of 9 rows; skipped too_long=1" == stats.summary()


def test_samples_table_lists_kept_then_rejected_rows(tiny_model_dir, tmp_path):
    from delift_ray.rundir import samples_table
    from delift_ray.steps.ingest import ingest, load_tokenizer

    rows = ROWS[:3] + [{"prompt": "Long.", "response": "word " * 400}]
    cfg = validate_config(
        {
            "data": write_rows(tmp_path / "p.jsonl", rows),
            "model": str(tiny_model_dir),
            "out": str(tmp_path / "o"),
            "engine": {"max_model_len": 128},
        }
    )
    sets, _ = ingest(cfg, load_tokenizer(cfg))
    t = samples_table(sets).to_pydict()
    assert t["status"] == ["ok"] * 3 + ["too_long"] and t["row"] == [0, 1, 2, 3]
    assert t["prompt_tokens"][3] == -1 and all(n > 0 for n in t["prompt_tokens"][:3])
    assert t["sample_id"][:3] == sets["pool"].samples.sample_ids


@pytest.mark.parametrize("kernel", ["dense"])
def test_dry_run_plans_and_writes_nothing(tiny_model_dir, tmp_path, kernel):
    data = write_rows(tmp_path / "pool.jsonl", ROWS)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "delift_ray.cli",
        "select",
        "--data",
        data,
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--budget",
        "3",
        "--scoring.block-size",
        "4",
        "--kernel.type",
        kernel,
        "--dry-run",
        "--quiet",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (
        "144 total, 144 to score, 0 reused (9 blocks)" in p.stdout
        and "nothing was scored and no run files were written" in p.stdout
    )
    # one log line per step, with its time and peak RSS
    assert "INFO delift_ray: ingest: pool 12 samples of 12 rows" in p.stderr
    assert "INFO delift_ray: plan: 144 of 144 pairs to score" in p.stderr and "peak RSS" in p.stderr
    assert not out.exists() or os.listdir(out) == []
