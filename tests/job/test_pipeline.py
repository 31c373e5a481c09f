"""End to end through a real local Ray cluster and a real vLLM CPU engine (tiny random Llama).

One Ray cluster serves the module; each job starts its scorer actor (one engine start,
about 20 s here). The instruction run's shards are checked against an independent
transformers teacher-forcing computation of the utility in fp32.
"""

import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from delift_ray.config import TemplateConfig
from delift_ray.job import run
from delift_ray.storage import UTILITY
from tests.helpers import assert_one_line_error, write_rows

pytestmark = [pytest.mark.engine, pytest.mark.ray]

ENGINE = {"dtype": "float32", "max_model_len": 256, "block_size": 32, "kv_cache_space_gib": 1}


POOL = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red is a primary colour."},
    {"instruction": "What is two plus three?", "input": "", "output": "Two plus three is five."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour."},
    {"instruction": "Give a synonym.", "input": "happy", "output": "Joyful."},
    {
        "instruction": "Write a haiku about rain.",
        "input": "",
        "output": "Soft rain on the roof,\nquiet drums in the dark night,\nthe garden drinks deep.",
    },
    {"instruction": "What is the capital of Italy?", "input": "", "output": "Rome is the capital of Italy."},
    {"instruction": "Sort the numbers.", "input": "3, 1, 2", "output": "1, 2, 3"},
    {
        "instruction": "Explain gravity in one sentence.",
        "input": "",
        "output": "Gravity pulls masses toward each other.",
    },
    {"instruction": "Name a mammal that swims.", "input": "", "output": "A dolphin."},
    {"instruction": "What is ten minus four?", "input": "", "output": "Ten minus four is six."},
    {"instruction": "", "input": "", "output": "an empty prompt is skipped"},
    {"instruction": "Name a primary colour.", "input": "", "output": "Red is a primary colour."},
]
TARGET = [
    {"prompt": "What is five plus one?", "response": "Five plus one is six."},
    {"prompt": "What is the capital of Spain?", "response": "Madrid is the capital of Spain."},
]
EXISTING = [
    {"prompt": "Name a colour of the sky.", "response": "Blue."},
    {"prompt": "What is one plus one?", "response": "One plus one is two."},
    {"prompt": "Translate to German.\n\nThank you", "response": "Danke."},
]


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {
        "pool": write_rows(d / "pool.jsonl", POOL),
        "target": write_rows(d / "target.jsonl", TARGET),
        "existing": write_rows(d / "existing.jsonl", EXISTING),
    }


def job(tiny_model_dir, out, data, **extra):
    cfg = {
        "data": data["pool"],
        "model": str(tiny_model_dir),
        "out": str(out),
        "budget": 3,
        "engine": ENGINE,
        "scoring": {"block_size": 4},
    }
    cfg.update(extra)
    return run(cfg, progress=False)


