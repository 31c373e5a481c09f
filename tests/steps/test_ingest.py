"""job.ingest and job.samples_table, vectorised: the same sets and table as the per-row loops."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from delift_ray.config import load_config
from delift_ray.data import DatasetRows, load_samples
from delift_ray.prompts import fits, template_head_length
from tests.helpers import write_rows


def reference_samples_table(sets) -> pa.Table:
    """samples.parquet built row by row, as the per-row loop it replaced did."""
    cols = {
        k: []
        for k in (
            "sample_id",
            "row",
            "set",
            "prompt",
            "response",
            "prompt_tokens",
            "response_tokens",
            "copies",
            "status",
        )
    }
    for name, s in sets.items():
        smp, tok, bad = s.samples, s.tokens, s.rejected
        for k in range(len(smp)):
            for key, val in (
                ("sample_id", smp.sample_ids[k]),
                ("row", smp.rows[k]),
                ("set", name),
                ("prompt", smp.prompts[k]),
                ("response", smp.responses[k]),
                ("prompt_tokens", len(tok.no_example[k])),
                ("response_tokens", len(tok.response[k])),
                ("copies", smp.copies[k]),
                ("status", "ok"),
            ):
                cols[key].append(val)
        for k in range(len(bad)):
            for key, val in (
                ("sample_id", bad.sample_ids[k]),
                ("row", bad.rows[k]),
                ("set", name),
                ("prompt", bad.prompts[k]),
                ("response", bad.responses[k]),
                ("prompt_tokens", -1),
                ("response_tokens", -1),
                ("copies", 1),
                ("status", "too_long"),
            ):
                cols[key].append(val)
    return pa.table(cols)


def test_ingest_keeps_what_fits_and_the_table_matches_the_row_loop(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from delift_ray.prompts import tokenize_set
    from delift_ray.rundir import samples_table
    from delift_ray.steps.ingest import ingest

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    rows = [
        {
            "prompt": " ".join(rng.choice(words, rng.integers(1, 60))),
            "response": " ".join(rng.choice(words, rng.integers(1, 60))),
        }
        for _ in range(40)
    ]
    rows += [rows[3], rows[5]]  # duplicates: copies > 1
    target = [{"prompt": f"target {i}", "response": " ".join(rng.choice(words, rng.integers(1, 90)))} for i in range(9)]
    cfg = load_config(
        None,
        {
            "data": write_rows(tmp_path / "p.jsonl", rows),
            "target": write_rows(tmp_path / "t.jsonl", target),
            "stage": "task",
            "model": str(tiny_model_dir),
            "out": str(tmp_path / "o"),
            "engine.max_model_len": 160,
        },
    )
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    sets, _ = ingest(cfg, tok)
    min_head = template_head_length(tok, cfg.templates)
    for name, src in (("pool", cfg.data), ("target", cfg.target)):
        s = load_samples(src, name)
        t = tokenize_set(tok, s.prompts, s.responses, cfg.templates)
        keep = [k for k in range(len(s)) if fits(t, k, cfg.engine.max_model_len - 1, min_head)]
        dropped = [k for k in range(len(s)) if k not in keep]
        got = sets[name]
        assert 0 < len(dropped) < len(s)  # the test covers both branches
        assert got.samples.sample_ids == [s.sample_ids[k] for k in keep]
        assert got.samples.copies == [s.copies[k] for k in keep]
        assert list(got.tokens.head) == [t.head[k] for k in keep]
        assert got.rejected.rows == [s.rows[k] for k in dropped]
        assert got.samples.skipped["too_long"] == len(dropped)
    assert samples_table(sets).equals(reference_samples_table(sets))


def test_dataset_rows_equal_row_by_row_iteration(tmp_path):
    import datasets

    rows = [
        {
            "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
            "extra": None if i % 3 else i,
            "text": f"t{i}",
        }
        for i in range(11)
    ]
    ds = datasets.load_dataset("json", data_files=write_rows(tmp_path / "c.jsonl", rows), split="train")
    assert len(DatasetRows(ds, batch=4)) == 11
    assert list(DatasetRows(ds, batch=4)) == list(iter(ds))
