"""Any checkpoint a user brings: dtype, tokenizer family and architecture, as a tested matrix.

* dtype: ``engine.dtype: auto`` resolution (:func:`delift_ray.scoring.engine.resolve_dtype`).
* tokenizer families: the scorer's spliced tokenisation equals whole-string tokenisation for
  byte-level BPE with a GPT-2 and with a Qwen2 pre-tokenizer, and for a SentencePiece
  tokenizer with a prefix space (Llama-2 / Mistral style), all trained here.
* the matrix: the real job on the real CPU engine, one run per tiny checkpoint (each run
  covers several axes), on one Ray cluster, compared with transformers teacher forcing:

  | checkpoint | arch    | head   | tokenizer        | engine.dtype | path   |
  |------------|---------|--------|------------------|--------------|--------|
  | float32    | Llama   | tied   | byte BPE (GPT-2) | auto         | hidden |
  | float16    | Qwen2   | untied | byte BPE (Qwen2) | auto         | hidden |
  | bfloat16   | Llama   | untied | SentencePiece    | auto         | hidden |
  | float32    | Gemma2  | tied   | SentencePiece    | auto         | full (soft-capped logits) |
  | bfloat16   | Llama   | untied | SentencePiece    | float32      | hidden (|dUF| <= 1e-4; skipped where auto is float32) |
  | float32    | Llama   | tied   | byte BPE (GPT-2) | float16      | hidden, LM head in float32 |
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks.fixtures import TINY_CORPUS
from delift_ray.config import TemplateConfig
from delift_ray.prompts import PROBES, Ragged, hstack, pair_sequence, plan_tokenisation, tokenize_set, whole_plan
from delift_ray.scoring import engine as eng
from delift_ray.storage import UTILITY
from tests.helpers import write_rows

# --------------------------------------------------------------------------- tokenizers

# Qwen2's pre-tokenizer pattern (its tokenizer.json): punctuation takes the newlines after it.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
EXTRA_CORPUS = "\n".join(
    [
        "What is the capital of France?\nParis is the capital of France.",
        "Is it raining?\n\n\nQuery:\nWhy?\nBecause.",
        'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b',
        "Instruction: Please generate a response to the following query.\n\n\nQuery: What?\n",
        "Example:\nWho?\nMe.\n\n\nQuery:\nWhere?\nHere.",
    ]
    * 3
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def byte_bpe(kind: str, vocab_size: int = 600):
    """A byte-level BPE tokenizer (``gpt2`` or ``qwen2`` pre-tokenizer) trained on the test corpus."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((TINY_CORPUS + EXTRA_CORPUS).splitlines(keepends=True), trainer=trainer)
    pad, bos, eos = SPECIALS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def sentencepiece_tokenizer(workdir: Path, vocab_size: int = 400):
    """A Llama-2-style SentencePiece BPE tokenizer (prefix space, byte fallback) trained here."""
    sentencepiece = pytest.importorskip("sentencepiece")
    from transformers import LlamaTokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    corpus = workdir / "corpus.txt"
    corpus.write_text(TINY_CORPUS + EXTRA_CORPUS)
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(workdir / "sp"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (workdir / "sp.model").rename(workdir / "tokenizer.model")
    return LlamaTokenizer.from_pretrained(workdir)  # converted from the SentencePiece model


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    return {
        "gpt2": byte_bpe("gpt2"),
        "qwen2": byte_bpe("qwen2"),
        "sentencepiece": sentencepiece_tokenizer(tmp_path_factory.mktemp("sp")),
    }


# Samples none of the probes contain: the exactness must hold beyond the plan's own checks.
SAMPLES = [
    ("Why is the sky blue?", "Because air scatters blue light more than red light."),
    (
        "Write a function that returns the largest item.",
        'def largest(xs):\n    """The largest item."""\n    return max(xs)',
    ),
    ("Translate to French: good night", "Bonne nuit."),
    ("List three colours:", "- red\n- green\n- blue"),
    ("Add 17 and 25.", "17 + 25 = 42"),
    ("Was ist das?", "Das ist ein Haus!"),
    ('Quote it: "ok"', '"ok"'),
    ("(a) or (b)?", "(b)"),
    ("Give me a URL", "https://example.com/a?b=c"),
    ("x", "y?"),
]


def whole(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def check_exact(tok, templates, plan=None):
    prompts, responses = [p for p, _ in SAMPLES], [r for _, r in SAMPLES]
    ts = tokenize_set(tok, prompts, responses, templates, plan=plan)
    bad = []
    for i, (p, r) in enumerate(SAMPLES):
        if ts.no_example[i] != whole(tok, templates.no_example.format(query=p)):
            bad.append(("no_example", i))
        if ts.response[i] != whole(tok, r):
            bad.append(("response", i))
        for j, (pj, rj) in enumerate(SAMPLES):
            ctx = templates.with_example.format(example_prompt=pj, example_response=rj, query=p)
            seq, first = pair_sequence(ts, i, ts, j, eos=-1, max_len=10_000)
            if seq[: first - 1] != whole(tok, ctx):
                bad.append(("pair", j, i))
    return bad


TEMPLATES = [
    TemplateConfig(),
    TemplateConfig(no_example="Q: {query} A:", with_example="{example_prompt} => {example_response}; {query} =>"),
]


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "sentencepiece"])
@pytest.mark.parametrize("t", range(len(TEMPLATES)))
def test_spliced_tokens_equal_whole_string_tokens(tokenizers, family, t):
    assert check_exact(tokenizers[family], TEMPLATES[t]) == []


