"""What the report shows, read from a finished run directory (local or a URI).

Everything comes from the run's own files (:mod:`delift_ray.rundir`): run.json, samples,
selection, and the profile step's ``map.parquet`` and ``curve.parquet``; a reselect run
adds ``selection_diff.parquet``. Nothing is scored or assembled again, so a report of a
million-sample run reads a few small files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from delift_ray.rundir import CURVE, MAP, NOISE_GATE, OK, FinishedRun, RunDocument, read_run, read_run_table

SNIPPET = 160  # characters of a prompt or response shown in a table
TABLE_ROWS = 1000  # rows of a table at most (the run's Parquet files hold them all)
HOVER_TEXT_POINTS = 20000  # maps with more points carry sample ids only in their hover text
FLAT_SHARE = 0.01  # a pick "adds little" below this share of the first pick's gain


@dataclass
class Curve:
    gains: np.ndarray  # every pick the greedy made, in order
    budget: int  # picks in the subset
    pool: int

    @property
    def cumulative(self) -> np.ndarray:
        return np.cumsum(self.gains)

    def flat_from(self) -> Optional[int]:
        """The first pick (1-based) from which every later gain is below FLAT_SHARE of the
        first's; None when the curve never flattens that far."""
        if self.gains.size == 0 or self.gains[0] <= 0:
            return None
        low = self.gains < FLAT_SHARE * self.gains[0]
        if not low[-1]:
            return None
        high = np.flatnonzero(~low)
        return int(high[-1] + 2) if high.size else 1

    def after_budget_share(self) -> Optional[float]:
        """The objective the picks after the budget add, as a share of the budget's."""
        inside = float(self.gains[: self.budget].sum())
        if self.gains.size <= self.budget or inside <= 0:
            return None
        return float(self.gains[self.budget :].sum()) / inside


@dataclass
class ReportData:
    run: FinishedRun
    curve: Optional[Curve]
    map: Optional[pa.Table]
    picks: list[dict]  # the first TABLE_ROWS picks: rank, sample_id, gain, covers, prompt, response
    picks_total: int
    skipped: dict[str, int]
    excluded: list[dict]  # pool samples the gate left out, with their gain and q (TABLE_ROWS at most)
    excluded_total: int
    profile: dict  # the profile step's stats (run.json steps)
    diff: Optional[dict] = None  # reselect: counts and the first ids of each change
    hover: dict[str, str] = field(default_factory=dict)  # map hover text by sample id

    @property
    def doc(self) -> RunDocument:
        return self.run.doc


def snippet(text: Optional[str], limit: int = SNIPPET) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def load(uri: str) -> ReportData:
    """The report's data of the finished run at ``uri``."""
    run = read_run(uri)
    pool = run.pool
    ids = pool.column("sample_id").to_pylist()
    where = {sid: i for i, sid in enumerate(ids)}
    prompts, responses = pool.column("prompt"), pool.column("response")
    profile = run.doc.step("profile")

    curve_t = read_run_table(run, CURVE)
    sel = run.selection
    if curve_t is not None:
        curve = Curve(
            curve_t.column("gain").to_numpy(), int(pc.sum(curve_t.column("in_subset")).as_py() or 0), len(ids)
        )
        shown = curve_t.slice(0, min(TABLE_ROWS, curve.budget))
        covers = shown.column("covers").to_pylist()
    else:  # a run made before the profile step: the subset's own gains only
        # (a continual reselect's kept picks carry no gain: NaN, drawn as 0)
        curve = Curve(np.nan_to_num(sel.column("gain").to_numpy(zero_copy_only=False)), sel.num_rows, len(ids))
        shown, covers = sel.slice(0, TABLE_ROWS), [None] * min(TABLE_ROWS, sel.num_rows)
    picks = []
    for r, (sid, gain, cov) in enumerate(
        zip(shown.column("sample_id").to_pylist(), shown.column("gain").to_pylist(), covers)
    ):
        i = where.get(sid)
        picks.append(
            {
                "rank": r + 1,
                "sample_id": sid,
                "gain": gain,
                "covers": cov or [],
                "prompt": snippet(prompts[i].as_py()) if i is not None else "",
                "response": snippet(responses[i].as_py()) if i is not None else "",
            }
        )

    status = run.samples.column("status").to_pylist()
    skipped = dict(run.doc.counts.get("skipped") or {})
    for s in status:  # too-long rows and gate exclusions are rows of samples.parquet too
        if s not in (OK,) and s not in skipped and not s.startswith("excluded_"):
            skipped[s] = status.count(s)
    excluded, excluded_total = _excluded(pool)

    map_t = read_run_table(run, MAP)
    hover = {}
    if map_t is not None and map_t.num_rows <= HOVER_TEXT_POINTS:
        for sid in map_t.column("sample_id").to_pylist():
            i = where.get(sid)
            if i is not None:
                hover[sid] = snippet(prompts[i].as_py(), 80)
    return ReportData(
        run, curve, map_t, picks, sel.num_rows, skipped, excluded, excluded_total, profile, _diff(run), hover
    )


def _excluded(pool: pa.Table) -> tuple[list[dict], int]:
    status = pool.column("status")
    out = pool.filter(pc.starts_with(status, "excluded_"))
    total = out.num_rows
    if "gate_gain" in out.column_names:
        out = out.sort_by([("gate_gain", "ascending")])
    out = out.slice(0, TABLE_ROWS)
    rows = []
    cols = out.column_names
    for r in out.to_pylist():
        rows.append(
            {
                "sample_id": r["sample_id"],
                "reason": "noise gate" if r["status"] == NOISE_GATE else "low prompt gain",
                "gate_gain": r.get("gate_gain") if "gate_gain" in cols else None,
                "gate_q": r.get("gate_q") if "gate_q" in cols else None,
                "prompt": snippet(r["prompt"]),
                "response": snippet(r["response"]),
            }
        )
    return rows, total


def _diff(run: FinishedRun) -> Optional[dict]:
    t = read_run_table(run, "selection_diff.parquet")
    if t is None:
        return None
    change = t.column("change").to_pylist()
    ids = t.column("sample_id").to_pylist()
    by = {c: [s for s, x in zip(ids, change) if x == c] for c in ("entered", "left", "kept")}
    reselect = run.doc.reselect or {}
    return {
        "previous": reselect.get("previous"),
        "mode": reselect.get("mode"),
        "data": reselect.get("data") or {},
        "counts": {c: len(v) for c, v in by.items()},
        "first": {c: v[:TABLE_ROWS] for c, v in by.items()},
    }
