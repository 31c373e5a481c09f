"""The report as one self-contained HTML page: plotly.js inline, no network at view time.

plotly (the ``report`` extra) draws the charts: its offline HTML carries the whole library
in the page, hover text and zoom work from a file opened offline, and large maps use its
WebGL scatter. Tables and their search are plain HTML and a few lines of script.
"""

from __future__ import annotations

import html
from typing import Iterable, Optional

import numpy as np

from delift_ray import kernel_types
from delift_ray.report.data import FLAT_SHARE, HOVER_TEXT_POINTS, TABLE_ROWS, ReportData

CURVE_POINTS = 2000  # points a curve is drawn with at most (the picks are thinned evenly)
SVG_POINTS = 20000  # maps up to this many points are SVG; larger ones WebGL
ID_TEXT_POINTS = 200000  # maps up to this many points carry sample ids in their hover text

SECTIONS = ("summary", "curve", "utilities", "map", "selected", "left-out", "changes")

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1rem 2rem;
color:#1d2230;background:#fff}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.25rem;border-bottom:1px solid #dde;padding-bottom:.3rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;width:100%} th,td{border-bottom:1px solid #eee;padding:.3rem .5rem;
text-align:left;vertical-align:top} th{background:#f5f6fa;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap} .muted{color:#667}
.kv td:first-child{font-weight:600;width:14rem} .scroll{max-height:32rem;overflow:auto;border:1px solid #eee}
input.search{width:100%;padding:.4rem;margin:.4rem 0;font-size:.9rem;box-sizing:border-box}
code{background:#f3f3f7;padding:0 .2rem} nav a{margin-right:1rem}
"""

_SCRIPT = """
function filterTable(id, q){q=q.toLowerCase();var rows=document.getElementById(id).tBodies[0].rows;var shown=0;
for(var i=0;i<rows.length;i++){var hit=rows[i].textContent.toLowerCase().indexOf(q)>=0;rows[i].style.display=hit?'':'none';
if(hit){shown++;}}document.getElementById(id+'-shown').textContent=shown;}
"""


def render(data: ReportData) -> str:
    """The whole page."""
    import plotly.offline

    title = f"delift-ray report: {html.escape(str(data.doc.config.get('data', data.run.uri)))}"
    body = [
        f"<h1>{title}</h1>",
        f"<p class='muted'>Run <code>{html.escape(data.run.uri)}</code>. "
        "Every figure here comes from the run's own files (run.json, samples, selection, map, curve).</p>",
        "<nav>" + "".join(f"<a href='#{s}'>{s.replace('-', ' ')}</a>" for s in _present(data)) + "</nav>",
        _summary(data),
        _curve(data),
        _utilities(data),
        _map(data),
        _selected(data),
        _left_out(data),
    ]
    if data.diff is not None:
        body.append(_changes(data))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>{_STYLE}</style>"
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
        f"<script>{_SCRIPT}</script></head><body>" + "\n".join(body) + "</body></html>"
    )


def _present(data: ReportData) -> list[str]:
    return [s for s in SECTIONS if s != "changes" or data.diff is not None]


def _section(name: str, heading: str, *parts: str) -> str:
    return f"<section id='{name}' data-section='{name}'><h2>{html.escape(heading)}</h2>" + "".join(parts) + "</section>"


def _figure(fig, div_id: str) -> str:
    import plotly.io

    fig.update_layout(template="plotly_white", margin=dict(l=60, r=30, t=40, b=50))
    return plotly.io.to_html(
        fig, include_plotlyjs=False, full_html=False, div_id=div_id, config={"displaylogo": False, "responsive": True}
    )


def _kv(rows: Iterable[tuple[str, object]]) -> str:
    return (
        "<table class='kv'>"
        + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _table(table_id: str, header: list[str], rows: list[list[str]], total: int, numeric: set[int] = frozenset()) -> str:
    """A searchable table; ``rows`` are already escaped HTML cells."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td class='num'>{c}</td>" if j in numeric else f"<td>{c}</td>" for j, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    more = f" (the first {len(rows)} of {total:,}: the run's Parquet files hold them all)" if total > len(rows) else ""
    return (
        f"<input class='search' placeholder='search these rows' oninput=\"filterTable('{table_id}', this.value)\">"
        f"<p class='muted'><span id='{table_id}-shown'>{len(rows)}</span> rows shown{more}.</p>"
        f"<div class='scroll'><table id='{table_id}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _fmt(x: Optional[float], digits: int = 4) -> str:
    return "" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}g}"


# --------------------------------------------------------------------------- sections


def _summary(data: ReportData) -> str:
    doc = data.doc
    counts, cfg, sel = doc.counts, doc.config, doc.selection
    kernel = cfg.get("kernel") or {}
    pool = counts.get("samples", 0)
    budget = sel.budget if sel else data.picks_total
    kopts = f"{kernel_types.label(kernel)}, diagonal {kernel.get('diagonal')}, scaling {kernel.get('scaling')}"
    gate = (cfg.get("selection") or {}).get("noise_gate", "off")
    excluded = sum(counts.get(k) or 0 for k in ("excluded_noise_gate", "excluded_low_prompt_gain"))
    rows = [
        ("data", cfg.get("data")),
        ("model", doc.model.get("path", cfg.get("model"))),
        ("stage", sel.stage if sel else cfg.get("stage")),
        ("kernel", kopts),
        ("budget", f"{budget:,} of {pool:,} pool samples ({100 * budget / max(pool, 1):.1f}%)"),
        ("selected", f"{data.picks_total:,}"),
        ("samples by set", ", ".join(f"{k} {v:,}" for k, v in (counts.get("samples_by_set") or {}).items())),
        ("skipped rows", ", ".join(f"{k} {v:,}" for k, v in data.skipped.items()) or "none"),
        ("noise gate", f"{gate}; {excluded:,} pool samples excluded"),
        (
            "pairs",
            f"{counts.get('pairs_total', 0):,} in the plan: {counts.get('pairs_scored', 0):,} scored, "
            f"{counts.get('pairs_reused', 0):,} reused from the cache",
        ),
        (
            "baselines",
            f"{counts.get('baselines_total', 0):,}: {counts.get('baselines_scored', 0):,} scored, "
            f"{counts.get('baselines_reused', 0):,} reused",
        ),
        ("engine dtype", ", ".join(counts.get("dtypes") or []) or "n/a"),
        ("versions", ", ".join(f"{k} {v}" for k, v in doc.versions.items() if v)),
    ]
    scorers = max(len(doc.scorers), 1)
    steps = [
        [
            html.escape(s.get("name", "")),
            f"{s.get('seconds', 0):.1f}",
            f"{s.get('seconds', 0) * (scorers if s.get('name') == 'score' else 1):.1f}",
            f"{s.get('peak_rss_gib', 0):.2f}",
        ]
        for s in doc.steps
    ]
    total = doc.timings.get("total_s") or sum(s.get("seconds", 0) for s in doc.steps)
    return _section(
        "summary",
        "Summary",
        _kv(rows),
        f"<h3>Steps</h3><p class='muted'>Wall time per step ({_fmt(total)} s in all). Cost: the score step's "
        f"time on each of its {scorers} scorer(s) (engine-seconds); the other steps run in the driver. Peak RSS "
        "of the driver process.</p>",
        _table("steps", ["step", "seconds", "cost (s)", "peak RSS (GiB)"], steps, len(steps), {1, 2, 3}),
    )


def _thin(n: int, at_most: int, keep: int) -> np.ndarray:
    """Evenly spaced pick positions, ``keep`` (the budget's last pick) included."""
    if n <= at_most:
        return np.arange(n)
    idx = np.unique(np.linspace(0, n - 1, at_most).round().astype(np.int64))
    return np.union1d(idx, [min(keep, n - 1)])


def _curve(data: ReportData) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    c = data.curve
    if c is None or c.gains.size == 0:
        return _section("curve", "Gain curve", "<p>This run made no picks.</p>")
    at = _thin(c.gains.size, CURVE_POINTS, c.budget - 1)
    x = (at + 1) / max(c.pool, 1) * 100
    total = c.cumulative[-1] if c.cumulative[-1] > 0 else 1.0
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=x, y=c.gains[at], name="marginal gain", mode="lines"), secondary_y=False)
    fig.add_trace(
        go.Scatter(x=x, y=c.cumulative[at] / total * 100, name="objective (% of the last pick's)", mode="lines"),
        secondary_y=True,
    )
    fig.add_vline(x=c.budget / max(c.pool, 1) * 100, line_dash="dash", annotation_text=f"budget ({c.budget:,})")
    fig.update_xaxes(title_text="picks (% of the pool)")
    fig.update_yaxes(title_text="marginal gain", secondary_y=False)
    fig.update_yaxes(title_text="objective, % of the last pick's", range=[0, 102], secondary_y=True)
    flat, after = c.flat_from(), c.after_budget_share()
    words = []
    if c.gains.size > c.budget:
        words.append(
            f"The greedy went on past the budget to {c.gains.size:,} picks (selection.curve_horizon); those picks are "
            f"not in the subset. They add {100 * after:.1f}% to the budget's objective."
            if after is not None
            else f"The greedy went on past the budget to {c.gains.size:,} picks."
        )
    else:
        words.append("The curve stops at the budget (selection.curve_horizon 1, or a run made before the curve).")
    if flat is not None:
        words.append(
            f"From pick {flat:,} ({100 * flat / max(c.pool, 1):.1f}% of the pool) on, every pick adds less than "
            f"{100 * FLAT_SHARE:.0f}% of the first pick's gain."
        )
    else:
        words.append(f"Every pick shown adds at least {100 * FLAT_SHARE:.0f}% of the first pick's gain at its end.")
    return _section("curve", "Gain curve", _figure(fig, "curve-plot"), f"<p>{' '.join(words)}</p>")