def test_the_old_two_part_split_is_not_exact_for_sentencepiece_or_qwen2(tokenizers):
    """Why the plan exists: cutting after {example_response} and tokenising each part alone
    adds a prefix space (SentencePiece) or splits Qwen2's '.\\n\\n\\n' pre-token."""
    for family in ("sentencepiece", "qwen2"):
        assert check_exact(tokenizers[family], TemplateConfig(), plan=whole_plan(TemplateConfig())) != []
    assert check_exact(tokenizers["gpt2"], TemplateConfig(), plan=whole_plan(TemplateConfig())) == []


def test_plans_by_family(tokenizers):
    plans = {f: plan_tokenisation(tokenizers[f], TemplateConfig()) for f in tokenizers}
    for f, plan in plans.items():
        assert plan.exact, f
        # Prefix sharing: the example head holds everything up to the query.
        assert plan.with_example.runs[plan.cut].startswith(("{query}", " {query}")), (f, plan.describe())
    assert not plans["gpt2"].with_example.anchored and not plans["qwen2"].with_example.anchored
    assert plans["sentencepiece"].with_example.anchored  # runs after the first lose their prefix space
    # Qwen2 joins a query's final '?' with the newline after it: fewer, longer runs than GPT-2.
    assert len(plans["qwen2"].with_example.runs) < len(plans["gpt2"].with_example.runs)


class PositionalTokenizer:
    """One token per character that also encodes its offset in the string: no cut splices
    exactly, so every template is tokenised whole."""

    def __call__(self, texts, add_special_tokens=False):
        if isinstance(texts, str):
            return {"input_ids": self([texts])["input_ids"][0]}
        return {"input_ids": [[ord(c) + 100_000 * k for k, c in enumerate(t)] for t in texts]}


def test_a_tokenizer_no_cut_keeps_is_tokenised_whole():
    tok = PositionalTokenizer()
    plan = plan_tokenisation(tok, TemplateConfig())
    assert plan.no_example.runs == (TemplateConfig().no_example,)
    assert not plan.exact  # no cut between example and query keeps the tokens: the plan says so
    bad = check_exact(tok, TemplateConfig())
    assert bad and {b[0] for b in bad} == {"pair"}  # only the with-example contexts differ


def test_probes_cover_each_character_class():
    ends = {c for p, r in PROBES for c in (p[0], p[-1], r[0], r[-1])}
    assert any(c.isalpha() for c in ends) and any(c.isdigit() for c in ends)
    assert {"?", ".", ")", "]", '"', "'", ":"} <= ends
    assert any(ord(c) > 0x3000 for c in ends)  # CJK / emoji


