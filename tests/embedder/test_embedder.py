"""The one embedder (delift_ray.embedder): one encoder resolution and one set of vectors for
the knn step and ``evaluate``, the pooling maths, and what run.json records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from delift_ray import embedder
from delift_ray.config import validate_config
from delift_ray.errors import ConfigError

ROWS = [
    {"prompt": "Name a primary colour.", "response": "Red."},
    {"prompt": "What is 2 + 2?", "response": "4"},
    {"prompt": "Spell cat backwards.", "response": "tac"},
    {"prompt": "Give a synonym of big, and use it in a long sentence please.", "response": "Large: a large dog ran."},
    {"prompt": "Translate 'merci' to English.", "response": "Thank you."},
    {"prompt": "x", "response": "y"},
]


def knn_config(tmp_path, model, **kernel):
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return validate_config(
        {
            "data": str(data),
            "model": str(model),
            "out": str(tmp_path / "out"),
            "budget": 2,
            "engine": {"dtype": "float32", "max_model_len": 256},
            "kernel": {"type": "knn", **kernel},
        }
    )


def test_mean_pool_is_the_masked_mean_l2_normalised():
    import torch

    h = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [1.0, 1.0], [2.0, 2.0]]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    e = embedder.mean_pool(h, m).numpy()
    assert e.dtype == np.float32
    assert np.allclose(e[0], np.array([2.0, 2.0]) / np.sqrt(8))  # padding never enters the mean
    assert np.array_equal(e[1], [0.0, 0.0])  # no tokens: the zero vector


def test_one_resolution_of_encoder_names(tiny_model_dir, tmp_path):
    cfg = knn_config(tmp_path, tiny_model_dir)
    spec = embedder.knn_spec(cfg)
    assert (spec.name, spec.source, spec.backend, spec.max_length) == ("model", str(tiny_model_dir), "vllm", 256)
    assert spec.fingerprint == embedder.embedding_fingerprint(str(tiny_model_dir), 256, "vllm", "float32")
    # evaluate's names go through the same rules: 'model' is the evaluated model, default minilm
    ev = embedder.encoder_spec("model", model=str(tiny_model_dir))
    assert ev == embedder.knn_spec(knn_config(tmp_path, tiny_model_dir, embedding_backend="transformers"))
    minilm = embedder.knn_spec(knn_config(tmp_path, tiny_model_dir, embedding="minilm"))
    assert minilm == embedder.encoder_spec(None) and minilm.source == str(embedder.minilm_dir())
    assert minilm.backend == "transformers" and minilm.max_length == 256  # its own max_seq_length
    assert minilm.label.startswith("all-MiniLM-L6-v2")
    assert embedder.resolve_source("org/name") == "org/name"  # a hub id
    for bad in ("./nope", "~/no/such/dir", "typo"):
        with pytest.raises(ConfigError, match="kernel.embedding"):
            embedder.encoder_spec(bad, what="kernel.embedding")
    # another token limit, backend or dtype is another fingerprint
    fps = {
        embedder.encoder_spec(str(tiny_model_dir), backend=b, max_length=n, dtype=d).fingerprint
        for b, n, d in [
            ("transformers", 64, "float32"),
            ("transformers", 32, "float32"),
            ("vllm", 64, "float32"),
            ("vllm", 64, "bfloat16"),
        ]
    }
    assert len(fps) == 4


def test_knn_step_and_evaluate_embed_alike_and_run_json_names_the_encoder(tiny_model_dir, tmp_path):
    from delift_ray.evaluate.runner import open_encoder
    from delift_ray.steps.base import StepLog
    from delift_ray.steps.embed import embed
    from delift_ray.steps.ingest import ingest, load_tokenizer

    cfg = knn_config(tmp_path, tiny_model_dir, embedding_backend="transformers")
    sets, _ = ingest(cfg, load_tokenizer(cfg))
    steps = StepLog()
    vectors = steps.run("embed", embed, cfg, sets, False)
    pool = sets["pool"].samples
    texts = [embedder.sample_text(p, r) for p, r in zip(pool.prompts, pool.responses)]

    enc = open_encoder("model", str(tiny_model_dir), device="cpu")  # evaluate's encoder
    assert isinstance(enc, embedder.Embedder) and enc.spec == embedder.knn_spec(cfg)
    want = enc.embed(texts)
    assert want.dtype == np.float32 and want.shape == (len(ROWS), 256)
    assert np.array_equal(vectors["pool"], want)
    assert np.allclose(np.linalg.norm(want, axis=1), 1, atol=1e-5)
    assert np.array_equal(enc.embed(texts[::-1]), want[::-1])  # in the order given

    # run.json steps[name=embed]: the counters and which embedder made the vectors
    rec = steps.as_list()[0]
    assert rec["name"] == "embed" and rec["embedded"] == len(ROWS) and rec["embedding_backend"] == "transformers"
    assert rec["encoder"] == enc.spec.record(256)
    assert rec["encoder"]["source"] == str(tiny_model_dir) and rec["encoder"]["fingerprint"] == enc.spec.fingerprint
    again = StepLog()
    assert np.array_equal(again.run("embed", embed, cfg, sets, False)["pool"], want)
    assert again.as_list()[0]["embeddings_reused"] == len(ROWS) and again.as_list()[0]["embedded"] == 0
