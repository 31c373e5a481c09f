"""The figures tables of README.md and docs/*.md, rendered from ``benchmarks/results/*.json``.

A figure in the docs is a row rendered from a committed result file (written by
``benchmarks.results.write_result``, which records the machine, the date and the
command). Nothing else is a figure, so a figure cannot go stale: re-run the benchmark,
commit its JSON, regenerate the docs::

    python docs/generate.py            # rewrite every generated block in README.md and docs/
    python docs/generate.py --check    # exit 1 if a committed block differs (tests/docs/test_docs.py)

Each table sits between markers in a Markdown file (``<!-- generated:figures begin -->``
in README.md, ``<!-- generated:figures:scoring begin -->`` in docs/scoring.md, ...);
README.md gets every row, a topic page the rows whose spec names it.

**Adding a row for a new benchmark.** Append a :class:`Row` to ``ROWS``::

    ROWS.append(Row(
        match="scoring_*",                 # fnmatch on the result's file stem (its benchmark name)
        page="scoring",                    # docs/scoring.md also lists it
        rows=lambda r, doc: [(             # r = doc["results"]; one or more (what, figure) cells
            f"scoring, {r['model']}, {r['pairs']} pairs",
            f"{r['reuse_pairs_per_s']:.1f} pairs/s",
        )],
    ))

The first spec whose ``match`` fits a file renders it. A file no spec matches, or whose
spec raises ``KeyError`` / ``TypeError`` / ``ValueError`` (the JSON lacks a key the spec
reads), still gets a row: its name, its first few scalar results and a link to the file,
and ``render`` warns on stderr, so a new benchmark shows up at once and its spec can
follow. The machine, date and command columns come from the file itself.
"""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass
from typing import Callable, Iterable

Cells = list[tuple[str, str]]


@dataclass(frozen=True)
class Row:
    """How one benchmark's result file becomes table rows."""

    match: str
    page: str
    rows: Callable[[dict, dict], Cells]


# --------------------------------------------------------------------------- formatting