def test_hstack_concatenates_rows():
    a = Ragged.from_lists([[1], [], [2, 3]])
    b = Ragged.from_lists([[4, 5], [6], []])
    assert list(hstack([a, b])) == [[1, 4, 5], [6], [2, 3]]


def test_a_cut_head_keeps_the_literal_that_ends_it(tokenizers):
    tok = tokenizers["gpt2"]
    t = TemplateConfig()
    ts = tokenize_set(tok, ["Why?", "Long " * 200], ["Yes.", "No."], t)
    assert ts.head_keep > 0
    tail_literal = ts.head[0][-ts.head_keep :]
    seq, first = pair_sequence(ts, 0, ts, 1, eos=-1, max_len=120)
    assert len(seq) == 120 and seq[first:] == ts.response[0] + [-1]
    assert seq[first - 1 - len(ts.tail[0]) - ts.head_keep : first - 1 - len(ts.tail[0])] == tail_literal


def test_progress_bar_on_large_sets(tokenizers, capsys):
    tok = tokenizers["gpt2"]
    tokenize_set(tok, ["a"] * 10, ["b"] * 10, TemplateConfig(), progress=True)
    assert "tokenise" in capsys.readouterr().err
    tokenize_set(tok, ["a"] * 10, ["b"] * 10, TemplateConfig())  # small: no bar by default
    assert "tokenise" not in capsys.readouterr().err


# --------------------------------------------------------------------------- dtype

INTEL_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_bf16 amx_tile\n"
INTEL_NO_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_cpu_bf16_detection():
    assert eng.cpu_has_bf16(INTEL_BF16) and eng.cpu_has_bf16(ARM_BF16)
    assert not eng.cpu_has_bf16(INTEL_NO_BF16) and not eng.cpu_has_bf16("")


@pytest.mark.parametrize(
    "checkpoint,cpu_bf16,gpu_bf16,on_cpu,want",
    [
        ("float32", True, True, True, "bfloat16"),
        ("float16", True, True, True, "bfloat16"),
        ("bfloat16", False, True, True, "float32"),
        ("float16", False, True, True, "float32"),
        ("float32", False, True, False, "bfloat16"),
        ("float16", False, True, False, "float16"),
        ("bfloat16", False, True, False, "bfloat16"),
        (None, False, True, False, "bfloat16"),
        ("float32", False, False, False, "float16"),  # a GPU without bfloat16
    ],
)
def test_auto_dtype(checkpoint, cpu_bf16, gpu_bf16, on_cpu, want):
    assert eng.resolve_dtype("auto", checkpoint, on_cpu=on_cpu, cpu_bf16=cpu_bf16, gpu_bf16=gpu_bf16) == want
    assert eng.resolve_dtype("float16", checkpoint, on_cpu=on_cpu, cpu_bf16=cpu_bf16) == "float16"  # asked for


def test_checkpoint_dtype_and_head_dtype():
    import torch
    from transformers import LlamaConfig

    assert eng.checkpoint_dtype(LlamaConfig(dtype="float16")) == "float16"
    assert eng.checkpoint_dtype(LlamaConfig(dtype=torch.bfloat16)) == "bfloat16"
    assert eng.checkpoint_dtype(LlamaConfig()) in (None, "float32")
    # auto and float32: float32 on every device, whatever the body runs in.
    for requested in ("auto", "float32"):
        for model_dtype in (torch.float16, torch.bfloat16, torch.float32):
            for on_cpu, cpu_bf16 in ((True, True), (True, False), (False, False)):
                assert eng.head_dtype(model_dtype, on_cpu, cpu_bf16, requested) == torch.float32
    # engine: the old behaviour, the model's dtype unless a CPU has no fast matmul in it.
    assert eng.head_dtype(torch.float16, on_cpu=True, requested="engine") == torch.float32
    assert eng.head_dtype(torch.float16, on_cpu=False, requested="engine") == torch.float16
    assert eng.head_dtype(torch.bfloat16, on_cpu=False, requested="engine") == torch.bfloat16
    assert eng.head_dtype(torch.bfloat16, on_cpu=True, cpu_bf16=True, requested="engine") == torch.bfloat16
    assert eng.head_dtype(torch.bfloat16, on_cpu=True, cpu_bf16=False, requested="engine") == torch.float32
    assert eng.head_dtype(torch.float32, on_cpu=True, cpu_bf16=False, requested="engine") == torch.float32


