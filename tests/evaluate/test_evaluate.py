"""Tests of delift_ray.evaluate: metrics, kernel, prompt formats, and the whole
``evaluate`` plumbing on a tiny random model (1 epoch, tiny lengths, 2 seeds)."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from delift_ray.config import DEFAULT_WITH_EXAMPLE_TEMPLATE
from delift_ray.errors import DeliftError
from delift_ray.evaluate.formatting import PromptEncoder, icl_context, no_example_context
from delift_ray.evaluate.metrics import lcs_length, paired_bootstrap, rouge_l, rouge_l_f1
from delift_ray.evaluate.similarity import cosine_kernel, top_k_similar
from tests.helpers import write_rows

# --------------------------------------------------------------------------- ROUGE-L


def test_lcs_length():
    assert lcs_length([], list("abc")) == 0
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4
    assert lcs_length(list("abc"), list("abc")) == 3


def test_rouge_l_known_values():
    assert rouge_l_f1("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # LCS "police the gunman" = 3 of 4 tokens each side.
    assert rouge_l_f1("police kill the gunman", "police killed the gunman") == pytest.approx(0.75)
    # LCS "the gunman" = 2 of 4.
    assert rouge_l_f1("the gunman kill police", "police killed the gunman") == pytest.approx(0.5)
    # Prediction misses one reference word: P = 1, R = 5/6, F1 = 10/11.
    r = rouge_l("the cat on the mat", "the cat sat on the mat")
    assert r["precision"] == 1.0 and r["recall"] == pytest.approx(5 / 6)
    assert r["f1"] == pytest.approx(10 / 11)
    # Lowercased, punctuation ignored.
    assert rouge_l_f1("The CAT, sat!", "the cat sat") == 1.0
    assert rouge_l_f1("dog", "the cat") == 0.0
    assert rouge_l_f1("", "the cat") == 0.0
    assert rouge_l_f1("", "") == 1.0


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_identical_inputs_are_within_noise():
    a = np.random.default_rng(1).normal(size=50)
    res = paired_bootstrap(a, a.copy(), resamples=500, seed=0)
    assert res.diff == 0.0 and res.low == 0.0 and res.high == 0.0
    assert res.within_noise


def test_bootstrap_obvious_difference_is_significant():
    rng = np.random.default_rng(2)
    b = rng.normal(size=40)
    a = b + 1.0 + rng.normal(scale=0.1, size=40)
    res = paired_bootstrap(a, b, resamples=1000, seed=0)
    assert not res.within_noise
    assert 0.9 < res.low < res.diff < res.high < 1.1
    # Reversed order: same interval mirrored.
    rev = paired_bootstrap(b, a, resamples=1000, seed=0)
    assert rev.high < 0 and rev.diff == pytest.approx(-res.diff)


def test_bootstrap_noise_only_and_determinism():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=30), rng.normal(size=30)
    r1 = paired_bootstrap(a, b, resamples=300, seed=7)
    r2 = paired_bootstrap(a, b, resamples=300, seed=7)
    assert (r1.low, r1.high) == (r2.low, r2.high)
    assert r1.within_noise
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


# --------------------------------------------------------------------------- kernel


def test_mismatched_responses_are_a_fixed_derangement():
    from delift_ray.evaluate.metrics import mismatched_responses

    ids = [f"id{k}" for k in range(7)]
    responses = [f"answer {k}" for k in range(7)]
    wrong = mismatched_responses(ids, responses)
    assert sorted(wrong) == sorted(responses)  # every response used once
    assert all(w != r for w, r in zip(wrong, responses))  # none after its own prompt
    assert mismatched_responses(ids[::-1], responses[::-1]) == wrong[::-1]  # by id, not by input order
    with pytest.raises(ValueError, match="at least two"):
        mismatched_responses(ids[:1], responses[:1])


def test_vs_random_on_the_margin_counts_higher_as_better():
    from delift_ray.evaluate.report import vs_random

    rng = np.random.default_rng(0)
    rand = [{"nll": rng.normal(2.0, 0.01, 40), "margin": rng.normal(0.5, 0.01, 40)} for _ in range(8)]
    arm = [{"nll": rng.normal(2.0, 0.01, 40), "margin": rng.normal(0.8, 0.01, 40)} for _ in range(2)]
    (c,) = vs_random({"random": rand, "delift": arm}, resamples=200, seed=0, metric="margin")
    assert c["delta"] == pytest.approx(0.3, abs=0.02) and c["verdict"] == "better than random"
    worse = [{"margin": rng.normal(0.2, 0.01, 40)} for _ in range(2)]
    (w,) = vs_random({"random": rand, "delift": worse}, resamples=200, seed=0, metric="margin")
    assert w["delta"] < 0 and w["verdict"] != "better than random"


def test_cosine_kernel_range():
    x = np.random.default_rng(0).normal(size=(30, 8))
    x = np.vstack([x, -x[:1], np.zeros((1, 8)) + np.eye(8)[0]])
    K = cosine_kernel(x)
    assert K.shape == (32, 32)
    assert K.min() >= 0.0 and K.max() <= 1.0
    assert np.allclose(np.diag(K), 1.0, atol=1e-6)
    assert K[0, 30] == pytest.approx(0.0, abs=1e-6)  # opposite vectors
    e = np.eye(4)
    assert cosine_kernel(e)[0, 1] == pytest.approx(0.5)  # orthogonal
    assert np.allclose(K, K.T)


def test_top_k_similar_order():
    keys = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
    q = np.array([[1.0, 0.1]])
    assert top_k_similar(q, keys, 3).tolist() == [[0, 2, 1]]
    assert top_k_similar(q, keys, 10).shape == (1, 4)


# --------------------------------------------------------------------------- prompt formats


def test_icl_context_with_one_example_is_the_template():
    one = icl_context([("P1", "R1")], "Q")
    assert one == DEFAULT_WITH_EXAMPLE_TEMPLATE.format(example_prompt="P1", example_response="R1", query="Q")
    five = icl_context([(f"P{i}", f"R{i}") for i in range(5)], "Q")
    assert five.count("Example:\n") == 5 and five.endswith("Query:\nQ\n")
    assert no_example_context("Q").endswith("Query: Q\n")


def test_icl_format_follows_a_custom_template():
    from delift_ray.evaluate.formatting import IclFormat

    tpl = "Solve it.\n[EX] {example_prompt} => {example_response}\n--\nQ: {query}\nA:"
    fmt = IclFormat(tpl)
    assert fmt([("p1", "r1")], "q") == tpl.format(example_prompt="p1", example_response="r1", query="q")
    two = fmt([("p1", "r1"), ("p2", "r2")], "q")
    # No "Example:"/"Query" markers: the block starts at {example_prompt}, the separator is the default.
    assert two == "Solve it.\n[EX] p1 => r1\n\n\np2 => r2\n--\nQ: q\nA:"


def test_evaluation_uses_the_runs_templates(tmp_path):
    from types import SimpleNamespace

    from delift_ray.evaluate.runner import run_templates

    custom = {
        "no_example": "Q: {query}\nA:",
        "with_example": "E: {example_prompt} / {example_response}\nQ: {query}\nA:",
    }
    run = SimpleNamespace(config={"templates": custom}, run_dir=tmp_path)
    assert run_templates(run).no_example == custom["no_example"]
    run.config = {}
    assert run_templates(run).no_example.endswith("Query: {query}\n")  # the default
    run.config = {"templates": {"no_example": "no placeholder"}}
    with pytest.raises(DeliftError, match="invalid templates"):
        run_templates(run)


@pytest.fixture(scope="session")
def tiny_model(request, tmp_path_factory):
    """The shared tiny random Llama (tests/conftest.py) or, without it, a local one."""
    try:
        return request.getfixturevalue("tiny_model_dir")
    except pytest.FixtureLookupError:
        from benchmarks.fixtures import build_tiny_model

        return build_tiny_model(tmp_path_factory.mktemp("tiny-eval-model"))


def test_prompt_encoder_truncation(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    enc = PromptEncoder(tok, max_length=40, example_tokens=12)
    long_q = "explain why the sky is blue " * 20
    long_r = "sunlight is scattered by the air " * 20
    ctx, resp = enc.pair(long_q, long_r, add_eos=True)
    assert len(ctx) + len(resp) <= 40
    assert len(resp) >= 20 and resp[-1] == tok.eos_token_id
    ctx, resp = enc.pair("hi", "hello there", add_eos=False)
    assert tok.decode(resp) == "hello there" and tok.eos_token_id not in resp
    assert tok.decode(ctx) == no_example_context("hi")
    icl, _ = enc.pair("hi", "hello", examples=[(long_q, long_r)] * 5)
    assert tok.decode(icl).count("Example:") == 5
    gen = enc.generation_context(long_q, max_new_tokens=8)
    assert len(gen) <= 32
    custom = PromptEncoder(tok, max_length=40, example_tokens=12, no_example="Q: {query}\nA:")
    ctx, _ = custom.pair("hi", "hello there")
    assert tok.decode(ctx) == "Q: hi\nA:"


# --------------------------------------------------------------------------- end to end


def _write_run(run_dir, pairs, model, selected):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from delift_ray.data import sample_id

    run_dir.mkdir(parents=True)
    ids = [sample_id(p, r) for p, r in pairs]
    n = len(pairs)
    # One row skipped at ingest: it must not count as pool.
    pq.write_table(
        pa.table(
            {
                "sample_id": ids + ["ffffffffffffffff"],
                "row": np.arange(n + 1, dtype=np.int64),
                "set": ["pool"] * (n + 1),
                "prompt": [p for p, _ in pairs] + ["too long"],
                "response": [r for _, r in pairs] + ["x"],
                "prompt_tokens": [8] * n + [-1],
                "response_tokens": [8] * n + [-1],
                "status": ["ok"] * n + ["too_long"],
            }
        ),
        run_dir / "samples.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "sample_id": [ids[i] for i in selected],
                "rank": np.arange(len(selected), dtype=np.int64),
                "gain": np.linspace(1.0, 0.1, len(selected)),
            }
        ),
        run_dir / "selection.parquet",
    )
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "config": {
                    "data": "pool.jsonl",
                    "model": str(model),
                    "stage": "instruction",
                    "budget": len(selected),
                    "seed": 0,
                },
                "counts": {"samples": n, "selected": len(selected)},
                "selection": {"stage": "instruction", "budget": len(selected)},
            }
        )
    )
    write_rows(run_dir / "subset.jsonl", [{"prompt": pairs[i][0], "response": pairs[i][1]} for i in selected])


TOPICS = [
    "tea",
    "coffee",
    "the sea",
    "Paris",
    "python lists",
    "sleep",
    "exercise",
    "the sky",
    "a poem",
    "French grammar",
]


def _pairs(n, offset=0):
    return [
        (
            f"Tell me about {TOPICS[(i + offset) % len(TOPICS)]}, item {i + offset}.",
            f"Here is a short answer about {TOPICS[(i + offset) % len(TOPICS)]} number {i + offset}.",
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("eval-run")
    pool = _pairs(20)
    _write_run(root / "run", pool, tiny_model, selected=[3, 11, 7, 0, 15, 19])
    held = _pairs(5, offset=100)
    # Alpaca columns; the last row duplicates a pool sample and must be dropped.
    rows = [{"instruction": p, "input": "", "output": r} for p, r in held] + [
        {"instruction": pool[2][0], "input": "", "output": pool[2][1]}
    ]
    write_rows(root / "heldout.jsonl", rows)
    return root


def _cli_args(argv):
    from delift_ray.evaluate.cli import add_evaluate_parser

    parser = argparse.ArgumentParser(prog="delift-ray")
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate_parser(sub)
    return parser.parse_args(["evaluate", *argv])


def test_cli_parser_defaults():
    args = _cli_args(["--run", "r", "--eval-data", "h.jsonl"])
    assert args.seeds == 3 and args.max_new_tokens == 64 and not args.full_finetune
    assert args.func.__name__ == "run_evaluate_command"
    args = _cli_args(
        [
            "--run",
            "r",
            "--eval-data",
            "h",
            "--seeds",
            "2",
            "--lr",
            "1e-3",
            "--full-finetune",
            "--max-eval",
            "4",
            "--embedding-model",
            "/x",
            "--epochs",
            "1",
            "--max-length",
            "64",
        ]
    )
    assert (args.seeds, args.lr, args.full_finetune, args.max_eval, args.epochs, args.max_length) == (
        2,
        1e-3,
        True,
        4,
        1,
        64,
    )
    with pytest.raises(SystemExit):
        _cli_args(["--run", "r", "--eval-data", "h", "--seeds", "0"])


def test_evaluate_end_to_end(fake_run, capsys):
    from delift_ray.evaluate.cli import run_evaluate_command

    run_dir = fake_run / "run"
    args = _cli_args(
        [
            "--run",
            str(run_dir),
            "--eval-data",
            str(fake_run / "heldout.jsonl"),
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--max-length",
            "48",
            "--max-new-tokens",
            "6",
            "--icl-example-tokens",
            "16",
            "--bootstrap-resamples",
            "200",
            "--no-progress",
        ]
    )
    assert run_evaluate_command(args) == 0
    assert "DELIFT" in capsys.readouterr().out
    out = run_dir / "eval"
    for name in ("report.json", "report.md", "report.png", "generations.jsonl"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_eval"] == 5 and rep["eval_dropped_pool_overlap"] == 1
    assert rep["n_pool"] == 20 and rep["budget"] == 6
    rows = {r["selection"]: r for r in rep["rows"]}
    assert list(rows) == ["initial", "delift", "delift_se", "random", "full"]
    assert rows["random"]["n_seeds"] == 2 and len(rows["random"]["per_seed"]) == 2
    assert rows["full"]["n_train"] == 20 and rows["delift"]["n_train"] == 6 == rows["delift_se"]["n_train"]
    for name, r in rows.items():
        metrics = (
            ("nll", "margin", "rouge_l")
            if name == "initial"
            else ("nll", "margin", "rouge_l", "icl_nll", "icl_margin", "icl_rouge_l")
        )
        for m in metrics:
            assert r["mean"][m] is not None and math.isfinite(r["mean"][m]), (name, m)
        if name == "initial":
            assert r["mean"]["icl_nll"] is None
        else:
            assert r["train"] and all(math.isfinite(t["last_loss"]) for t in r["train"])
    assert all(math.isfinite(v) for v in rows["random"]["std"].values() if v is not None)
    comps = {(b["a"], b["b"], b["metric"]) for b in rep["bootstrap"]}
    for m in ("nll", "margin", "rouge_l", "icl_nll", "icl_margin", "icl_rouge_l"):
        assert ("delift", "random", m) in comps and ("delift", "full", m) in comps
    for b in rep["bootstrap"]:
        assert b["low"] <= b["diff"] <= b["high"]
        assert b["within_noise"] == (b["low"] <= 0 <= b["high"])
    md = (out / "report.md").read_text()
    assert "5 samples" in md and "random (2 seeds)" in md and "±" in md
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    # initial + (delift, delift_se, 2 random, full) x (fine-tuned, icl), 5 samples each.
    assert len(gens) == 5 * (1 + 5 * 2)


def test_user_errors(fake_run, tmp_path):
    from delift_ray.evaluate import evaluate_run

    run_dir = fake_run / "run"
    with pytest.raises(DeliftError, match="run directory not found"):
        evaluate_run(tmp_path / "nope", fake_run / "heldout.jsonl")
    with pytest.raises(DeliftError, match="not found"):
        evaluate_run(run_dir, tmp_path / "missing.jsonl")
    only_pool = tmp_path / "only_pool.jsonl"
    p, r = _pairs(1)[0]
    write_rows(only_pool, [{"prompt": p, "response": r}])
    with pytest.raises(DeliftError, match="no held-out sample"):
        evaluate_run(run_dir, only_pool)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DeliftError):
        evaluate_run(run_dir, empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{}")
    with pytest.raises(DeliftError, match="selection.parquet is missing|samples.parquet is missing"):
        evaluate_run(broken, fake_run / "heldout.jsonl")