def num(x, digits: int = 3) -> str:
    """A number the way a reader wants it: thousands separated, trailing zeros dropped."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e7):
            return f"{x:.1e}"
        text = f"{x:,.{digits}f}".rstrip("0").rstrip(".")
        return text or "0"
    return str(x)


def ratio(x) -> str:
    return f"{float(x):.3f}"


def secs(x) -> str:
    x = float(x)
    if x >= 120:
        m, s = divmod(round(x), 60)
        return f"{m} min {s} s"
    return f"{num(x, 1)} s"


def machine_cell(doc: dict) -> str:
    m = doc.get("machine") or {}
    parts = []
    if m.get("cpus"):
        parts.append(f"{m['cpus']} cores")
    if m.get("memory_gib"):
        parts.append(f"{num(float(m['memory_gib']), 0)} GiB")
    parts.append(m.get("accelerator") or "no GPU")
    if m.get("load_avg_1m") is not None:
        parts.append(f"load {num(float(m['load_avg_1m']), 1)}")
    return ", ".join(parts) + f"; {str(doc.get('date', '?'))[:10]}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------- row specs
# Each spec reads doc["results"] as its benchmark script writes it.


def _reducer(r: dict, doc: dict) -> Cells:
    what = {
        "dense_fl": "dense FL",
        "sparse_fl": "sparse FL",
        "sparse_flmi": "sparse FLMI",
        "sparse_flcg": "sparse FLCG",
    }[r["case"]]
    size = f"N = {num(r['n'])}" + (f", k = {r['k']}" if "k" in r else "") + f", budget {num(r['budget'])}"
    fig = f"{secs(r['seconds'])} wall ({secs(r['cpu_seconds'])} CPU), peak RSS {num(r['peak_rss_gb'], 2)} GB"
    if "submodlib_seconds" in r:
        same = (
            "identical picks"
            if r.get("identical")
            else (
                f"same picks up to step {num(r['identical_prefix'])}"
                + (" (an exact gain tie)" if (r.get("first_divergence") or {}).get("tie") else "")
            )
        )
        fig += (
            f"; submodlib {secs(r['submodlib_seconds'])} wall ({secs(r['submodlib_cpu_seconds'])} CPU), "
            f"{num(r['submodlib_peak_rss_gb'], 2)} GB; {same}"
        )
    return [(f"selection ({what}), {size}", fig)]


def _pruning_synthetic(r: dict, doc: dict) -> Cells:
    cases = r["cases"]
    ns = sorted({c["n"] for c in cases})
    fr = sorted({c["budget_frac"] for c in cases})
    lo, hi = min(c["ratio"] for c in cases), max(c["ratio"] for c in cases)
    rlo, rhi = min(c["ratio_random"] for c in cases), max(c["ratio_random"] for c in cases)
    k, rnd = cases[0]["k"], cases[0]["random"]
    return [
        (
            f"knn pruning, synthetic kernels, N in {{{', '.join(num(n) for n in ns)}}}, k {k} + r {rnd}, "
            f"budgets {', '.join(f'{f:.0%}' for f in fr)}",
            f"FL(knn) / FL(dense) {ratio(lo)}-{ratio(hi)}; random subsets {ratio(rlo)}-{ratio(rhi)}",
        )
    ]


def _pruning_real(r: dict, doc: dict) -> Cells:
    out = []
    for c in r["cases"]:
        out.append(
            (
                f"knn pruning on real utilities: {c['model']}, {c['n']} samples, k {c['k']} + r {c['random']}, "
                f"`{c['embedding']}` embedding, diagonal {'dropped' if c['exclude_self'] else 'kept'}",
                f"FL(knn) / FL(dense) {ratio(c['ratio'])}; random {ratio(c['ratio_random'])}; "
                f"overlap {num(c['overlap'], 2)}",
            )
        )
    return out


def _knn_job(r: dict, doc: dict) -> Cells:
    t = r["timings"]
    return [
        (
            f"whole knn job, tiny test model, N = {num(r['n'])}, k {r['k']} + r {r['random']} "
            f"({num(r['pairs_total'])} pairs), kernel {kernel_label(r.get('kernel_options'))}",
            f"{secs(r['wall_s'])} end to end; scoring {num(r['score_pairs_per_s'], 1)} pairs/s "
            f"({secs(t['score_s'])}); driver peak RSS {num(r['driver_peak_rss_gib'], 2)} GiB",
        )
    ]


def _job_scale(r: dict, doc: dict) -> Cells:
    # benchmarks/job_scale.py: the whole knn job at 100k against 2k, killed, resumed, cached.
    s, st = r["summary"], r["settings"]
    return [
        (
            f"whole knn job, tiny test model, N = {num(st['n'])} against {num(st['small'])} in one session, "
            f"k {st['k']} + r {st['random']} ({num(r['resumed']['pairs_total'])} pairs); driver killed at half, resumed",
            f"scoring {num(s['pairs_per_s_resumed'], 1)} pairs/s against {num(s['pairs_per_s_small'], 1)} "
            f"(x{num(s['pairs_per_s_ratio_resumed_to_small'])}); first run {secs(s['first_run_wall_s'])}, fully cached "
            f"re-run {secs(s['cached_wall_s'])} ({num(100 * s['cached_share_of_first_run'], 2)}%); driver peak RSS "
            f"{num(s['driver_peak_rss_gib'], 2)} GiB; {num(s['pairs_scored_by_resume_beyond_missing'])} stored pairs "
            "re-scored after the kill",
        )
    ]


def _estimate_1m(r: dict, doc: dict) -> Cells:
    # benchmarks/estimate_1m.py: delift-ray estimate at 1M with the measured machinery constants.
    rows = r["rows"]
    first = next((x for x in rows if x["first_bottleneck"] == "driver"), None)
    fed = {x["scorer"]: x["engines_fed_at_90pct"] for x in rows if x["block_size"] == 32}
    return [
        (
            f"`delift-ray estimate` at N = {num(r['n'])}, knn k {r['k']} + r {r['random']}, 0.5B and 7B scorers on "
            "64 and 256 assumed H100s, the machinery from measured constants",
            "; ".join(
                f"{x['scorer']}: {num(x['engine_hours'], 3)} GPU-hours"
                for x in rows
                if x["block_size"] == 32 and x["engines"] == 64
            )
            + "; H100s one driver core feeds at block_size 32: "
            + ", ".join(f"{num(v)} ({k})" for k, v in fed.items())
            + (
                f"; first bottleneck the driver from {first['scorer']}, block_size {first['block_size']}"
                if first
                else ""
            ),
        )
    ]


def recorded_kernel(options: dict | None) -> dict:
    """A result's recorded kernel options. Files from before the options were recorded were
    made under keep-minmax, the default then."""
    return options or {"diagonal": "keep", "scaling": "minmax"}


def kernel_label(options: dict | None) -> str:
    """``drop-minmax`` from a result's recorded kernel options (:func:`recorded_kernel`)."""
    o = recorded_kernel(options)
    return f"{o['diagonal']}-{o['scaling']}"


