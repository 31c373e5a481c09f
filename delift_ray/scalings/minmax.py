"""minmax: (UF - min) / (max - min) over the whole kernel, so UF = 0 lands above 0 and a
harmful example (UF < 0) still counts as some coverage; a constant kernel becomes 0."""

from __future__ import annotations

import numpy as np

from delift_ray.scalings import finite_range, register


@register("minmax", "(UF - min) / (max - min) over the whole kernel (UF = 0 lands above 0)")
def minmax(values: np.ndarray) -> None:
    span = finite_range(values)
    if span is None:
        return
    lo, hi = span
    if hi > lo:
        values -= np.float32(lo)
        values /= np.float32(hi - lo)
    else:
        values[~np.isnan(values)] = 0.0
