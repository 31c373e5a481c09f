"""Bad input: every row of the bad-input table in the README (Reliability) that no other test covers.

Each case is a one-line error (exit status 2, no traceback) or a counted skip. Cases
that fail before any engine starts go through the real CLI in a subprocess; the rest
call the step that handles them. Rows covered elsewhere: tests/data/test_data.py (malformed
JSON lines, non-UTF-8 lines, wrong or missing columns, rows without valid fields,
duplicates), tests/cli/test_config.py (budget <= 0, non-numeric, unknown keys),
tests/job/test_pipeline.py::test_cli_bad_input_is_one_line (budget >= N, missing model path,
missing target), tests/cluster/test_reliability.py (NaN from the engine, a locked out dir).
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from delift_ray.config import EngineConfig, load_config
from delift_ray.errors import ConfigError, DeliftError
from tests.helpers import ROOT, assert_one_line_error, write_rows

ROWS = [{"prompt": f"Question number {k}?", "response": f"Answer number {k}."} for k in range(6)]


def select(model, data, out, *extra, timeout=240):
    cmd = [
        sys.executable,
        "-m",
        "delift_ray.cli",
        "select",
        "--data",
        str(data),
        "--model",
        str(model),
        "--out",
        str(out),
        "--budget",
        "2",
        "--engine.max-model-len",
        "256",
        "--quiet",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def pool(tmp_path):
    return write_rows(tmp_path / "pool.jsonl", ROWS)


def _bad_file(tmp_path, kind):
    if kind == "empty file":
        p = tmp_path / "empty.jsonl"
        p.write_bytes(b"")
    elif kind == "only malformed lines":
        p = tmp_path / "broken.jsonl"
        p.write_bytes(b"{not json\n\xff\xfe\n")
    elif kind == "latin-1 csv":
        p = tmp_path / "latin.csv"
        p.write_bytes("prompt,response\ncafé,olé\n".encode("latin-1"))
    return p


@pytest.mark.parametrize(
    "kind,needles",
    [
        ("empty file", ["empty.jsonl is empty: no rows"]),
        ("only malformed lines", ["no readable rows (2 read; undecodable_line=2)"]),
        ("latin-1 csv", ["not UTF-8 text (byte 0xe9", "re-encode the file as UTF-8"]),
    ],
)
def test_unreadable_pool_is_one_line(tiny_model_dir, tmp_path, kind, needles):
    p = select(tiny_model_dir, _bad_file(tmp_path, kind), tmp_path / "out")
    assert_one_line_error(p, *needles)


def test_empty_target_and_existing_sets(tiny_model_dir, pool, tmp_path):
    empty = tmp_path / "none.jsonl"
    empty.write_bytes(b"")
    p = select(tiny_model_dir, pool, tmp_path / "t", "--stage", "task", "--target", str(empty))
    assert_one_line_error(p, "none.jsonl is empty")
    only_bad = write_rows(tmp_path / "blank.jsonl", [{"prompt": "", "response": ""}])
    p = select(tiny_model_dir, pool, tmp_path / "c", "--stage", "continual", "--existing", only_bad)
    assert_one_line_error(p, "existing data", "no valid rows", "empty_prompt=1")


def test_model_without_tokenizer(tiny_model_dir, pool, tmp_path):
    bare = tmp_path / "bare-model"
    bare.mkdir()
    for f in os.listdir(tiny_model_dir):
        if f.startswith(("config", "model", "generation")):
            shutil.copy(os.path.join(tiny_model_dir, f), bare / f)
    p = select(bare, pool, tmp_path / "out")
    assert_one_line_error(p, "cannot load a tokenizer from model")


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_ray_address_that_does_not_answer_fails_fast(tiny_model_dir, pool, tmp_path, address):
    # Ray itself keeps retrying such an address for minutes; the TCP check answers at once.
    p = select(
        tiny_model_dir, pool, tmp_path / "out", "--ray.address", address, "--ray.connect-timeout-s", "3", timeout=120
    )
    assert_one_line_error(p, f"cannot reach the Ray cluster at '{address}'", "nothing answers at 127.0.0.1:1")


def test_ray_address_that_is_not_an_address(tiny_model_dir, pool, tmp_path):
    p = select(tiny_model_dir, pool, tmp_path / "out", "--ray.address", "headnode")
    assert_one_line_error(p, "is not 'auto', HOST:PORT or ray://HOST:PORT")


def test_sample_longer_than_the_context_is_a_counted_skip(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from delift_ray.steps.ingest import ingest

    rows = ROWS + [{"prompt": "Tell a long story.", "response": " ".join(["once upon a time"] * 200)}]
    cfg = load_config(
        None,
        {
            "data": write_rows(tmp_path / "p.jsonl", rows),
            "model": str(tiny_model_dir),
            "out": str(tmp_path / "o"),
            "engine.max_model_len": 256,
        },
    )
    sets, stats = ingest(cfg, AutoTokenizer.from_pretrained(tiny_model_dir))
    assert len(sets["pool"].samples) == len(ROWS)
    assert sets["pool"].samples.skipped["too_long"] == 1 and sets["pool"].rejected.rows == [len(ROWS)]
    assert stats.skipped == {"too_long": 1} and stats.samples_by_set == {"pool": len(ROWS)}
    cfg = load_config(None, {**cfg.model_dump(), "strict": True})
    with pytest.raises(DeliftError, match=f"row {len(ROWS)} does not fit max_model_len=256"):
        ingest(cfg, AutoTokenizer.from_pretrained(tiny_model_dir))


# --------------------------------------------------------------------------- path rule


@pytest.mark.parametrize(
    "out,ok",
    [
        ("runs/x", True),
        ("./runs/../runs/x", True),
        ("/tmp/anywhere/../x", True),
        ("~/runs/x", True),
        ("s3://bucket/runs/x", True),
        ("../x", False),
        ("runs/../../x", False),
        ("..", False),
        ("s3://bucket/runs/../x", False),
        ("", False),
    ],
)
def test_out_path_rule(out, ok):
    tree = {"data": "d.jsonl", "model": "m", "out": out}
    if ok:
        assert load_config(None, tree).out == out
    else:
        with pytest.raises(ConfigError, match="'out'"):
            load_config(None, tree)


def test_config_file_cannot_point_out_outside(tiny_model_dir, pool, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(f"data: {pool}\nmodel: {tiny_model_dir}\nout: ../../escaped\n")
    p = subprocess.run(
        [sys.executable, "-m", "delift_ray.cli", "select", "--config", str(job), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert_one_line_error(p, "leaves the working directory through '..'", "give an absolute path")
    assert not (tmp_path.parent.parent / "escaped").exists()


# --------------------------------------------------------------------------- security


def test_trust_remote_code_is_off_for_engine_and_tokenizer(tiny_model_dir, tmp_path):
    """A checkpoint whose tokenizer needs its own Python code: nothing of it runs by default."""
    from delift_ray.scoring.engine import engine_kwargs
    from delift_ray.steps.ingest import load_tokenizer

    assert engine_kwargs("m", EngineConfig())["trust_remote_code"] is False
    assert engine_kwargs("m", EngineConfig(trust_remote_code=True))["trust_remote_code"] is True

    model = tmp_path / "remote-code-model"
    shutil.copytree(tiny_model_dir, model)
    marker = tmp_path / "code-ran"
    (model / "tokenization_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\nclass EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    cfg_path = model / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["auto_map"] = {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}
    tok_cfg["tokenizer_class"] = "EvilTokenizer"
    cfg_path.write_text(json.dumps(tok_cfg))
    cfg = load_config(None, {"data": "d.jsonl", "model": str(model), "out": str(tmp_path / "o")})
    with pytest.raises(DeliftError, match="contains custom code") as err:
        load_tokenizer(cfg)
    assert "\n" not in str(err.value)
    assert not marker.exists(), "the checkpoint's code ran without trust_remote_code"


def test_nothing_a_run_reads_back_is_pickled_and_yaml_is_safe():
    """Shards, manifests and configs are Parquet / JSON / safe YAML: no pickle, no unsafe loader."""
    root = ROOT / "delift_ray"
    banned = re.compile(
        r"\bimport (c?pickle|dill|shelve|joblib)\b|\bpickle\.loads?\(|torch\.load\(|allow_pickle=True"
        r"|yaml\.(unsafe_)?load\(|yaml\.full_load\(|yaml\.Loader\b"
    )
    hits = [
        f"{p.relative_to(root)}:{n}"
        for p in root.rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if banned.search(line)
    ]
    assert hits == []
    assert "yaml.safe_load(" in (root / "config.py").read_text()