def _bars(fig, h: dict, row: int, col: int, name: str) -> None:
    import plotly.graph_objects as go

    edges, counts = h.get("edges") or [], h.get("counts") or []
    if not counts:
        return
    mids = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    fig.add_trace(go.Bar(x=mids, y=counts, name=name, showlegend=False), row=row, col=col)


def _utilities(data: ReportData) -> str:
    from plotly.subplots import make_subplots

    p = data.profile
    if not p:
        return _section("utilities", "Utilities", "<p>This run has no profile (made before the profile step).</p>")
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            f"UF(i \u2190 i), self pairs ({(p.get('uf_diagonal') or {}).get('values', 0):,})",
            f"UF(i \u2190 j), j \u2260 i ({(p.get('uf_off_diagonal') or {}).get('values', 0):,})",
            f"scaled kernel K[i, j], j \u2260 i ({(p.get('kernel') or {}).get('values', 0):,})",
        ),
    )
    _bars(fig, p.get("uf_diagonal") or {}, 1, 1, "self")
    _bars(fig, p.get("uf_off_diagonal") or {}, 1, 2, "others")
    _bars(fig, p.get("kernel") or {}, 1, 3, "kernel")
    fig.update_layout(height=360)
    words = (
        f"<p>Utilities of {p.get('helped_sampled', 0):,} helped samples of {p.get('pool', 0):,} (a seeded sample when "
        f"the pool is larger), every stored pair of theirs with a pool example ({p.get('pairs_sampled', 0):,} pairs). "
        "UF(i \u2190 j) = d(r_i | p_i) \u2212 d(r_i | j, p_i): how much example j improves the prediction of "
        "i's response. The kernel is UF after kernel.diagonal and kernel.scaling, over the columns the greedy "
        "could pick.</p>"
    )
    best = p.get("best_helper")
    if best:
        n = sum(best.values()) or 1
        words += (
            f"<p id='best-helper'>knn: the best helper of each sampled sample came from its nearest-neighbour "
            f"candidates for {100 * best.get('neighbour', 0) / n:.1f}%, from its random candidates for "
            f"{100 * best.get('random', 0) / n:.1f}%; {100 * best.get('none', 0) / n:.1f}% have no helper above 0.</p>"
        )
    return _section("utilities", "Utilities", _figure(fig, "utilities-plot"), words)