def _scale_1m(r: dict, doc: dict) -> Cells:
    steps = {s["name"]: s for s in r["dry_run"]["steps"] + (r.get("after_scoring") or {}).get("steps", [])}
    after = "".join(f", {name} {secs(steps[name]['seconds'])}" for name in ("assemble", "select") if name in steps)
    return [
        (
            f"the job's own steps at N = {num(r['n'])}, knn k {r['k']} + r {r['random']}, kernel "
            f"{kernel_label(r.get('kernel'))} (synthetic embeddings and utilities)",
            f"dry run {secs(r['dry_run']['wall_s'])}, peak RSS {num(r['dry_run']['peak_rss_gib'], 2)} GiB{after}",
        )
    ]


def _scorers(r: dict, doc: dict) -> Cells:
    ks = sorted(
        int(k[len("scorers") : -len("_pairs_per_s")])
        for k in r
        if k.startswith("scorers") and k.endswith("_pairs_per_s")
    )
    figs = ", ".join(f"{k}: {num(r[f'scorers{k}_pairs_per_s'], 1)} pairs/s" for k in ks)
    return [
        (
            f"scorer actors {' vs '.join(map(str, ks))}, whole job, {r['model']}, {num(r['n'])} samples "
            f"({num(r[f'scorers{ks[0]}_pairs'])} pairs), engine start included",
            figs,
        )
    ]


def _reselect(r: dict, doc: dict) -> Cells:
    runs = r["runs"]
    return [
        (
            f"new data version (+{r['added']} samples on {r['n']}), `reselect --mode full`, tiny test model",
            f"{num(runs['reselect_v2']['pairs_scored'])} of {num(runs['scratch_v2']['pairs_scored'])} pairs "
            f"({r['pairs_ratio_reselect_vs_scratch_v2']:.1%}), {secs(runs['reselect_v2']['wall_s'])} vs "
            f"{secs(runs['scratch_v2']['wall_s'])} from scratch; same selection: "
            f"{num(r['same_selection_as_scratch'])}",
        )
    ]


def _chaos(r: dict, doc: dict) -> Cells:
    if not r["completed"]:
        return [("chaos: scorer actors killed during a run", f"did not complete: {r['error']}")]
    return [
        (
            f"chaos: {len(r['kills'])} scorer kills during a run ({num(r['pairs_total'])} pairs, tiny test model)",
            f"completed; {num(r['pairs_redone'])} pairs redone, {num(r['pairs_missing'])} missing; "
            f"utility matrix equal: {num(r['matrix_equal'])}, selection equal: {num(r['selection_equal'])}; "
            f"{secs(r['calm_s'])} undisturbed, {secs(r['chaos_s'])} with kills",
        )
    ]


def _scoring(r: dict, doc: dict) -> Cells:
    # benchmarks/scoring.py's JSON line (scoring_<dtype>_<data>.json).
    what = f"scoring, `{doc['benchmark']}`"
    for key, label in (
        ("model", ""),
        ("checkpoint_dtype", "checkpoint "),
        ("dtype", "engine "),
        ("logprob_path", "path "),
    ):
        if r.get(key):
            what += f", {label}{r[key]}"
    if r.get("pairs"):
        what += f", {num(r['pairs'])} pairs"
    fig = (
        f"{num(r['naive_pairs_per_s'], 2)} -> {num(r['reuse_pairs_per_s'], 2)} pairs/s "
        f"(speedup {num(r['speedup'], 2)}), max |dUF| {num(r['max_abs_diff'])}"
    )
    if "efficiency" in r:
        fig += f", efficiency {num(r['efficiency'], 2)}"
    return [(what, fig)]


