"""rank: each utility replaced by its rank among the kernel's entries, scaled to [0, 1].

    K = (rank(UF) - 1) / (m - 1)     over the m entries that take part (ties: their mean rank)

Only the order of the utilities counts, so one very large entry (a self pair under
``keep``, an outlier) no longer squeezes every other entry towards 0 as it does under
minmax. The lowest entry becomes 0. It sorts every entry once (scipy's ``rankdata``):
O(E log E) time and about 12 more bytes per entry during scaling. No quality evidence
yet: docs/quality.md measures minmax and clip.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from delift_ray.scalings import register


@register("rank", "the rank of UF among the kernel's entries, scaled to [0, 1] (ties share their mean rank)")
def rank(values: np.ndarray) -> None:
    if values.size == 0:
        return
    flat = values.reshape(-1)
    if not np.shares_memory(flat, values):
        raise ValueError("rank scaling works in place: pass a contiguous array")
    ok = ~np.isnan(flat)
    m = int(ok.sum())
    if m == 0:
        return
    if m == 1:
        flat[ok] = 0.0
        return
    flat[ok] = ((rankdata(flat[ok], method="average") - 1.0) / (m - 1)).astype(np.float32)
