"""Similarities of embedding vectors: the DELIFT-SE kernel and in-context example retrieval.

Pure numpy on the vectors of the one embedder (:mod:`delift_ray.embedder`). For rows
``a_i``, ``b_j`` and ``cos(a_i, b_j) = a_i . b_j / (max(||a_i||, 1e-12) max(||b_j||, 1e-12))``:

* :func:`cosine_kernel`: ``K_ij = (cos + 1) / 2`` in [0, 1] (cos clipped to [-1, 1]);
* :func:`top_k_similar`: for each query row, the ``k`` key rows of largest cosine.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


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