def _cpu_flags(doc: dict) -> str:
    # The CPU's vector flags decide which dtype is fast; a timing without them is half a figure.
    return ", ".join(doc.get("machine", {}).get("cpu_flags") or []) or "CPU flags not recorded"


def _scoring_head(r: dict, doc: dict) -> Cells:
    # benchmarks/scoring.py --phases reuse,reuse_head_engine: the job's path with the LM head in
    # float32 (engine.head_dtype auto) and in the engine's dtype (the default before), one process.
    flags = _cpu_flags(doc)
    return [
        (
            f"scoring, LM head float32 vs {r['head_engine_dtype']}, {r['model']}, engine {r['dtype']}, "
            f"{r['data']} data, {num(r['pairs'])} pairs ({flags})",
            f"{num(r['reuse_head_engine_pairs_per_s'], 2)} pairs/s with the head in {r['head_engine_dtype']}, "
            f"{num(r['reuse_pairs_per_s'], 2)} in float32 (x{num(r['head_float32_over_engine'], 3)}); "
            f"max |dUF| between them {num(r['head_max_abs_diff'])}"
            + (
                f"; a float32 engine {num(r['reuse_engine_float32_pairs_per_s'], 2)} pairs/s "
                f"(x{num(r['engine_float32_over_reuse'], 3)} of the default)"
                if "engine_float32_over_reuse" in r
                else ""
            ),
        )
    ]


def _precision(r: dict, doc: dict) -> Cells:
    # benchmarks/precision.py: bfloat16 utilities against float32, and the selection under each.
    cells = []
    for fam, f in r["families"].items():
        p = f["precisions"]
        worst = {
            name: min(sel[name]["fl_on_float32_kernel_ratio"] for sel in f["selection"].values())
            for name in ("bf16_head_f32", "bf16")
        }
        cells.append(
            (
                f"bfloat16 vs float32 utilities, {fam} data, {f['samples']} samples, kernel {r['kernel']}",
                f"error sd / signal sd: {100 * p['bf16_head_f32']['sd_err_over_signal']:.1f}% with a float32 "
                f"LM head, {100 * p['bf16']['sd_err_over_signal']:.1f}% all bfloat16; lowest FL ratio on the "
                f"float32 kernel over budgets {', '.join(f'{100 * float(b):g}%' for b in f['selection'])}: "
                f"{worst['bf16_head_f32']:.4f} and {worst['bf16']:.4f}",
            )
        )
    return cells


def _lm_head_dtype(r: dict, doc: dict) -> Cells:
    # benchmarks/lm_head_dtype.py: the hidden path's LM head on CPU in each dtype.
    # float32_torch: the same float32 head through torch's matmul instead of numpy's BLAS.
    dts = [d for d in ("float32", "float32_torch", "bfloat16", "float16") if f"{d}_rows_per_cpu_s" in r]
    label = {"float32": "float32 (numpy BLAS)", "float32_torch": "float32 (torch matmul)"}
    flags = _cpu_flags(doc)
    return [
        (
            f"LM head on CPU by dtype, {r['model']} (vocab {num(r['vocab'])}), {r['rows']} rows ({flags})",
            "; ".join(
                f"{label.get(d, d)} {num(r[f'{d}_rows_per_cpu_s'], 1)} rows per CPU-s, max |d logprob| "
                f"{num(r[f'{d}_max_abs_logprob_err'])}"
                for d in dts
            ),
        )
    ]


def _tokenise(r: dict, doc: dict) -> Cells:
    # benchmarks/tokenise.py: spliced vs whole-string tokenisation of the job's sequences.
    return [
        (
            f"tokenising {num(r['samples'])} samples, {r['model']}",
            f"{num(r['spliced_samples_per_cpu_s'], 0)} samples per CPU-s spliced vs "
            f"{num(r['whole_samples_per_cpu_s'], 0)} whole; same tokens as whole-string: "
            f"{num(r['same_tokens_as_whole'])}",
        )
    ]