def test_pin_advice_names_the_setting_that_differs():
    from delift_ray.scoring.actor import pin_advice

    assert pin_advice("float32", "bfloat16") == "engine.dtype: float32"
    assert pin_advice("bfloat16, LM head float32", "float32") == "engine.dtype: bfloat16"
    assert pin_advice("bfloat16", "bfloat16") == "engine.head_dtype: engine"
    assert pin_advice("bfloat16, LM head float32", "bfloat16") == "engine.head_dtype: float32"


# --------------------------------------------------------------------------- the matrix (real engine)

DATA = [
    {"prompt": "What is the capital of France?", "response": "Paris is the capital of France."},
    {
        "prompt": "Write a function that adds two numbers.",
        "response": 'def add(a, b):\n    """Return a + b."""\n    return a + b',
    },
    {"prompt": "Is it raining?", "response": "No, the sky is clear."},
    {"prompt": "Sort the numbers: 3, 1, 2", "response": "1, 2, 3"},
    {"prompt": "Translate to French: thank you", "response": "Merci."},
]
ENGINE = {"max_model_len": 256, "block_size": 32, "kv_cache_space_gib": 1}


def build_checkpoint(path: Path, arch: str, dtype: str, tied: bool, tok, seed: int = 0) -> str:
    """A tiny random causal LM (2 layers, hidden 256, head_dim 64) saved in ``dtype`` with ``tok``."""
    import torch
    import transformers

    common = dict(
        vocab_size=-(-len(tok) // 64) * 64,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=1024,
        initializer_range=0.1,
        tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
    )
    if arch == "llama":
        config, cls = transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    elif arch == "qwen2":
        config, cls = transformers.Qwen2Config(**common, use_sliding_window=False), transformers.Qwen2ForCausalLM
    else:  # gemma2: soft-capped final logits, which the hidden path must refuse
        config = transformers.Gemma2Config(
            **common,
            final_logit_softcapping=5.0,
            attn_logit_softcapping=None,
            query_pre_attn_scalar=64,
            sliding_window=4096,
        )
        cls = transformers.Gemma2ForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config).to(getattr(torch, dtype)).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def reference_utilities(model_dir: str, samples: list[dict]) -> tuple[dict, dict]:
    """Teacher forcing in float32 with transformers (whole-string tokenisation of each context):
    ({sample: d_without}, {(helped, example): UF})."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    t = TemplateConfig()
    eos = tok.eos_token_id

    def distance(ctx: str, resp: str) -> float:
        c, r = whole(tok, ctx), whole(tok, resp)
        ids = c + [eos] + r + [eos]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        first = len(c) + 1
        p = logp[torch.arange(first - 1, len(ids) - 1), torch.tensor(ids[first:])].exp()
        return float(torch.sqrt(torch.mean((1 - p) ** 2)))

    base = {s["prompt"]: distance(t.no_example.format(query=s["prompt"]), s["response"]) for s in samples}
    uf = {}
    for h in samples:
        for e in samples:
            ctx = t.with_example.format(example_prompt=e["prompt"], example_response=e["response"], query=h["prompt"])
            uf[(h["prompt"], e["prompt"])] = base[h["prompt"]] - distance(ctx, h["response"])
    return base, uf


CASES = {  # name: (arch, checkpoint dtype, tied head, tokenizer, engine.dtype, path, tolerance[, head_dtype])
    "llama-fp32-tied-gpt2bpe": ("llama", "float32", True, "gpt2", "auto", "hidden", 1e-3),
    "qwen2-fp16-untied-qwen2bpe": ("qwen2", "float16", False, "qwen2", "auto", "hidden", 1e-3),
    "llama-bf16-untied-sentencepiece": ("llama", "bfloat16", False, "sentencepiece", "auto", "hidden", 1e-3),
    "gemma2-fp32-softcap-sentencepiece": ("gemma2", "float32", True, "sentencepiece", "auto", "full", 1e-3),
    "llama-bf16-untied-sentencepiece-fp32": ("llama", "bfloat16", False, "sentencepiece", "float32", "hidden", 1e-4),
    "llama-fp32-tied-gpt2bpe-forced-fp16": ("llama", "float32", True, "gpt2", "float16", "hidden", 1e-3),
    # The body in bfloat16 on any CPU (emulated without bfloat16 instructions), the LM head in
    # float32 (engine.head_dtype auto): the body's rounding alone stays within 1e-3 of float32.
    "llama-fp32-tied-gpt2bpe-forced-bf16": ("llama", "float32", True, "gpt2", "bfloat16", "hidden", 1e-3),
    # The head as it ran before engine.head_dtype (head_dtype: engine): in bfloat16 where the CPU
    # has bfloat16 instructions, else float32 (head_dtype's rule); held to the same bound.
    "llama-fp32-tied-gpt2bpe-forced-bf16-head-engine": (
        "llama",
        "float32",
        True,
        "gpt2",
        "bfloat16",
        "hidden",
        1e-3,
        "engine",
    ),
}


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray cluster for the matrix. Ray gives its raylet 30 s to register, which a
    loaded machine can miss: the start is tried three times."""
    import ray

    for attempt in range(3):
        try:
            ray.init(
                address="local",
                num_cpus=2,
                object_store_memory=150 * 1024**2,
                include_dashboard=False,
                logging_level="WARNING",
            )
            break
        except Exception:  # "The current node timed out during startup"
            ray.shutdown()
            if attempt == 2:
                raise
    yield
    ray.shutdown()