def _map(data: ReportData) -> str:
    import plotly.graph_objects as go

    m = data.map
    if m is None:
        return _section("map", "Map of the pool", "<p>This run has no map (made before the profile step).</p>")
    x, y = m.column("x").to_numpy(), m.column("y").to_numpy()
    rank = m.column("rank").to_numpy()
    ids = m.column("sample_id").to_pylist()
    points = len(ids)
    Scatter = go.Scatter if points <= SVG_POINTS else go.Scattergl
    fig = go.Figure()
    for name, mask, marker in (
        ("not selected", rank < 0, dict(color="rgba(140,140,160,0.45)", size=5)),
        (
            "selected",
            rank >= 0,
            dict(color=rank[rank >= 0], colorscale="Viridis", size=7, showscale=True, colorbar=dict(title="pick")),
        ),
    ):
        if points <= ID_TEXT_POINTS:
            text = [
                # plotly reads tags in hover text: the sample's own text is escaped
                html.escape(
                    f"{ids[i]}{' (pick ' + str(rank[i] + 1) + ')' if rank[i] >= 0 else ''}: {data.hover.get(ids[i], '')}"
                )
                for i in np.flatnonzero(mask)
            ]
        else:
            text = None
        fig.add_trace(
            Scatter(
                x=x[mask],
                y=y[mask],
                mode="markers",
                name=name,
                marker=marker,
                text=text,
                hoverinfo="text" if text else "x+y",
            )
        )
    fig.update_layout(height=560, legend=dict(orientation="h"))
    p = data.profile
    pool = p.get("pool") or (data.curve.pool if data.curve else points)
    selected = int((rank >= 0).sum())
    source = p.get("map_source", "")
    how = (
        "the knn embedder's vectors of these samples, on their two leading principal components"
        if source == "embeddings"
        else "the kernel's rows of these samples (how much each helps the others), on their two leading principal "
        "components: samples that help the same samples lie together"
    )
    sample = (
        "every sample of the pool"
        if points >= pool
        else f"all {selected:,} selected samples and a seeded uniform sample of the others"
    )
    hover = "" if points <= HOVER_TEXT_POINTS else " Hover text: sample ids only, at this size."
    return _section(
        "map",
        "Map of the pool",
        f"<p><span id='map-count'>{points}</span> points of {pool:,} pool samples: {sample}. Position: {how}.{hover}</p>",
        _figure(fig, "map-plot"),
    )