def _hostile_rows(r: dict, doc: dict) -> Cells:
    # benchmarks/hostile_rows.py: one huge row among normal ones, read by the job's ingest.
    ing = r["ingest"]
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(ing.get("skipped", {}).items())) or "none"
    return [
        (
            f"a {r['row_mb']} MB row among {num(r['normal_rows'])} normal rows, ingest "
            f"(max_model_len {r['max_model_len']})",
            f"{secs(ing['seconds'])}, peak RSS {num(ing['peak_rss_gib'], 2)} GiB; {num(ing['rows'])} rows kept, "
            f"skipped: {skipped}",
        )
    ]


def _knn_default(r: dict, doc: dict) -> Cells:
    # benchmarks/knn_default.py: knn's subsets against dense, on the dense drop-minmax kernel.
    cells = []
    for name, rows in r["pools"].items():
        tags = sorted({k.split("-")[0] for k in rows})
        fig = "FL knn k 32 / FL dense (random subsets): " + ", ".join(
            f"{rows[f'{t}-knn32']['fl_ratio_on_dense_kernel']:.3f} ({rows[f'{t}-random']['fl_ratio_on_dense_kernel']:.3f})"
            f" at {int(t[1:])}%"
            for t in tags
        )
        cells.append((f"knn under {r['kernel']}, study's {name} pool, k 32 + r {r['random']}", fig))
    return cells


def _report_1m(r: dict, doc: dict) -> Cells:
    # benchmarks/report_1m.py: the report of a synthetic 1M-sample knn run.
    return [
        (
            f"`delift-ray report` of a synthetic {num(r['n'])}-sample knn run, k {r['k']} + r {r['random']}, "
            f"{num(r['picks'])} picks",
            f"{secs(r['report_s'])}, peak RSS {num(r['report_peak_rss_gib'], 2)} GiB, page {num(r['page_mib'], 1)} MiB, "
            f"{num(r['map_points'])} map points; the job's select with the gain curve to {num(r['curve_picks'])} picks "
            f"{secs(r['select_s'])}, profile {secs(r['profile_s'])}",
        )
    ]


def _assembly_checksum(r: dict, doc: dict) -> Cells:
    # benchmarks/assembly_checksum.py: 1M knn assembly, legacy against columnar shard checksums.
    med = r["assemble_median_s"]
    return [
        (
            f"the job's assemble step at N = {num(r['n'])}, knn k {r['k']} + r {r['random']} "
            f"({num(r['pairs'])} pairs, {num(r['shards']['shards'])} shards), shard checksum per-string (before) "
            f"against columnar (after), side by side ({_cpu_flags(doc)})",
            f"before {secs(med['legacy'])}, after {secs(med['columnar'])} (median of {len(r['assemble_runs']['legacy'])} "
            f"each): {r['speedup']:.2f}x; the same kernel ({num(r['kernel_nnz'])} entries)",
        )
    ]


def _s3_store(r: dict, doc: dict) -> Cells:
    # benchmarks/s3_store.py: the shard store on a moto S3 server. The "before" file is shown
    # on docs/storage.md beside the "after" one; the table row is the current code's.
    if str(doc.get("benchmark", "")).endswith("_before"):
        return []
    s3, local = r["s3"], r["local"]
    return [
        (
            f"the shard store on S3 (moto) at {num(r['shards'])} shards of {r['pairs_per_shard']} pairs: "
            "requests per shard, write and resume (the plan's stored-pair lookup)",
            f"write {num(sum(s3['write_requests_per_shard'].values()))} requests, {num(s3['write_ms_per_shard'])} ms; "
            f"resume {num(sum(s3['resume_requests_per_shard'].values()))} requests, "
            f"{num(s3['resume_ms_per_shard'])} ms ({num(r['resume_s3_over_local'])}x local disk's "
            f"{num(local['resume_ms_per_shard'])} ms)",
        )
    ]


def _standin_kind(run: dict) -> str:
    if run.get("light"):
        return " (light, no shard writes)"
    return "" if run.get("shards", True) else " (no shard writes)"