@pytest.mark.engine
@pytest.mark.ray
@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_matrix(case, tokenizers, ray_local, tmp_path):
    import torch

    from delift_ray.job import run

    arch, ckpt_dtype, tied, family, dtype, path, tol, *head = CASES[case]
    head = head[0] if head else "auto"
    want = eng.resolve_dtype(dtype, ckpt_dtype, on_cpu=True, cpu_bf16=eng.cpu_has_bf16())
    want_head = str(eng.head_dtype(getattr(torch, want), True, eng.cpu_has_bf16(), head)).replace("torch.", "")
    if dtype == "float32" and eng.resolve_dtype("auto", ckpt_dtype, on_cpu=True, cpu_bf16=eng.cpu_has_bf16()) == want:
        pytest.skip("auto is float32 on this CPU: the auto case of this checkpoint already runs float32")
    model = build_checkpoint(tmp_path / "model", arch, ckpt_dtype, tied, tokenizers[family])
    data = tmp_path / "data.jsonl"
    write_rows(data, DATA)
    out = tmp_path / "out"
    run(
        {
            "data": str(data),
            "model": model,
            "out": str(out),
            "budget": 2,
            "engine": {**ENGINE, "dtype": dtype, "head_dtype": head},
            "scoring": {"block_size": 8},
        },
        progress=False,
    )

    counts = json.load(open(out / "run.json"))["counts"]
    assert counts["dtypes"] == [want] and counts["logprob_paths"] == [path]
    assert counts["head_dtypes"] == ([want_head] if path == "hidden" else [])
    if head == "auto" and path == "hidden":
        assert want_head == "float32"  # the rule: a float32 head on the hidden path, whatever the body
    assert counts["pairs_scored"] == len(DATA) ** 2

    samples = pq.read_table(out / "samples.parquet").to_pandas().set_index("sample_id")
    shards = pq.read_table(out / UTILITY).to_pandas()
    _, ref = reference_utilities(model, DATA)
    prompt = samples.prompt.to_dict()
    diffs = np.array([abs(ref[(prompt[r.helped_id], prompt[r.example_id])] - r.utility) for r in shards.itertuples()])
    assert len(diffs) == len(DATA) ** 2
    print(f"{case}: dtype {want}, path {path}, max |dUF| {diffs.max():.2e}, UF std {shards.utility.std():.3f}")
    if want == "float32":  # engine and reference both in float32
        tol = min(tol, 1e-4)
    assert diffs.max() <= tol, diffs.max()
    assert shards.utility.std() > 1e-4  # the tiny model's utilities are not all alike
    pins = list((out / "scorers").glob("fp=*.json"))  # the store records the dtype it holds
    precision = want if path != "hidden" or want_head == want else f"{want}, LM head {want_head}"
    assert [json.loads(p.read_text()) for p in pins] == [{"dtype": precision}]


