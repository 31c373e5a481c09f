"""Aggregating per-sample results into ``report.json``, ``report.md`` and ``report.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from delift_ray.evaluate.metrics import paired_bootstrap

SELECTIONS = ("initial", "delift", "delift_se", "random", "full")
METRICS = ("nll", "margin", "rouge_l", "icl_nll", "icl_margin", "icl_rouge_l")
METRIC_INFO = {
    "nll": {"label": "NLL", "better": "lower", "mode": "fine-tuned", "scale": 1.0},
    "margin": {"label": "margin", "better": "higher", "mode": "fine-tuned", "scale": 1.0},
    "icl_margin": {"label": "ICL margin", "better": "higher", "mode": "in-context", "scale": 1.0},
    "rouge_l": {"label": "ROUGE-L F1", "better": "higher", "mode": "fine-tuned", "scale": 100.0},
    "icl_nll": {"label": "ICL NLL", "better": "lower", "mode": "in-context", "scale": 1.0},
    "icl_rouge_l": {"label": "ICL ROUGE-L F1", "better": "higher", "mode": "in-context", "scale": 100.0},
}
DISPLAY = {
    "initial": "initial (untuned)",
    "delift": "DELIFT",
    "delift_se": "DELIFT-SE",
    "random": "random",
    "full": "full pool",
    "self_utility": "self-utility top k",
    "hardness": "hardness top k",
    "example_utility": "example-utility top k",
    "ifd": "IFD-style ratio top k",
    "longest": "longest responses top k",
}
COMPARISONS = (("delift", "random"), ("delift", "full"), ("delift", "delift_se"))


def _finite(x: Optional[float]) -> Optional[float]:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def build_report(
    *,
    results: dict[str, list[dict]],
    train_stats: dict[str, list[dict]],
    subsets: dict[str, list[list[int]]],
    meta: dict,
    bootstrap_resamples: int = 1000,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """The report dict from per-sample metric arrays.

    ``results[selection]`` is a list (one entry per seed) of dicts mapping each metric in
    :data:`METRICS` to an array of per-held-out-sample values (missing: not evaluated).
    """
    rows = []
    per_sample_mean: dict[str, dict[str, np.ndarray]] = {}
    extras = [k for k in results if k not in SELECTIONS]  # kernel variants and baselines
    for name in ("initial", "delift", *extras, "delift_se", "random", "full"):
        slots = results.get(name) or []
        if not slots:
            continue
        mean, std, per_seed = {}, {}, []
        per_sample_mean[name] = {}
        for m in METRICS:
            arrays = [np.asarray(s[m], dtype=np.float64) for s in slots if s.get(m) is not None]
            if not arrays:
                mean[m] = std[m] = None
                continue
            seed_means = [float(a.mean()) for a in arrays]
            mean[m] = _finite(np.mean(seed_means))
            std[m] = _finite(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else None
            per_sample_mean[name][m] = np.mean(np.stack(arrays), axis=0)
        if len(slots) > 1:
            for s in slots:
                per_seed.append(
                    {
                        "seed": s.get("seed"),
                        **{m: _finite(np.mean(s[m])) if s.get(m) is not None else None for m in METRICS},
                    }
                )
        rows.append(
            {
                "selection": name,
                "n_train": 0 if name == "initial" else len(subsets[name][0]),
                "n_seeds": len(slots),
                "mean": mean,
                "std": std,
                "per_seed": per_seed or None,
                "context_tokens": {
                    "finetuned": _finite(np.mean([s["context_tokens"] for s in slots if "context_tokens" in s]))
                    if any("context_tokens" in s for s in slots)
                    else None,
                    "icl": _finite(np.mean([s["icl_context_tokens"] for s in slots if "icl_context_tokens" in s]))
                    if any("icl_context_tokens" in s for s in slots)
                    else None,
                },
                "train": train_stats.get(name) or [],
            }
        )
    by_name = {r["selection"]: r for r in rows}
    full = by_name.get("full")
    for r in rows:
        gap = {}
        for m in METRICS:
            v, f = r["mean"].get(m), (full["mean"].get(m) if full else None)
            gap[m] = _finite((v - f) / abs(f)) if v is not None and f not in (None, 0.0) else None
        r["gap_to_full"] = gap

    boot = []
    for a, b in COMPARISONS:
        if a not in per_sample_mean or b not in per_sample_mean:
            continue
        for m in METRICS:
            xa, xb = per_sample_mean[a].get(m), per_sample_mean[b].get(m)
            if xa is None or xb is None:
                continue
            res = paired_bootstrap(xa, xb, resamples=bootstrap_resamples, confidence=confidence, seed=bootstrap_seed)
            if res.within_noise:
                verdict = "within noise"
            else:
                better = (res.diff < 0) if METRIC_INFO[m]["better"] == "lower" else (res.diff > 0)
                verdict = f"{DISPLAY[a]} better" if better else f"{DISPLAY[a]} worse"
            nb = by_name[b]["n_seeds"]
            boot.append(
                {
                    "a": a,
                    "b": b,
                    "metric": m,
                    "b_label": f"{DISPLAY[b]}" + (f" (mean of {nb} seeds)" if nb > 1 else ""),
                    **res.to_dict(),
                    "verdict": verdict,
                }
            )
    return {
        "version": 1,
        **meta,
        "metrics": {m: {k: v for k, v in METRIC_INFO[m].items() if k != "scale"} for m in METRICS},
        "rows": rows,
        "bootstrap": boot,
        "vs_random": vs_random(results, resamples=bootstrap_resamples, seed=bootstrap_seed),
        "vs_random_margin": vs_random(results, resamples=bootstrap_resamples, seed=bootstrap_seed, metric="margin"),
    }


def vs_random(
    results: dict[str, list[dict]],
    *,
    resamples: int,
    seed: int,
    alpha: float = 0.05,
    eq_bound_sd: float = 0.5,
    metric: str = "nll",
) -> list[dict]:
    """Each fine-tuned arm against the random subsets on ``metric`` (the primary one is held-out
    NLL; the second, fixed up front, the held-out margin): rank p, effect size, hierarchical
    bootstrap interval, Holm across the arms, verdict (:mod:`delift_ray.evaluate.statistics`).
    ``delta`` is the arm's improvement over random, so positive is better for either
    direction. Empty with fewer than two random subsets."""
    from delift_ray.evaluate.statistics import compare, decide

    sign = 1.0 if METRIC_INFO[metric]["better"] == "lower" else -1.0  # compare() takes lower as better

    def values(slots):
        return [sign * np.asarray(s[metric], dtype=np.float64) for s in slots if s.get(metric) is not None]

    rand = values(results.get("random") or [])
    if len(rand) < 2:
        return []
    names, comps = [], []
    for name, slots in results.items():
        if name in ("initial", "random", "full"):
            continue
        arm = values(slots)
        if arm:
            names.append(name)
            comps.append(compare(np.stack(arm), np.stack(rand), resamples=resamples, seed=seed))
    decide(comps, alpha=alpha, eq_bound_sd=eq_bound_sd)
    return [{"selection": n, **c.to_dict()} for n, c in zip(names, comps)]


# --------------------------------------------------------------------------- writing


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _finite(float(obj))
    return obj


def _fmt_value(m: str, v: Optional[float], sd: Optional[float] = None) -> str:
    if v is None:
        return "—"
    scale = METRIC_INFO[m]["scale"]
    digits = 3 if scale == 1.0 else 2
    s = f"{v * scale:.{digits}f}"
    if sd is not None:
        s += f" ± {sd * scale:.{digits}f}"
    return s


def _fmt_gap(g: Optional[float]) -> str:
    if g is None:
        return ""
    return f" ({g * 100:+.1f}%)"


def _fmt_signed(m: str, v: float) -> str:
    scale = METRIC_INFO[m]["scale"]
    digits = 3 if scale == 1.0 else 2
    return f"{v * scale:+.{digits}f}"


def _vs_random_table(comparisons: list[dict], metric: str) -> list[str]:
    """The vs-random table of one metric; ``arm_nll`` holds the arm's score as compare() saw it
    (negated for a higher-is-better metric, see :func:`vs_random`)."""
    sign = 1.0 if METRIC_INFO[metric]["better"] == "lower" else -1.0
    lines = [
        f"| selection | seeds | {METRIC_INFO[metric]['label']} | Δ [95% interval] | z | rank | p rank (Holm) "
        "| p bootstrap (Holm) | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {DISPLAY.get(c['selection'], c['selection'])} | {c['n_seeds']} | {sign * c['arm_nll']:.3f} | "
            f"{c['delta']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | "
            + (f"{c['z']:+.2f}" if c.get("z") is not None else "—")
            + f" | {c['rank']} of {c['n_random'] + 1} | {c['p_rank']:.3f} ({c['p_rank_holm']:.3f}) | "
            f"{c['p_boot']:.4f} ({c['p_boot_holm']:.4f}) | **{c['verdict']}** |"
        )
    return lines


def render_markdown(report: dict) -> str:
    s = report.get("settings", {})
    lines = ["# Evaluation of the DELIFT subset", ""]
    n_pool, budget = report.get("n_pool"), report.get("budget")
    frac = f" ({100 * budget / n_pool:.1f}% of the pool)" if n_pool and budget else ""
    dropped = report.get("eval_dropped_pool_overlap") or 0
    lines += [
        f"- run: `{report.get('run_dir')}` (stage {report.get('stage')}); model: `{report.get('model')}`",
        f"- pool: {n_pool} samples; subset size: {budget}{frac}",
        f"- held-out: **{report.get('n_eval')} samples** from `{report.get('eval_data')}`"
        + (f" ({dropped} rows that also occur in the pool were dropped)" if dropped else ""),
        f"- random subsets: {len(report.get('seeds', []))} seeds ({', '.join(str(x) for x in report.get('seeds', []))})",
    ]
    if s:
        ft = (
            "LoRA r={r}, alpha={alpha}, dropout={dropout}, all linear layers".format(**s["lora"])
            if s.get("lora")
            else "full fine-tuning"
        )
        lines += [
            f"- fine-tuning: {ft}; {s.get('epochs')} epochs, lr {s.get('lr'):g}, batch {s.get('batch_size')}, "
            f"max length {s.get('max_length')}, {s.get('dtype')} on {s.get('device')}; loss on response tokens only",
            f"- generation: greedy, at most {s.get('max_new_tokens')} new tokens; in-context: the untuned model with the "
            f"{s.get('icl_examples')} most similar samples of the selection as examples (embedding cosine, "
            f"`{report.get('embedding_model')}`)",
        ]
    lines += [
        "",
        "| selection | train samples | "
        + " | ".join(METRIC_INFO[m]["label"] + (" ↓" if METRIC_INFO[m]["better"] == "lower" else " ↑") for m in METRICS)
        + " |",
        "|---|---:|" + "---:|" * len(METRICS),
    ]
    for r in report["rows"]:
        name = DISPLAY.get(r["selection"], r["selection"])
        if r["n_seeds"] > 1:
            name += f" ({r['n_seeds']} seeds)"
        cells = []
        for m in METRICS:
            sd = r["std"].get(m) if r["n_seeds"] > 1 else None
            cell = _fmt_value(m, r["mean"].get(m), sd)
            if r["selection"] != "full" and r["mean"].get(m) is not None:
                cell += _fmt_gap(r["gap_to_full"].get(m))
            cells.append(cell)
        lines.append(f"| {name} | {r['n_train']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Means over the held-out samples. NLL: mean negative log-likelihood of the reference response "
        "tokens (nats/token). ROUGE-L F1 ×100 of greedy generations against the references. "
        "random: mean ± sample std over seeds. In parentheses: relative gap to the full pool, "
        "(value − full) / |full|. ICL columns use the untuned model, so the initial row has none.",
    ]
    boot = report.get("bootstrap") or []
    if boot:
        conf = int(round(100 * boot[0]["confidence"]))
        lines += [
            "",
            f"## Differences and noise (paired bootstrap over the {report.get('n_eval')} held-out samples, "
            f"{conf}% interval, {boot[0]['resamples']} resamples)",
            "",
            "| comparison | metric | Δ = DELIFT − other | " + f"{conf}% interval | verdict |",
            "|---|---|---:|---:|---|",
        ]
        for b in boot:
            m = b["metric"]
            lines.append(
                f"| {DISPLAY[b['a']]} vs {b['b_label']} | {METRIC_INFO[m]['label']} | {_fmt_signed(m, b['diff'])} | "
                f"[{_fmt_signed(m, b['low'])}, {_fmt_signed(m, b['high'])}] | {b['verdict']} |"
            )
        lines += [
            "",
            '"within noise": the interval contains 0, so these held-out samples cannot tell the two apart. '
            "The bootstrap covers the choice of held-out samples only: DELIFT, DELIFT-SE and the full pool are "
            "trained once (one seed), so training randomness is not in the interval; the spread of the random "
            "rows over seeds shows its size.",
        ]
    vr = report.get("vs_random") or []
    if vr:
        lines += [
            "",
            f"## Against random (primary metric: held-out NLL; {vr[0]['n_random']} random subsets)",
            "",
            *_vs_random_table(vr, "nll"),
            "",
            "Δ > 0: the selection's fine-tuned model predicts the held-out responses better than the random subsets' "
            "on average; z: Δ in units of the random subsets' spread. The interval is a hierarchical bootstrap over "
            'held-out samples, training seeds and random subsets together. Verdicts: "better than random" when the '
            'Holm-adjusted bootstrap p ≤ 0.05; "no better than random" when the interval\'s upper end lies below '
            'half a standard deviation of the random subsets (the equivalence bound); otherwise "inconclusive". '
            "With R random subsets the exact rank p cannot go below 1/(R+1).",
        ]
    vm = report.get("vs_random_margin") or []
    if vm:
        lines += [
            "",
            "## Against random on the held-out margin (second metric, fixed up front)",
            "",
            *_vs_random_table(vm, "margin"),
            "",
            "The margin of a held-out item is NLL(another item's response | its prompt) − NLL(its response | its "
            "prompt): how much better the tuned model predicts the right answer than a wrong one. A subset of wrong "
            "answers can keep NLL low by teaching the format; it cannot keep the margin. Δ = selection − random "
            "here (> 0: better); the same statistics as above.",
        ]
    notes = []
    if report.get("se_selection_function"):
        notes.append(
            f"DELIFT-SE: `{report['se_selection_function']}` on the (cos+1)/2 kernel of `{report.get('embedding_model')}` "
            f"embeddings of prompt + response; it shares {report.get('delift_se_overlap')} of {budget} samples with DELIFT."
        )
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    t = report.get("timings") or {}
    if t:
        lines += ["", "## Timings", "", "| phase | seconds |", "|---|---:|"]
        lines += [f"| {k.removesuffix('_s')} | {v:.1f} |" for k, v in t.items()]
    return "\n".join(lines) + "\n"


def render_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = report["rows"]
    colors = {"initial": "#9e9e9e", "delift": "#1f77b4", "delift_se": "#17becf", "random": "#ff7f0e", "full": "#2ca02c"}
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.8))
    for ax, m in zip(np.atleast_1d(axes), METRICS):
        names, vals, errs, cols = [], [], [], []
        for r in rows:
            v = r["mean"].get(m)
            if v is None:
                continue
            sc = METRIC_INFO[m]["scale"]
            names.append(DISPLAY.get(r["selection"], r["selection"]).replace(" (untuned)", ""))
            vals.append(v * sc)
            sd = r["std"].get(m)
            errs.append(sd * sc if sd is not None else 0.0)
            cols.append(colors.get(r["selection"], "#555555"))
        x = np.arange(len(names))
        bars = ax.bar(x, vals, color=cols)
        for xi, v, e in zip(x, vals, errs):
            if e:
                ax.errorbar(xi, v, yerr=e, color="black", capsize=4, linewidth=1)
        digits = 3 if METRIC_INFO[m]["scale"] == 1.0 else 1
        for b, v, e in zip(bars, vals, errs):
            ax.annotate(
                f"{v:.{digits}f}",
                (b.get_x() + b.get_width() / 2, v + e),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        arrow = "lower is better" if METRIC_INFO[m]["better"] == "lower" else "higher is better"
        ax.set_title(f"{METRIC_INFO[m]['label']} ({arrow})", fontsize=9)
        if vals:
            lo = min(v - e for v, e in zip(vals, errs))
            hi = max(v + e for v, e in zip(vals, errs))
            pad = (hi - lo) * 0.4 or abs(hi) * 0.05 or 1.0
            bottom = 0.0 if lo - pad <= 0 <= lo else lo - pad
            ax.set_ylim(bottom, hi + pad)
            if bottom > 0:
                ax.set_ylabel("axis does not start at 0", fontsize=7)
    fig.suptitle(
        f"{report.get('n_eval')} held-out samples; subset {report.get('budget')} of {report.get('n_pool')}; "
        f"random: mean ± std over {len(report.get('seeds', []))} seeds",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _atomic_write(path: Path, text: str) -> None:
    import pyarrow.fs as pafs

    from delift_ray.storage import atomic_write

    atomic_write(pafs.LocalFileSystem(), str(path.absolute()), text.encode("utf-8"))


def write_report(
    report: dict, out: Path, *, generations: Optional[list[dict]] = None, eval_set=None
) -> dict[str, Path]:
    """Write report.json, report.md, report.png (and generations.jsonl) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean = _clean(report)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    _atomic_write(paths["json"], json.dumps(clean, indent=2, ensure_ascii=False) + "\n")
    _atomic_write(paths["md"], render_markdown(clean))
    render_plot(clean, paths["png"])
    if generations is not None:
        lines = []
        for g in generations:
            rec = dict(g)
            if eval_set is not None:
                k = rec["index"]
                rec["prompt"] = eval_set.prompts[k]
                rec["reference"] = eval_set.responses[k]
            lines.append(json.dumps(_clean(rec), ensure_ascii=False))
        paths["generations"] = out / "generations.jsonl"
        _atomic_write(paths["generations"], "\n".join(lines) + "\n")
    return paths
