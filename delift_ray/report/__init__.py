"""``delift-ray report RUN``: one self-contained HTML page of a finished run.

:func:`write_report` reads the run (:mod:`delift_ray.report.data`) and renders it
(:mod:`delift_ray.report.page`). The page needs plotly, the ``report`` extra.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pyarrow.fs as pafs

from delift_ray.errors import DeliftError


@dataclass
class ReportStats:
    path: str
    bytes: int
    seconds: float
    map_points: int
    picks_shown: int


def default_report_path(run_uri: str) -> str:
    """Where the page goes without ``--out``: inside a local run directory, else ./<name>-report.html."""
    if "://" in run_uri:
        return f"{run_uri.rstrip('/').rsplit('/', 1)[-1] or 'run'}-report.html"
    return f"{run_uri.rstrip('/')}/report.html"


def write_report(run_uri: str, out: str | None = None) -> ReportStats:
    """Render the report of the run at ``run_uri`` to ``out`` (a local file)."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise DeliftError("delift-ray report needs plotly: pip install 'delift-ray[report]'") from None
    from delift_ray.report.data import load
    from delift_ray.report.page import render
    from delift_ray.storage import atomic_write

    start = time.perf_counter()
    data = load(run_uri)
    page = render(data).encode()
    path = out or default_report_path(run_uri)
    atomic_write(pafs.LocalFileSystem(), os.path.abspath(path), page)
    return ReportStats(
        path,
        len(page),
        round(time.perf_counter() - start, 3),
        0 if data.map is None else data.map.num_rows,
        len(data.picks),
    )