class FakeScorer:
    def __init__(self, model, engine):
        self.dtype = eng.resolve_dtype(engine.dtype, "float32", on_cpu=True, cpu_bf16=FakeScorer.cpu_bf16)
        self.head_dtype = "float32" if engine.head_dtype != "engine" else self.dtype
        self.precision = self.dtype if self.head_dtype == self.dtype else f"{self.dtype}, LM head {self.head_dtype}"


@pytest.mark.parametrize("first_bf16,second_bf16,ok", [(True, True, True), (False, False, True), (True, False, False)])
def test_two_dtypes_never_mix_in_one_store(tmp_path, monkeypatch, first_bf16, second_bf16, ok):
    """``auto`` resolves per node; the first scorer pins the store's dtype and a scorer that
    resolves another one refuses to start, with the fix in its one line."""
    from delift_ray.config import EngineConfig
    from delift_ray.errors import EngineStartError
    from delift_ray.scoring import actor

    monkeypatch.setattr(actor, "Scorer", FakeScorer)
    engine = EngineConfig(dtype="auto", max_model_len=256)
    FakeScorer.cpu_bf16 = first_bf16
    actor.BlockScorer("m", engine, str(tmp_path), "fp1", 0, True)
    FakeScorer.cpu_bf16 = second_bf16
    if ok:
        actor.BlockScorer("m", engine, str(tmp_path), "fp1", 0, True)
    else:
        with pytest.raises(EngineStartError, match="computed in bfloat16, LM head float32; set engine.dtype: bfloat16"):
            actor.BlockScorer("m", engine, str(tmp_path), "fp1", 0, True)
        actor.BlockScorer("m", EngineConfig(dtype="bfloat16", max_model_len=256), str(tmp_path), "fp1", 0, True)
        # The same body with the head as it ran before (a store written then): refused, the head named.
        with pytest.raises(EngineStartError, match="set engine.head_dtype: float32"):
            actor.BlockScorer(
                "m",
                EngineConfig(dtype="bfloat16", head_dtype="engine", max_model_len=256),
                str(tmp_path),
                "fp1",
                0,
                True,
            )
    FakeScorer.cpu_bf16 = False
    actor.BlockScorer("m", engine, str(tmp_path), "fp2", 0, True)  # another fingerprint: its own pin


def test_quiet_engine_and_banner(monkeypatch):
    import torch

    from delift_ray.config import EngineConfig
    from delift_ray.scoring.lm_head import LMHead

    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "ERROR")
    assert eng.quiet_engine() and eng.engine_kwargs("m", EngineConfig())["use_tqdm_on_load"] is False
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "INFO")  # -v
    assert not eng.quiet_engine() and "use_tqdm_on_load" not in eng.engine_kwargs("m", EngineConfig())
    monkeypatch.setattr(eng, "vllm_on_cpu", lambda: True)
    s = object.__new__(eng.Scorer)
    s.requested_dtype, s.dtype, s.path = "auto", "float32", eng.HIDDEN
    s.head = LMHead(torch.zeros(4, 2, dtype=torch.float32), device="cpu")
    line = s.banner("/ckpt/my-model/", "float16")
    assert line == (
        "delift-ray scorer engine: model my-model, device cpu, dtype float32 "
        "(auto from a float16 checkpoint), logprob path hidden, LM head in float32"
    )
    assert "\n" not in line