def _driver_sim(r: dict, doc: dict) -> Cells:
    # benchmarks/driver_sim.py: the real dispatcher against stand-in scorers.
    runs = r["runs"]
    return [
        (
            "the dispatcher against "
            + ", ".join(f"{x['standins']}{_standin_kind(x)}" for x in runs)
            + f" stand-in H100 scorers ({num(r['assumption']['block_s_h100'])} s a block), real shards written",
            "GPU time share "
            + ", ".join(f"{100 * x['ideal_wall_s'] / x['dispatch_wall_s']:.0f}%" for x in runs)
            + f"; driver CPU {num(max(x['driver_cpu_ms_per_block'] for x in runs), 1)} ms a block at most: "
            f"about {num(r['gpus_fed_at_90pct'])} GPUs fed at 90% by one core",
        )
    ]


def _noise_gate(r: dict, doc: dict) -> Cells:
    # benchmarks/noise_gate.py: swapped share of the default subset, without the gate and with
    # each donor rule, over every noisy pool (one row: the README's line budget).
    arms = r["rule"]["arms"]
    parts = []
    for name, pool in r["pools"].items():
        if not pool["swapped"]:
            continue
        rows = pool["budgets"]
        tags = sorted({k.split("-")[0] for k in rows})
        shares = "; ".join(f"{int(t[1:])}% " + " / ".join(_gate_share(rows[f"{t}-{a}"]) for a in arms) for t in tags)
        excluded = ", ".join(f"{a} {_pct(rows[f'{tags[0]}-{a}']['intact_excluded_share'])}" for a in arms[1:])
        parts.append(f"{name} ({pool['n']}, {pool['swapped']} swapped): {shares}; intact excluded: {excluded}")
    return [("noise gate, swapped share of the subset: " + " / ".join(arms), " | ".join(parts).replace("|", ";"))]


def _margin_check(r: dict, doc: dict) -> Cells:
    # benchmarks/margin_check.py: does the held-out margin tell wrong answers from right ones?
    x = {m: r["summary"][m] for m in ("nll", "margin")}

    def cell(m):
        v = x[m]
        return f"{m} {v['clean_minus_swapped']:+.4f} ({v['ci95'][0]:+.4f} to {v['ci95'][1]:+.4f})"

    return [
        (
            f"held-out metrics, all-clean minus all-swapped subset ({r['k']} of the noisy {r['n_pool']}, "
            f"{r['seeds']} seeds)",
            f"{cell('margin')}, separates: {num(x['margin']['separates'])}; {cell('nll')}, separates: "
            f"{num(x['nll']['separates'])}",
        )
    ]


def _baselines_study(r: dict, doc: dict) -> Cells:
    # benchmarks/baselines_study.py: DELIFT's default against the cheap baselines, and knn32 against dense.
    parts = []
    for pool, rows in r["families"].items():
        cells = [f"{x['reference']} {x['delta']:+.3f} ({x['verdict']})" for x in rows if x["kind"] != "vs random"]
        parts.append(f"{pool}: " + ", ".join(cells))
    return [("DELIFT (drop-minmax) vs cheap baselines and knn32, held-out NLL delta at 15%", "; ".join(parts))]


def _gate_share(row: dict) -> str:
    return "none kept" if row.get("stopped") else _pct(row["swapped_share"])


def _noise_probe(r: dict, doc: dict) -> Cells:
    # benchmarks/noise_probe.py: swapped responses kept by each arm, and detectors of them.
    share = r["swapped_share"]
    budgets = list(share)
    best = max(r["noise_signal_auroc"].items(), key=lambda kv: abs(kv[1] - 0.5))
    fig = (
        "swapped share, DELIFT keep-minmax (the default then): "
        + ", ".join(f"{_pct(share[b]['delift:keep-minmax'])} at {b}" for b in budgets)
        + " (random "
        + ", ".join(_pct(share[b]["random (mean of 200)"]) for b in budgets)
        + "); "
        f"best stored-utility detector: {best[0]}, AUROC {num(best[1], 3)}"
        + (f" ({num(1 - best[1], 3)} for the opposite ranking)" if best[1] < 0.5 else "")
    )
    if "pmi" in r:
        fig += f"; low prompt-response PMI (one more pass per sample): AUROC {num(r['pmi']['auroc_low_pmi'], 3)}"
    if "min_prompt_gain" in r:
        pg = r["min_prompt_gain"]
        fig += f"; selection.min_prompt_gain: AUROC {num(pg['auroc_low_gain'], 3)}, swapped share " + ", ".join(
            f"{_pct(v['swapped_share'])} at {k}" for k, v in pg["runs"].items()
        )
    return [(f"noise probe, {r['n']} pool samples, {r['swapped']} with swapped responses", fig)]


