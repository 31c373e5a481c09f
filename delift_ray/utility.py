"""The DELIFT utility maths, free of Ray and vLLM.

For a scored sequence with gold-token log-probabilities l_t at the scored positions
(the response tokens and the final EOS):

    p_t = exp(l_t)
    d   = sqrt( mean_t (1 - p_t)^2 )

and the utility of example j for helped sample i is

    UF(i <- j) = d(i, no example) - d(i, with example j)

Positive UF means the example brought the model's predictions closer to the reference.
Kernels are min-max scaled to [0, 1] over the whole matrix (never per block).
"""

from __future__ import annotations

import numpy as np


def distance(gold_logprobs: np.ndarray) -> float:
    """d = sqrt(mean((1 - exp(l))^2)) over the scored positions; needs at least one."""
    lp = np.asarray(gold_logprobs, dtype=np.float64)
    if lp.size == 0:
        raise ValueError("no scored positions: a response needs at least one token")
    if not np.all(np.isfinite(lp)):
        raise FloatingPointError("non-finite log-probability from the engine")
    return float(np.sqrt(np.mean((1.0 - np.exp(lp)) ** 2)))


def utility(d_without: np.ndarray, d_with: np.ndarray) -> np.ndarray:
    """UF = d(i, no example) - d(i, with example j), element-wise."""
    return np.asarray(d_without, dtype=np.float64) - np.asarray(d_with, dtype=np.float64)