@pytest.fixture(scope="module")
def instruction_run(ray_cluster, tiny_model_dir, datasets_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("instruction")
    return job(tiny_model_dir, out, datasets_dir)


def reference_distance(model, tok, context: str, response: str) -> float:
    """Section 3 of the README computed directly with transformers (fp32, teacher forcing)."""
    import torch

    eos = tok.eos_token_id
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    resp = tok(response, add_special_tokens=False)["input_ids"]
    ids = ctx + [eos] + resp + [eos]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    first = len(ctx) + 1
    gold = torch.tensor(ids[first:])
    p = logp[torch.arange(first - 1, len(ids) - 1), gold].exp()
    return float(torch.sqrt(torch.mean((1 - p) ** 2)))


def test_instruction_outputs(instruction_run):
    r = instruction_run
    c = r.counts
    assert c["samples"] == 10 and c["skipped"] == {"empty_prompt": 1, "duplicate": 1}
    assert c["pairs_total"] == 100 and c["pairs_scored"] == 100 and c["pairs_reused"] == 0
    assert len(r.selected_ids) == 3 == len(set(r.selected_ids))
    sel = pq.read_table(os.path.join(r.out, "selection.parquet")).to_pydict()
    assert sel["rank"] == [0, 1, 2] and sel["sample_id"] == r.selected_ids
    assert all(g1 >= g2 for g1, g2 in zip(sel["gain"], sel["gain"][1:]))  # greedy gains never grow
    subset = [json.loads(line) for line in open(os.path.join(r.out, "subset.jsonl"))]
    samples = pq.read_table(os.path.join(r.out, "samples.parquet")).to_pydict()
    by_id = dict(zip(samples["sample_id"], samples["row"]))
    assert subset == [POOL[by_id[s]] for s in r.selected_ids]
    meta = json.load(open(os.path.join(r.out, "run.json")))
    assert meta["versions"]["vllm"] and meta["versions"]["ray"] and meta["model"]["fingerprint"]
    # On a CPU engine and a Llama, auto takes the hidden path (the next test checks its numbers).
    assert meta["counts"]["logprob_paths"] == ["hidden"]


def test_vllm_utilities_equal_transformers_teacher_forcing(instruction_run, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    t = TemplateConfig()
    samples = pq.read_table(os.path.join(instruction_run.out, "samples.parquet")).to_pandas()
    samples = samples[samples.status == "ok"].set_index("sample_id")
    shards = pq.read_table(os.path.join(instruction_run.out, UTILITY)).to_pandas()
    assert len(shards) == 100 and not shards.duplicated(["helped_id", "example_id"]).any()
    base = {
        sid: reference_distance(model, tok, t.no_example.format(query=row.prompt), row.response)
        for sid, row in samples.iterrows()
    }
    worst = 0.0
    for row in shards.itertuples():
        h, e = samples.loc[row.helped_id], samples.loc[row.example_id]
        ctx = t.with_example.format(example_prompt=e.prompt, example_response=e.response, query=h.prompt)
        uf = base[row.helped_id] - reference_distance(model, tok, ctx, h.response)
        worst = max(worst, abs(uf - row.utility))
    assert worst <= 1e-4, worst
    assert shards.utility.std() > 1e-3  # the tiny model's utilities are not all alike


def test_resume_recomputes_only_deleted_shards(instruction_run, tiny_model_dir, datasets_dir, tmp_path):
    out = tmp_path / "resume"
    shutil.copytree(instruction_run.out, out)
    shard_dir = [os.path.join(dp, f) for dp, _, fs in os.walk(out / UTILITY) for f in fs]
    assert len(shard_dir) == 9  # 10 x 10 pairs in 4 x 4 cells
    removed = sorted(shard_dir)[:2]
    removed_pairs = sum(pq.read_metadata(p).num_rows for p in removed)
    for p in removed:
        os.remove(p)
    again = job(tiny_model_dir, out, datasets_dir)
    assert again.counts["pairs_scored"] == removed_pairs
    assert again.counts["pairs_reused"] == 100 - removed_pairs
    assert again.selected_ids == instruction_run.selected_ids


def run_files(out) -> dict:
    return {n: (out / n).read_bytes() for n in ("samples.parquet", "selection.parquet", "subset.jsonl", "run.json")}


def test_refused_run_never_touches_a_finished_run(instruction_run, tiny_model_dir, datasets_dir, tmp_path):
    """Other data with an impossible budget, then other data with a possible one,
    then a checkpoint whose engine cannot start: each is refused and the finished run is
    byte for byte what it was. ``--overwrite`` replaces it, in one commit."""
    from delift_ray.errors import BudgetError, DeliftError

    out = tmp_path / "finished"
    shutil.copytree(instruction_run.out, out)
    before = run_files(out)
    other = write_rows(tmp_path / "other.jsonl", POOL[:7])
    with pytest.raises(BudgetError, match="budget 1000"):
        job(tiny_model_dir, out, {"pool": other}, budget=1000)
    assert run_files(out) == before
    with pytest.raises(DeliftError, match="holds a finished run of other data or settings"):
        job(tiny_model_dir, out, {"pool": other})
    assert run_files(out) == before
    # The same data with another kernel option: the error names it (so does a default that changed).
    with pytest.raises(
        DeliftError, match=r"\(settings that differ \(stored -> now\): kernel.diagonal: 'drop' -> 'keep'\)"
    ):
        job(tiny_model_dir, out, datasets_dir, kernel={"diagonal": "keep"})
    assert run_files(out) == before
    # An engine that cannot start (no weights) fails the run before anything is written.
    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, broken, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    fresh = tmp_path / "fresh"
    with pytest.raises(DeliftError):
        run(
            {
                "data": datasets_dir["pool"],
                "model": str(broken),
                "out": str(fresh),
                "budget": 3,
                "engine": ENGINE,
                "scoring": {"block_size": 4, "max_retries": 0},
                "ray": {"max_actor_restarts": 0},
            },
            progress=False,
        )
    assert [n for n in os.listdir(fresh) if not n.startswith("utility") and not n.startswith("baseline")] == []
    replaced = run(
        {
            "data": other,
            "model": str(tiny_model_dir),
            "out": str(out),
            "budget": 2,
            "engine": ENGINE,
            "scoring": {"block_size": 4},
        },
        progress=False,
        overwrite=True,
    )
    samples = pq.read_table(out / "samples.parquet").column("sample_id").to_pylist()
    assert set(replaced.selected_ids) <= set(samples) and len(samples) == 7
    assert json.loads((out / "run.json").read_text())["counts"]["samples"] == 7
    assert not [n for n in os.listdir(out) if n.startswith(".txn-")]


def test_task_stage(ray_cluster, tiny_model_dir, datasets_dir, tmp_path):
    r = job(tiny_model_dir, tmp_path / "task", datasets_dir, stage="task", target=datasets_dir["target"])
    # K: 10 x 10 pool pairs; Q: 2 targets helped by 10 pool examples.
    assert r.counts["pairs_total"] == 100 + 20 and r.counts["pairs_scored"] == 120
    assert len(r.selected_ids) == 3
    check_report(r)


def check_report(r):
    """The report of a finished run: every section, the picks in order, each with what it covers."""
    from delift_ray.report.data import load
    from tests.browser import report_sections

    assert report_sections(r.out) == ["summary", "curve", "utilities", "map", "selected", "left-out"]
    shown = load(r.out)
    assert [p["sample_id"] for p in shown.picks] == r.selected_ids
    assert shown.curve.budget == 3 and shown.curve.gains.size == 6  # curve_horizon 2
    assert all(p["covers"] for p in shown.picks[:1]) and shown.map.num_rows == 10


def test_continual_stage(ray_cluster, tiny_model_dir, datasets_dir, tmp_path):
    r = job(tiny_model_dir, tmp_path / "cont", datasets_dir, stage="continual", existing=datasets_dir["existing"])
    assert r.counts["pairs_total"] == 100 + 30 and len(r.selected_ids) == 3
    check_report(r)


def test_cli_select_reuses_every_shard(instruction_run, tiny_model_dir, datasets_dir):
    """The CLI on a finished run dir scores nothing and reproduces the selection."""
    cmd = [
        sys.executable,
        "-m",
        "delift_ray.cli",
        "select",
        "--data",
        datasets_dir["pool"],
        "--model",
        str(tiny_model_dir),
        "--out",
        instruction_run.out,
        "--budget",
        "3",
        "--engine.dtype",
        "float32",
        "--engine.max-model-len",
        "256",
        "--engine.block-size",
        "32",
        "--scoring.block-size",
        "4",
        "--quiet",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "0 scored, 100 reused" in p.stdout
    sel = pq.read_table(os.path.join(instruction_run.out, "selection.parquet")).column("sample_id").to_pylist()
    assert sel == instruction_run.selected_ids


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--stage", "task"], "needs a target set"),
        (["--budget", "10"], "budget 10 gives 10 samples"),
        (["--budget", "abc"], "must be a number"),
        (["--engine.max-model-lenn", "3"], "unrecognized arguments"),
        (["--model", "/nonexistent/model"], "model path does not exist"),
    ],
)
def test_cli_bad_input_is_one_line(tiny_model_dir, datasets_dir, tmp_path, extra, message):
    cmd = [
        sys.executable,
        "-m",
        "delift_ray.cli",
        "select",
        "--data",
        datasets_dir["pool"],
        "--model",
        str(tiny_model_dir),
        "--out",
        str(tmp_path / "x"),
        "--quiet",
        *extra,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert_one_line_error(p, message)