def _quality_study(r: dict, doc: dict) -> Cells:
    # benchmarks/quality_study.py: every kernel variant's verdicts against random, or progress so far.
    d, pr = r["design"], r["progress"]
    what = (
        f"quality study: {d['n_pool']}-sample pool, {d['n_eval']} held-out, budgets "
        + ", ".join(f"{100 * float(b):g}%" for b in str(d["budgets"]).split(","))
        + f", {d['randoms']} random subsets"
    )
    rows = [row for row in r.get("rows", []) if row.get("comparison")]
    variants = [f"delift:{v.strip()}" for v in str(d["variants"]).split(",") if v.strip()]
    parts = []
    for arm in variants:
        mine = [row for row in rows if row["arm"] == arm]
        twins = {row["same_subset_as"].split(":", 1)[-1] for row in mine if row.get("same_subset_as")}
        own = [row for row in mine if not row.get("same_subset_as")]
        verdicts = [
            f"{row['pool']} {100 * row['budget']:g}% {'interim, ' if row.get('interim') else ''}"
            f"{row['comparison']['verdict']} ({num(row['comparison']['delta'], 3)} "
            f"[{num(row['comparison']['ci_low'], 3)}, {num(row['comparison']['ci_high'], 3)}])"
            for row in own
        ]
        label = arm.split(":", 1)[-1] + (" (paper's kernel)" if arm == "delift:keep-minmax" else "")
        if verdicts or twins:
            parts.append(
                f"{label}: "
                + "; ".join(
                    verdicts + [f"other cells: same subsets as {t}" for t in sorted(twins)]
                    if verdicts
                    else [f"same subsets as {', '.join(sorted(twins))}"]
                )
            )
    fig = ("DELIFT vs random, delta in nats: " + " · ".join(parts)) if parts else "no verdict yet"
    default = (r.get("kernel_evidence") or {}).get("default")
    if default:
        fig += f" · kernel the evidence supports: {default.split(':', 1)[-1]}"
    ns = r.get("noisy_selections")
    if ns:
        gated = [a for a in next(iter(ns.values()))["arms"] if "min-prompt-gain" in a]
        current = (r.get("kernel_evidence") or {}).get("config_default")
        kernels = list(
            dict.fromkeys(a for a in ("delift:keep-minmax", current) if a in next(iter(ns.values()))["arms"])
        )
        cols = [*kernels, *gated]
        shares = [
            " / ".join([*(_pct(v["arms"][a]) for a in cols), _pct(v["random"]["mean"])]) + f" at {100 * float(b):g}%"
            for b, v in ns.items()
        ]
        label = {a: f"keep-minmax+{a.split(':', 1)[-1]}" for a in gated}  # the trained arm's kernel
        fig += (
            "; swapped share on the noisy pool, "
            + " / ".join([*(label.get(a, a.split(":", 1)[-1]) for a in cols), "random"])
            + ": "
            + ", ".join(shares)
        )
        dpg = r.get("noisy_default_prompt_gain")
        if dpg:
            fig += (
                f"; {dpg['kernel']} with min_prompt_gain {dpg['min_prompt_gain']:g} (selection only, not trained): "
                + ", ".join(f"{_pct(v['swapped_share'])} at {100 * float(b):g}%" for b, v in dpg["budgets"].items())
            )
    if pr["units_done"] < pr["units_total"]:
        fig += f" (in progress: {pr['units_done']} of {pr['units_total']} units)"
    return [(what, fig)]


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


