"""clip: max(UF, 0) / max UF, so a harmful or useless example covers nothing; a kernel whose
largest entry is <= 0 becomes 0."""

from __future__ import annotations

import numpy as np

from delift_ray.scalings import finite_range, register


@register("clip", "max(UF, 0) / max UF, so a harmful example covers nothing")
def clip(values: np.ndarray) -> None:
    span = finite_range(values)
    if span is None:
        return
    hi = span[1]
    if hi > 0:
        np.maximum(values, 0, out=values)  # NaN stays NaN
        values /= np.float32(hi)
    else:
        values[~np.isnan(values)] = 0.0