def _selected(data: ReportData) -> str:
    rows = [
        [
            str(p["rank"]),
            html.escape(p["sample_id"]),
            _fmt(p["gain"]),
            html.escape(", ".join(p["covers"])),
            html.escape(p["prompt"]),
            html.escape(p["response"]),
        ]
        for p in data.picks
    ]
    return _section(
        "selected",
        "Selected samples",
        "<p>In pick order, with each pick's marginal gain and the samples it helps most (the top rows of its "
        "kernel column).</p>",
        _table(
            "picks", ["pick", "sample", "gain", "covers best", "prompt", "response"], rows, data.picks_total, {0, 2}
        ),
    )


def _left_out(data: ReportData) -> str:
    skipped = _kv(data.skipped.items()) if data.skipped else "<p>No row was skipped.</p>"
    if data.excluded_total:
        rows = [
            [
                html.escape(e["sample_id"]),
                html.escape(e["reason"]),
                _fmt(e["gate_gain"]),
                _fmt(e["gate_q"]),
                html.escape(e["prompt"]),
                html.escape(e["response"]),
            ]
            for e in data.excluded
        ]
        gate = "<h3>Excluded by the gate</h3><p>Lowest contrastive gain first (docs/noise-gate.md).</p>" + _table(
            "excluded",
            ["sample", "reason", "gate gain", "gate q", "prompt", "response"],
            rows,
            data.excluded_total,
            {2, 3},
        )
    else:
        gate = "<h3>Excluded by the gate</h3><p>None: no pool sample was excluded.</p>"
    return _section("left-out", "What was left out", "<h3>Skipped rows, by reason</h3>", skipped, gate)


def _changes(data: ReportData) -> str:
    d = data.diff
    counts = d["counts"]
    parts = [
        _kv(
            [
                ("previous run", d.get("previous")),
                ("mode", d.get("mode")),
                ("data", ", ".join(f"{k} {v:,}" for k, v in (d.get("data") or {}).items())),
                ("entered the subset", f"{counts['entered']:,}"),
                ("left the subset", f"{counts['left']:,}"),
                ("kept in the subset", f"{counts['kept']:,}"),
            ]
        )
    ]
    for change in ("entered", "left"):
        ids = d["first"][change]
        parts.append(
            f"<h3>{change.capitalize()} ({counts[change]:,})</h3><p class='muted'>"
            + html.escape(", ".join(ids[:TABLE_ROWS]))
            + ("" if counts[change] <= TABLE_ROWS else f" and {counts[change] - TABLE_ROWS:,} more")
            + "</p>"
        )
    return _section("changes", "Changes against the previous version", *parts)