ROWS: list[Row] = [
    Row("scoring_head_dtype*", "checkpoints", _scoring_head),
    Row("scoring_*", "checkpoints", _scoring),  # one row per checkpoint dtype and data
    Row("precision*", "checkpoints", _precision),
    Row("scorers", "scoring", _scorers),
    Row("lm_head_dtype*", "checkpoints", _lm_head_dtype),
    Row("tokenise*", "scale", _tokenise),
    Row("reducer_*", "scale", _reducer),
    Row("pruning_synthetic", "scale", _pruning_synthetic),
    Row("pruning_real", "scale", _pruning_real),
    Row("knn_job", "scale", _knn_job),
    Row("job_scale", "scale", _job_scale),
    Row("knn_default", "scale", _knn_default),
    Row("scale_1m", "scale", _scale_1m),
    Row("report_1m", "scale", _report_1m),
    Row("assembly_checksum_1m", "scale", _assembly_checksum),
    Row("s3_store*", "scale", _s3_store),
    Row("driver_sim", "scale", _driver_sim),
    Row("estimate_1m", "scale", _estimate_1m),
    Row("reselect_versions", "versions", _reselect),
    Row("chaos", "reliability", _chaos),
    Row("hostile_rows", "reliability", _hostile_rows),
    Row("noise_probe", "evaluation", _noise_probe),
    Row("noise_gate", "evaluation", _noise_gate),
    Row("margin_check", "evaluation", _margin_check),
    Row("baselines_study", "evaluation", _baselines_study),
    Row("quality_study", "evaluation", _quality_study),
    # Fallbacks by topic for result files without a spec of their own yet.
    Row("scale*", "scale", lambda r, doc: _fallback(doc)),
    Row("dry_run*", "scale", lambda r, doc: _fallback(doc)),
    Row("quality*", "evaluation", lambda r, doc: _fallback(doc)),
]


def _fallback(doc: dict) -> Cells:
    r = doc.get("results") or {}
    scalars = [(k, v) for k, v in r.items() if isinstance(v, (int, float, bool, str)) and len(str(v)) < 40][:4]
    fig = "; ".join(f"{k} {num(v)}" for k, v in scalars) or "see the file"
    return [(f"`{doc.get('benchmark', '?')}`", fig)]


# --------------------------------------------------------------------------- rendering


def _order(name: str) -> tuple[int, str]:
    """Rows in the order of ROWS (by topic), then by name; files without a spec last."""
    spec = spec_for(name)
    return (ROWS.index(spec) if spec is not None else len(ROWS), name)


def spec_for(name: str) -> Row | None:
    return next((row for row in ROWS if fnmatch.fnmatchcase(name, row.match)), None)


def rows_of(name: str, doc: dict, warn: Callable[[str], None]) -> tuple[str, Cells]:
    """(page, cells) of one result file; the generic row where no spec fits."""
    spec = spec_for(name)
    if spec is None:
        warn(f"figures: no row spec matches {name}.json; rendering the generic row (add one to ROWS)")
        return "", _fallback(doc)
    try:
        return spec.page, spec.rows(doc["results"], doc)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        warn(f"figures: the spec for {name}.json failed ({exc.__class__.__name__}: {exc}); generic row")
        return spec.page, _fallback(doc)


_WARNED: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        print(msg, file=sys.stderr)


def render_table(
    results: dict[str, dict],
    page: str | None = None,
    *,
    link_prefix: str = "",
    warn: Callable[[str], None] | None = None,
) -> str:
    """The Markdown table of ``results`` (name -> result doc); ``page`` keeps only that topic's rows.

    ``link_prefix`` is the path from the Markdown file to the repository root ("" for
    README.md, "../" for docs/*.md).
    """
    warn = warn or _warn_once
    lines = ["| what | figure | machine; date | how |", "|---|---|---|---|"]
    n = 0
    for name in sorted(results, key=_order):
        doc = results[name]
        row_page, cells = rows_of(name, doc, warn)
        if page is not None and row_page != page:
            continue
        how = f"`{doc.get('command', '?')}` ([{name}.json]({link_prefix}benchmarks/results/{name}.json))"
        for what, fig in cells:
            lines.append(f"| {_cell(what)} | {_cell(fig)} | {_cell(machine_cell(doc))} | {_cell(how)} |")
            n += 1
    if n == 0:
        return "No result file for this topic is committed yet (`benchmarks/results/`)."
    return "\n".join(lines)


def pages(results: dict[str, dict]) -> Iterable[str]:
    """Topic pages that have at least one row."""
    return sorted({rows_of(name, doc, lambda m: None)[0] for name, doc in results.items()} - {""})
