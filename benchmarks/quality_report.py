"""The quality study's summary, and the generated blocks of its page, from its unit JSON files.

``summarise`` turns the stored units (benchmarks/results/quality/units/*.json) into the
summary that benchmarks/quality_study.py writes to benchmarks/results/quality_study.json.
docs/quality.md is written by hand; ``render_block`` renders each of its
``<!-- generated:quality:NAME -->`` blocks from that summary (docs/generate.py calls it for
every page), and ``write_docs`` fills them in place and draws docs/quality.png. Every number
on the page comes from these files.

    .venv/bin/python -m benchmarks.quality_study --report   # the summary, the blocks and the plot
    .venv/bin/python docs/generate.py                       # the blocks, from the committed summary
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from delift_ray.evaluate.statistics import compare, decide, hierarchical_bootstrap

RESAMPLES = 2000
EQ_BOUND_SD = 0.5
ALPHA = 0.05


# --------------------------------------------------------------------------- noise signals


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties count half."""
    from scipy.stats import rankdata

    s = np.asarray(score, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    ok = np.isfinite(s)
    s, pos = s[ok], pos[ok]
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if not n1 or not n0:
        return float("nan")
    r = rankdata(s)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def noise_signals(uf: np.ndarray, d_base: np.ndarray, swapped: np.ndarray) -> dict:
    """Per-sample scores computed from stored utilities only, and how well each flags a
    swapped sample (AUROC, 0.5 = no signal; a score where swapped samples rank HIGH)."""
    n = uf.shape[0]
    off = ~np.eye(n, dtype=bool)
    U = np.where(off, uf, np.nan)
    diag = np.diag(uf).astype(np.float64)
    helped_mean = np.nanmean(U, axis=1)  # how much other examples help sample i
    helped_max = np.nanmax(U, axis=1)
    as_example = np.nanmean(U, axis=0)  # how much sample j helps the others
    top5 = np.sort(np.nan_to_num(U, nan=-np.inf), axis=1)[:, -5:].mean(axis=1)
    # i's no-example distance against its 5 most helpful examples' own distances.
    nb = np.argsort(np.nan_to_num(U, nan=-np.inf), axis=1)[:, -5:]
    rel_likelihood = d_base - d_base[nb].mean(axis=1)
    signals = {
        "low self-utility UF(i<-i)": -diag,
        "high d(i, no example) (hardness)": d_base,
        "low mean UF(i<-j) over j != i (no example helps i)": -helped_mean,
        "low max UF(i<-j) over j != i": -helped_max,
        "low mean of the 5 best UF(i<-j)": -top5,
        "high mean UF(j<-i) as an example": as_example,
        "low mean UF(j<-i) as an example": -as_example,
        "d(i, no example) minus its 5 best helpers' d": rel_likelihood,
        "self-utility relative to d: -UF(i<-i)/d(i)": -diag / np.maximum(d_base, 1e-9),
    }
    return {name: round(auroc(s, swapped), 4) for name, s in signals.items()}


# --------------------------------------------------------------------------- summary


def _group(units: dict[str, dict]):
    train = defaultdict(lambda: defaultdict(dict))  # (pool, budget) -> arm -> seed -> results
    other = {}
    for name, doc in units.items():
        res = doc["results"]
        if name.startswith("train-"):
            train[(res["pool"], float(res["budget"]))][res["arm"]][int(res["seed"])] = {**res, "_doc": doc}
        else:
            other[name] = doc
    return train, other


def noisy_selections(sel: dict | None) -> dict | None:
    """Budget -> the share of swapped samples in each arm's subset of the noisy pool (no training)."""
    if not sel:
        return None
    out = {}
    for b, v in sel["budgets"].items():
        r = np.array(v["random_swapped_share"] or [np.nan])
        out[b] = {
            "k": v["k"],
            "arms": v["swapped_share"],
            "random": {"mean": float(r.mean()), "min": float(r.min()), "max": float(r.max()), "n": int(r.size)},
        }
    return out


SIMPLE_RANKINGS = ("self_utility", "hardness", "example_utility")


def rank_overlaps(sel: dict | None) -> dict | None:
    """Budget -> how many of each arm's k picks the simplest rankings (``self_utility``,
    ``hardness``, ``example_utility``) also pick, and what chance gives (k^2 / n). An arm that shares most of its
    picks with one of them is, in effect, that ranking."""
    if not sel:
        return None
    out = {}
    for b, v in sel["budgets"].items():
        ranks = {r: set(v["arms"][r]) for r in SIMPLE_RANKINGS if r in v["arms"]}
        out[b] = {
            "k": v["k"],
            "chance": v["k"] ** 2 / sel["n"],
            "arms": {
                a: {r: len(set(idx) & ranked) for r, ranked in ranks.items()}
                for a, idx in v["arms"].items()
                if a not in ranks
            },
            "same_subset": same_subsets(v["arms"]),
        }
    return out


def same_subsets(arms: dict[str, list[int]]) -> list[list[str]]:
    """Groups of arms that picked the same set (in any order): the study trains such a set once per seed."""
    groups: dict[frozenset, list[str]] = {}
    for arm, idx in arms.items():
        groups.setdefault(frozenset(idx), []).append(arm)
    return [g for g in groups.values() if len(g) > 1]


def simplest_ranking(arm: str) -> str | None:
    """The ranking a kernel-variant arm could reduce to: with the diagonal kept, facility
    location's picks track UF(i <- i); with it dropped, drop-minmax's first pick is the top
    example_utility exactly (drop-clip's ranks by the mean of max(UF, 0), close to it but not
    the same). None for an arm that is not a kernel variant."""
    diagonal, _, scaling = arm.partition(":")[2].partition("-")
    if scaling not in ("minmax", "clip"):
        return None
    return {"keep": "self_utility", "drop": "example_utility"}.get(diagonal)


def arm_vs_reference(arms: dict[str, dict[int, dict]], arm: str, ref: str) -> dict | None:
    """NLL(ref) - NLL(arm) (> 0: ``arm`` is better) with a hierarchical bootstrap interval over
    held-out items and both arms' training seeds; None until both have a trained seed."""
    if not arms.get(arm) or not arms.get(ref):
        return None
    X = np.array([arms[arm][s]["nll"] for s in sorted(arms[arm])])
    Xr = np.array([arms[ref][s]["nll"] for s in sorted(arms[ref])])
    lo, hi = np.quantile(hierarchical_bootstrap(X, Xr, resamples=RESAMPLES, seed=0), [0.025, 0.975])
    return {
        "arm": arm,
        "reference": ref,
        "seeds": [len(X), len(Xr)],
        "delta": float(Xr.mean() - X.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
    }


def _cell(pool: str, budget: float) -> str:
    return f"{pool} {100 * budget:g}%"


PAPER_KERNEL = "delift:keep-minmax"  # the paper's kernel, and the config's default while the study ran


def config_default_options() -> dict[str, str]:
    """``kernel.diagonal`` and ``kernel.scaling`` as ``delift-ray select`` sets them when the user
    sets none (delift_ray/config.py)."""
    from delift_ray.config import KernelConfig

    return {f: KernelConfig.model_fields[f].default for f in ("diagonal", "scaling")}


def config_default_kernel() -> str:
    """The arm name of the kernel ``delift-ray select`` uses when the user sets none."""
    o = config_default_options()
    return f"delift:{o['diagonal']}-{o['scaling']}"


def kernel_evidence(
    vs_keep: list[dict],
    vs_each_other: list[dict],
    budgets: list[float],
    final: set[str],
    variants: list[str],
    pools: set[str],
) -> dict:
    """Section 5 of the issue: "whichever kernel variant is best, or no worse than the others,
    becomes the default". A variant is *worse* than another at a pool and budget when the 95%
    interval of their NLL difference lies wholly on the other's side. Candidates: variants worse
    than no other variant at any budget of any pool; among them the largest mean delta against
    ``keep-minmax`` over every cell, then the fewest options changed from it. No candidate: the
    default falls back to ``keep-minmax``. ``final``: the pools whose kernel-variant units are
    all in (the rule compares only those units, so the rest of a pool cannot change it);
    ``default`` is None until every planned pool is in it, and a variant worse somewhere on
    such a pool is out for good."""
    variants = [f"delift:{v.strip()}" for v in variants if v.strip()]
    flip = {"better": "worse", "worse": "better", "tie": "tie"}
    outcome: dict[tuple, str] = {}  # (arm, other, pool, budget) -> arm's standing against other
    for c in vs_keep + vs_each_other:
        if c["arm"] in variants and c["reference"] in variants:
            s = "better" if c["ci_low"] > 0 else "worse" if c["ci_high"] < 0 else "tie"
            outcome[(c["arm"], c["reference"], c["pool"], c["budget"])] = s
            outcome[(c["reference"], c["arm"], c["pool"], c["budget"])] = flip[s]
    delta = {(c["arm"], c["pool"], c["budget"]): c["delta"] for c in vs_keep}
    delta.update({(PAPER_KERNEL, pool, b): 0.0 for pool in pools for b in budgets})
    cols = [(pool, b) for pool in ("clean", "noisy") if pool in pools for b in budgets]

    def mean_delta(arm: str, which: set[str]) -> Optional[float]:
        ds = [delta[(arm, pool, b)] for pool, b in cols if pool in which and (arm, pool, b) in delta]
        return float(np.mean(ds)) if ds else None

    per: dict[str, dict] = {}
    for arm in variants:
        cells = {}
        for pool, b in cols:
            against = [outcome.get((arm, other, pool, b)) for other in variants if other != arm]
            cells[_cell(pool, b)] = "worse" if "worse" in against else "not yet" if None in against else "no worse"
        worse_on = {key.split()[0] for key, s in cells.items() if s == "worse"}
        per[arm] = {
            "cells": cells,
            "status": "out" if worse_on else "pending" if "not yet" in cells.values() else "candidate",
            "final": bool(worse_on & final) or pools <= final,
            "mean_delta_vs_keep_minmax": mean_delta(arm, pools),
        }
    changed = {a: sum(x != y for x, y in zip(a.split(":", 1)[1].split("-"), ("keep", "minmax"))) for a in per}
    candidates = sorted(
        (a for a in per if per[a]["status"] == "candidate"),
        key=lambda a: (-(per[a]["mean_delta_vs_keep_minmax"] or 0.0), changed[a]),
    )
    # What the rule this page applied before would pick (a variant must beat keep-minmax at every
    # clean budget and not lose to it at any noisy one; ties: the larger clean mean delta, then
    # the fewest options changed); shown for the record, not used.
    strict = sorted(
        (
            a
            for a in per
            if a != PAPER_KERNEL
            and all(outcome.get((a, PAPER_KERNEL, "clean", b)) == "better" for b in budgets)
            and not any(outcome.get((a, PAPER_KERNEL, "noisy", b)) == "worse" for b in budgets)
        ),
        key=lambda a: (-(mean_delta(a, {"clean"}) or 0.0), changed[a]),
    )
    strict_decided = "clean" in final and (not strict or pools <= final)
    comparisons = (len(variants) - 1) * len(cols)
    return {
        "variants": per,
        "default": (candidates[0] if candidates else PAPER_KERNEL) if pools <= final else None,
        "config_default": config_default_kernel(),
        "comparisons_per_variant": comparisons,
        # Each comparison calls an equal variant worse with chance 0.025; independence assumed.
        "chance_out_if_equal": round(1 - 0.975**comparisons, 3),
        "stricter_rule_default": (strict[0] if strict else PAPER_KERNEL) if strict_decided else None,
    }


def twin_arms(arms: dict[str, dict[int, dict]]) -> dict[str, str]:
    """Arm -> the arm it copies: every one of its units was not trained because that arm's
    unit of the same seed had the same subset (``same_subset_as``). Such an arm is the same
    evidence, so it takes no separate place in Holm's family."""
    arm_of = {r["_doc"]["benchmark"]: a for a, runs in arms.items() for r in runs.values()}
    out = {}
    for arm, runs in arms.items():
        sources = {arm_of.get(r.get("same_subset_as")) for r in runs.values()}
        if runs and len(sources) == 1 and None not in sources:
            out[arm] = sources.pop()
    return out


def summarise(units: dict[str, dict], *, args: dict, meta: dict, total: int, planned: dict[str, list[str]]) -> dict:
    """``planned``: pool -> the names of its training units in the design. A pool's verdicts are
    interim until every one of them is stored: Holm's family is every arm x budget of the pool."""
    train, other = _group(units)
    final = {pool for pool, names in planned.items() if all(n in units for n in names)}
    variant_tags = [f"-delift_{v.strip()}-s" for v in str(args["variants"]).split(",") if v.strip()]
    kernel_final = {
        pool for pool, names in planned.items() if all(n in units for n in names if any(t in n for t in variant_tags))
    }
    rows: list[dict] = []
    families: dict[str, list] = defaultdict(list)
    twin_rows = []
    for (pool, budget), arms in sorted(train.items(), key=lambda kv: (kv[0][0] != "clean", -kv[0][1])):
        twins = twin_arms(arms)
        rand = arms.get("random", {})
        Y = np.array([rand[s]["nll"] for s in sorted(rand)]) if rand else None
        rshare = [rand[s]["swapped_share"] for s in sorted(rand) if rand[s].get("swapped_share") is not None]
        rows.append(
            {
                "pool": pool,
                "budget": budget,
                "arm": "random",
                "seeds": len(rand),
                "nll": float(Y.mean()) if Y is not None else None,
                "nll_sd": float(Y.mean(axis=1).std(ddof=1)) if Y is not None and len(Y) > 1 else None,
                "swapped_share": float(np.mean(rshare)) if rshare else None,
            }
        )
        for arm in sorted(a for a in arms if a != "random"):
            runs = arms[arm]
            X = np.array([runs[s]["nll"] for s in sorted(runs)])
            share = [runs[s]["swapped_share"] for s in sorted(runs) if runs[s].get("swapped_share") is not None]
            row = {
                "pool": pool,
                "budget": budget,
                "arm": arm,
                "seeds": len(runs),
                "interim": pool not in final,
                "nll": float(X.mean()),
                "nll_sd": float(X.mean(axis=1).std(ddof=1)) if len(X) > 1 else None,
                "swapped_share": float(np.mean(share)) if share else None,
                "comparison": None,
            }
            if arm in twins:
                row["same_subset_as"] = twins[arm]
                twin_rows.append(row)
            elif Y is not None and len(Y) >= 2:
                c = compare(X, Y, resamples=RESAMPLES, seed=0)
                row["comparison"] = c
                families[pool].append(c)
            rows.append(row)
    for comps in families.values():
        decide(comps, alpha=ALPHA, eq_bound_sd=EQ_BOUND_SD)
    for row in twin_rows:
        row["comparison"] = next(
            (
                r["comparison"]
                for r in rows
                if (r["pool"], r["budget"], r["arm"]) == (row["pool"], row["budget"], row["same_subset_as"])
            ),
            None,
        )
    variants_vs_keep, variants_vs_each_other, variants_vs_ranking = [], [], []
    kernel_variants = [f"delift:{v.strip()}" for v in str(args["variants"]).split(",") if v.strip()]
    for (pool, budget), arms in train.items():
        for i, ref in enumerate(kernel_variants):
            for arm in kernel_variants[i + 1 :]:
                if PAPER_KERNEL not in (ref, arm) and (d := arm_vs_reference(arms, arm, ref)) is not None:
                    variants_vs_each_other.append({"pool": pool, "budget": budget, **d})
        for arm in sorted(a for a in arms if a.startswith("delift:") and a != PAPER_KERNEL):
            if (d := arm_vs_reference(arms, arm, PAPER_KERNEL)) is not None:
                variants_vs_keep.append({"pool": pool, "budget": budget, **d})
        for arm in sorted(a for a in arms if a.startswith("delift:") and simplest_ranking(a)):
            if (d := arm_vs_reference(arms, arm, simplest_ranking(arm))) is not None:
                variants_vs_ranking.append({"pool": pool, "budget": budget, **d})
    for row in rows:
        if row.get("comparison") is not None:
            row["comparison"] = row["comparison"].to_dict()

    done_train = sum(len(runs) for arms in train.values() for runs in arms.values())
    walls = [r["wall_s"] for arms in train.values() for runs in arms.values() for r in runs.values() if "wall_s" in r]
    fixed = ("score-clean", "score-noisy", "selections-clean", "selections-noisy", "eval-initial")
    n_done = done_train + sum(1 for k in other if k in fixed)
    overlaps = {
        pool: ov
        for pool in ("clean", "noisy")
        if (ov := rank_overlaps(other.get(f"selections-{pool}", {}).get("results")))
    }
    # Units the study will copy from a twin instead of training.
    twins_left = sum(
        (len(g) - 1) * int(args["train_seeds"])
        for per in overlaps.values()
        for v in per.values()
        for g in v["same_subset"]
    ) - sum(1 for u in units.values() if "same_subset_as" in u["results"])
    remaining_train = total - len(fixed) - done_train - twins_left
    scoring = {k: other[k]["results"] for k in ("score-clean", "score-noisy") if k in other}
    eta_s = float(np.mean(walls)) * remaining_train if walls else None
    if eta_s is not None and "score-noisy" not in scoring and "score-clean" in scoring:
        eta_s += 0.75 * scoring["score-clean"]["wall_s"]  # 3/4 of the noisy pairs are new
    machine = next((d.get("machine") for d in units.values() if d.get("machine")), None)
    if machine is None:
        from benchmarks.results import machine as this_machine

        machine = this_machine()
    summary = {
        "design": {
            k: args.get(k)
            for k in (
                "n_pool",
                "n_eval",
                "max_tokens",
                "budgets",
                "randoms",
                "train_seeds",
                "variants",
                "steps",
                "batch_size",
                "lr",
                "max_length",
                "dtype",
                "noise_share",
                "min_prompt_gain",
            )
        },
        "statistics": {
            "primary_metric": "held-out response NLL (nats/token, mean over items)",
            "alpha": ALPHA,
            "equivalence_bound_sd": EQ_BOUND_SD,
            "bootstrap_resamples": RESAMPLES,
            "holm_family": "every arm x budget of one pool",
        },
        "progress": {
            "units_done": n_done,
            "units_total": total,
            "train_wall_s_mean": round(float(np.mean(walls)), 1) if walls else None,
            "wall_s_total": round(
                sum(walls)
                + sum(s.get("wall_s", 0) for s in scoring.values())
                + other.get("eval-initial", {}).get("results", {}).get("wall_s", 0),
                1,
            ),
            "eta_s": round(eta_s) if eta_s is not None else None,
            "eta_counts_scoring": "score-clean" in scoring,
        },
        "scoring": {
            k: {
                "wall_s": v["wall_s"],
                "pairs_per_s": v["timings"].get("pairs_per_s"),
                "pairs_scored": v["counts"].get("pairs_scored"),
                "pairs_reused": v["counts"].get("pairs_reused"),
            }
            for k, v in scoring.items()
        },
        "initial_nll": other.get("eval-initial", {}).get("results", {}).get("nll_mean"),
        "rechecks": [
            {**doc["results"], "date": doc.get("date")}
            for name, doc in sorted(other.items())
            if name.startswith("recheck-")
        ],
        "noisy_selections": noisy_selections(other.get("selections-noisy", {}).get("results")),
        "noisy_default_prompt_gain": other.get("selections-noisy-default-mpg", {}).get("results"),
        "rank_overlaps": overlaps,
        "machine": machine,
        "pools": sorted(planned),
        "rows": rows,
        "variants_vs_keep_minmax": variants_vs_keep,
        "variants_vs_simplest_ranking": variants_vs_ranking,
        "variants_vs_each_other": variants_vs_each_other,
        "kernel_evidence": kernel_evidence(
            variants_vs_keep,
            variants_vs_each_other,
            [float(b) for b in str(args["budgets"]).split(",")],
            kernel_final,
            str(args["variants"]).split(","),
            set(planned),
        ),
    }
    npz = Path(__file__).resolve().parent / "results" / "quality" / "score-noisy_utilities.npz"
    if npz.exists() and meta.get("swapped_ids"):
        z = np.load(npz)
        ids = [str(x) for x in z["ids"]]
        swapped = np.array([i in set(meta["swapped_ids"]) for i in ids])
        summary["noise_signals"] = {
            "n": len(ids),
            "swapped": int(swapped.sum()),
            "auroc": noise_signals(z["uf"], z["d_base"], swapped),
        }
    return summary


# --------------------------------------------------------------------------- docs
#
# docs/quality.md is written by hand. Everything on it computed from the study's results sits in
# blocks, each between ``<!-- generated:quality:NAME -->`` and ``<!-- /generated:quality:NAME -->``,
# whose body ``render_block(NAME, summary, probe)`` renders: ``summary`` is the "results" of
# benchmarks/results/quality_study.json, ``probe`` the document benchmarks/results/noise_probe.json.
# docs/generate.py renders them with every other page's blocks (``--check`` compares them);
# ``write_docs`` fills them in place and draws docs/quality.png after a study run.

SUMMARY_JSON = "benchmarks/results/quality_study.json"
PROBE_JSON = "benchmarks/results/noise_probe.json"
BLOCK = re.compile(
    r"(<!-- generated:quality:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /generated:quality:(?P=name) -->)", re.S
)
NOT_YET_NOISY = "Not yet measured: the noisy pool's utilities are scored once the clean pool's budgets are in."
NO_VARIANT = "No variant has been trained yet."
NO_PROBE = f"Not measured: `{PROBE_JSON}` is missing (`python -m benchmarks.noise_probe` writes it)."


def _f(x: Optional[float], nd: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "--"
    return f"{x:.{nd}f}"


def _pct(x: Optional[float]) -> str:
    return "--" if x is None else f"{100 * x:.0f}%"


def plot_panels(summary: dict) -> dict[tuple[str, float], list[dict]]:
    """(pool, budget) -> its rows, for each panel of docs/quality.png: a panel needs at least one
    arm compared with random (an empty panel would read as "no effect")."""
    groups = defaultdict(list)
    for r in summary["rows"]:
        groups[(r["pool"], r["budget"])].append(r)
    return {k: rows for k, rows in groups.items() if any(r["arm"] != "random" and r.get("comparison") for r in rows)}


def render_plot(summary: dict, path: Path) -> bool:
    """docs/quality.png: delta and interval per arm; removes a stale plot when there is nothing to
    draw. Without matplotlib it leaves the file as it is and returns False (the page's results
    block links the plot whenever ``plot_panels`` has a panel, whatever is installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    path.unlink(missing_ok=True)
    groups = plot_panels(summary)
    if not groups:
        return False
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, ((pool, budget), rows) in zip(
        axes[0], sorted(groups.items(), key=lambda kv: (kv[0][0] != "clean", -kv[0][1]))
    ):
        arms = [r for r in rows if r["arm"] != "random" and r.get("comparison") and not r.get("same_subset_as")]
        rnd = next((r for r in rows if r["arm"] == "random"), None)
        for y, r in enumerate(arms):
            c = r["comparison"]
            ax.errorbar(
                [c["delta"]], [y], xerr=[[c["delta"] - c["ci_low"]], [c["ci_high"] - c["delta"]]], fmt="o", capsize=3
            )
        ax.axvline(0, color="k", lw=0.8)
        if rnd and rnd.get("nll_sd"):
            ax.axvspan(-rnd["nll_sd"], rnd["nll_sd"], color="0.9", zorder=0)
        ax.set_yticks(range(len(arms)), [r["arm"] for r in arms])
        ax.set_xlabel("NLL(random) - NLL(arm), nats (> 0: arm better)")
        ax.set_title(f"{pool} pool, budget {int(round(budget * 100))}%")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def any_interim(summary: dict) -> bool:
    """Whether a verdict on the page can still move (a pool's units are not all in)."""
    return any(r.get("interim") for r in summary.get("rows", []))


def _interval(c: dict) -> str:
    return f"{c['delta']:+.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]"


def _tally(outcomes: list[tuple[str, str]], order: tuple[str, ...]) -> str:
    """'better than random in 2 of 4 (clean 15%, clean 5%); ...' from (cell, outcome) pairs."""
    parts = []
    for outcome in order:
        cells = [cell for cell, o in outcomes if o == outcome]
        if cells:
            parts.append(f"{outcome} in {len(cells)} of {len(outcomes)} ({', '.join(cells)})")
    return "; ".join(parts)


def answer_lines(summary: dict) -> list[str]:
    """The page's answer (the body of its "Answer" section) in a few lines, read from the verdicts
    below it: the kernel the evidence supports and the paper's against random, the former against
    the simplest ranking it could reduce to, and what each keeps of the noisy pool's swapped
    samples. Empty until the default is decided."""
    ke = summary.get("kernel_evidence") or {}
    default = ke.get("default")
    if not default:
        return []
    verdicts = ("better than random", "no better than random", "inconclusive")
    rows = sorted((r for r in summary.get("rows", []) if r.get("comparison")), key=lambda r: (r["pool"], -r["budget"]))
    pr = summary.get("progress") or {}
    complete = not any_interim(summary) and pr.get("units_done", 0) >= pr.get("units_total", 0)
    L = [
        "Every unit is in; each line below is read from the tables that follow (95% intervals, nats/token)."
        if complete
        else "Interim: some units are not in, so these can still move.",
        "",
    ]

    def against_random(arm: str) -> str:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            return "no comparison with random yet"
        tally = _tally([(_cell(r["pool"], r["budget"]), r["comparison"]["verdict"]) for r in mine], verdicts)
        return tally + ": " + ", ".join(f"{_cell(r['pool'], r['budget'])} {_interval(r['comparison'])}" for r in mine)

    applied = ke.get("config_default") == default
    name = f"`{default.split(':', 1)[1]}`"
    L.append(
        f'* {name}, the kernel the evidence supports ("Which kernel?"; '
        f"{'the config' if applied else '**not yet** the config'}'s default), against random subsets of the same "
        f"size: {against_random(default)}."
    )
    if default != PAPER_KERNEL and any(r["arm"] == PAPER_KERNEL for r in rows):
        L.append(f"* The paper's kernel, `{PAPER_KERNEL.split(':', 1)[1]}`: {against_random(PAPER_KERNEL)}.")
    for arm in sorted({r["arm"] for r in rows if r["arm"].startswith("delift:min-prompt-gain")}):
        L.append(
            f"* `{arm.split(':', 1)[1]}` (`selection.min_prompt_gain`, trained on `{PAPER_KERNEL.split(':', 1)[1]}`, "
            f"the default when the study ran): {against_random(arm)}."
        )
    simplest = sorted(
        (v for v in summary.get("variants_vs_simplest_ranking") or [] if v["arm"] == default),
        key=lambda v: (v["pool"], -v["budget"]),
    )
    if simplest:
        ranking = simplest[0]["reference"]
        outcomes = [
            (
                _cell(v["pool"], v["budget"]),
                "the greedy better"
                if v["ci_low"] > 0
                else f"`{ranking}` better"
                if v["ci_high"] < 0
                else "inconclusive",
            )
            for v in simplest
        ]
        L.append(
            f"* {name} against `{ranking}`, the simplest ranking it could reduce to: "
            + _tally(outcomes, ("the greedy better", f"`{ranking}` better", "inconclusive"))
            + ": "
            + ", ".join(f"{_cell(v['pool'], v['budget'])} {_interval(v)}" for v in simplest)
            + "."
        )
    ns = summary.get("noisy_selections") or {}
    budgets = sorted(ns, key=float, reverse=True)
    if budgets and all(ns[b].get("random") for b in budgets):

        def shares(arm: str) -> str:
            return " / ".join(_pct(ns[b]["arms"].get(arm)) for b in budgets)

        sizes = " / ".join(f"{100 * float(b):g}%" for b in budgets)
        others = [a for a in ns[budgets[0]]["arms"] if a == "example_utility" or a.startswith("delift:min-prompt-gain")]
        line = (
            f"* The noisy pool (half its responses swapped), share of swapped samples kept at {sizes}: {name} "
            f"{shares(default)}, random {' / '.join(_pct(ns[b]['random']['mean']) for b in budgets)}"
            + "".join(f", `{a.split(':', 1)[-1]}` {shares(a)}" for a in others)
        )
        dpg = summary.get("noisy_default_prompt_gain") or {}
        if dpg.get("kernel") == default.split(":", 1)[1] and all(b in dpg.get("budgets", {}) for b in budgets):
            line += (
                f"; {name} with `selection.min_prompt_gain: {dpg['min_prompt_gain']:g}` "
                + " / ".join(_pct(dpg["budgets"][b]["swapped_share"]) for b in budgets)
                + " (selection only, not trained)"
            )
        line += "."
        if all(ns[b]["arms"].get(default, 0) >= ns[b]["random"]["mean"] for b in budgets):
            line += f" Without that option, {name} keeps at least random's share of swapped samples at every budget."
        L.append(line)
    d = summary.get("design", {})
    L += [
        f"* Scale: a 135M-parameter model, a pool of {d.get('n_pool')} samples, {d.get('steps')} LoRA steps per "
        "arm. The effects are small in absolute terms; whether they hold for larger models and pools was not "
        "measured here.",
        "",
    ]
    return L


# --------------------------------------------------------------------------- the page's blocks
# Each returns the lines of one block of docs/quality.md; the prose around it is in the page.


def _status(summary: dict, probe: Optional[dict]) -> list[str]:
    pr = summary["progress"]
    m = summary.get("machine") or {}
    complete = pr["units_done"] >= pr["units_total"]
    L = [
        f"**{'Complete' if complete else 'In progress'}: {pr['units_done']} of {pr['units_total']} units stored.** "
        + (
            ""
            if complete
            else (
                f"Estimated time to finish at the measured pace: {pr['eta_s'] / 3600:.1f} h"
                + ("" if pr.get("eta_counts_scoring") else " of training, plus the scoring runs still to finish")
                + ". "
                if pr.get("eta_s")
                else ""
            )
        )
        + f"Compute{'' if complete else ' so far'}: {pr['wall_s_total'] / 3600:.2f} h"
        + (
            f" (a training unit, fine-tuning plus held-out NLL, takes {pr['train_wall_s_mean']:.0f} s on average)"
            if pr.get("train_wall_s_mean")
            else ""
        )
        + ".",
        "",
        f"Machine: {m.get('cpu') or '?'}, {m.get('cpus') or '?'} CPUs, {m.get('memory_gib') or '?'} GiB, "
        f"accelerator: {m.get('accelerator') or 'none'}; the study runs at `nice 19`, so its wall "
        "times are upper bounds.",
        "",
    ]
    for rc in summary.get("rechecks") or []:
        L.append(
            f"* Recheck ({(rc.get('date') or '')[:10]}, `--recheck {rc['unit']}`): trained again, the unit's "
            f"{rc['items']} held-out NLLs came out "
            + (
                "identical, bit for bit"
                if rc["identical"]
                else f"different (max |difference| {rc['max_abs_diff']:.3g}); arms with the same subset are then not "
                "exact twins"
            )
            + "."
        )
    for k, v in summary.get("scoring", {}).items():
        L.append(
            f"* `{k}`: {v['pairs_scored']} pairs scored, {v['pairs_reused']} reused, {v['wall_s'] / 60:.0f} min "
            f"({v['pairs_per_s']} pairs/s)."
        )
    if summary.get("initial_nll") is not None:
        L.append(f"* Untuned model: held-out NLL {summary['initial_nll']:.4f}.")
    return L


def _answer(summary: dict, probe: Optional[dict]) -> list[str]:
    return answer_lines(summary) or [
        'Not decided yet: the answer is read once the evidence supports a default kernel ("Which kernel?" below).'
    ]


def _design(summary: dict, probe: Optional[dict]) -> list[str]:
    d, st = summary["design"], summary["statistics"]
    return [
        f"* Pool: {d['n_pool']} ShareGPT samples (prompt + response at most {d['max_tokens']} tokens), scored densely "
        f"({d['n_pool']}^2 pairs). Held-out: {d['n_eval']} samples, disjoint from the pool.",
        f"* Budgets: {', '.join(f'{100 * float(b):g}%' for b in str(d['budgets']).split(','))} of the pool. "
        f"Random subsets: {d['randoms']} per budget (subset r drawn and trained with seed r). "
        f"Deterministic arms: {d['train_seeds']} training seeds each.",
        f"* Arms: DELIFT (facility location) with kernel variants `{d['variants']}` (`kernel.diagonal`-`kernel.scaling`), "
        "`self_utility` (top k by UF(i <- i)), `hardness` (top k by d(i, no example)), `example_utility` (top k by "
        "the mean UF(i <- j) over i != j, how much j helps the others as an example: the first-pick "
        "score of the drop-minmax variant), random"
        + (
            f", and `delift:min-prompt-gain-{d['min_prompt_gain']:g}`: the job's selection "
            "(`delift-ray select`, kernel keep-minmax, the default when the study ran) with "
            f"`selection.min_prompt_gain: {d['min_prompt_gain']:g}`, so a sample "
            "its own prompt barely helps is never picked (the value the noise probe below pointed to; the "
            "probe's 48 samples are the first 48 of this pool, with another swap)"
            if d.get("min_prompt_gain") is not None
            else ""
        )
        + ".",
        f"* Training: LoRA (r 8, alpha 32, all linear layers), {d['steps']} optimiser steps of batch {d['batch_size']} "
        f"for every arm and budget, lr {d['lr']}, sequences cut to {d['max_length']} tokens, {d['dtype']}.",
        f"* Primary metric, fixed before the runs: {st['primary_metric']}.",
        f"* Noisy pool: the same pool with {_pct(d['noise_share'])} of its samples' responses swapped among themselves.",
    ]


def _statistics(summary: dict, probe: Optional[dict]) -> list[str]:
    st = summary["statistics"]
    return [
        "For each arm and budget (see `delift_ray/evaluate/statistics.py`): the exact one-sided rank p of the arm's "
        "NLL among the random subsets' NLLs; the effect size delta = mean NLL(random) - NLL(arm) and z = delta / "
        f"sd(random); a hierarchical bootstrap ({st['bootstrap_resamples']} resamples of held-out items, training "
        "seeds and random subsets together) giving the 95% interval of delta and a one-sided p; Holm across "
        f"{st['holm_family']}. Verdict: **better than random** when the Holm-adjusted bootstrap p <= {st['alpha']}; "
        f"**no better than random** when the interval's upper end is below the equivalence bound of "
        f"{st['equivalence_bound_sd']} sd of the random subsets' NLL (any advantage is smaller than that); else "
        "**inconclusive**. With R random subsets the rank p cannot go below 1/(R+1) (0.048 for R = 20), so it "
        "cannot pass Holm for several tests; it is shown as the assumption-free check next to the bootstrap.",
    ]


def _results(summary: dict, probe: Optional[dict]) -> list[str]:
    L = []
    if plot_panels(summary):
        L += [
            "![delta with 95% intervals per arm](quality.png)",
            "",
            "Each arm's delta with its 95% hierarchical bootstrap interval; grey band: one standard deviation of the "
            "random subsets' NLL either side of 0.",
            "",
        ]
    hdr = (
        "| pool | budget | arm | seeds | NLL | delta vs random [95% CI] | z | rank | p rank (Holm) | p boot (Holm) | "
        "swapped share | verdict |"
    )
    L += [hdr, "|" + "---|" * 12]
    for r in summary["rows"]:
        c = r.get("comparison")
        b = f"{int(round(r['budget'] * 100))}%"
        nll = _f(r["nll"]) + (f" ± {_f(r['nll_sd'])}" if r.get("nll_sd") is not None else "")
        share = _pct(r.get("swapped_share")) if r["pool"] == "noisy" else ""
        if c:
            L.append(
                f"| {r['pool']} | {b} | {r['arm']} | {r['seeds']} | {nll} | {_f(c['delta'])} [{_f(c['ci_low'])}, "
                f"{_f(c['ci_high'])}] | {_f(c['z'], 2)} | {c['rank']} of {c['n_random'] + 1} | {_f(c['p_rank'], 3)} "
                f"({_f(c['p_rank_holm'], 3)}) | {_f(c['p_boot'], 4)} ({_f(c['p_boot_holm'], 4)}) | {share} | "
                + (
                    f"same subsets as `{r['same_subset_as']}` |"
                    if r.get("same_subset_as")
                    else f"interim: {c['verdict']} |"
                    if r.get("interim")
                    else f"**{c['verdict']}** |"
                )
            )
        else:
            L.append(f"| {r['pool']} | {b} | {r['arm']} | {r['seeds']} | {nll} | | | | | | {share} | |")
    L += [
        "",
        "NLL: mean over held-out items and seeds (± sd over seeds; for random, sd over the random subsets). "
        "rank: 1 + the number of random subsets at least as good as the arm."
        + (
            " interim: the pool's units are not all in (random subsets, seeds, or the other budget, which is in the "
            "same Holm family), so the numbers and the verdict can still move; a verdict is final when it is shown "
            "in bold."
            if any_interim(summary)
            else " Every verdict is final."
        ),
    ]
    return L


def _simplest_rankings(summary: dict, probe: Optional[dict]) -> list[str]:
    ov = summary.get("rank_overlaps") or {}
    if not ov:
        return ["Not yet measured: every arm's subset is stored before any training."]
    L = [
        "| pool | budget | arm | " + " | ".join(f"shared with {r}" for r in SIMPLE_RANKINGS) + " | chance |",
        "|" + "---|" * (3 + len(SIMPLE_RANKINGS) + 1),
    ]
    for pool, per in ov.items():
        for b, v in per.items():
            for arm, sh in v["arms"].items():
                L.append(
                    f"| {pool} | {100 * float(b):g}% | {arm} | "
                    + " | ".join(f"{sh[r]} of {v['k']}" if r in sh else "" for r in SIMPLE_RANKINGS)
                    + f" | {v['chance']:.1f} |"
                )
    same = [
        f"{pool} {100 * float(b):g}%: " + " = ".join(f"`{a}`" for a in g)
        for pool, per in ov.items()
        for b, v in per.items()
        for g in v.get("same_subset", [])
    ]
    if same:
        L += [
            "",
            "Arms that picked the same set (in another order) train the same model, so the study trains "
            "such a set once per seed and the others' units record `same_subset_as`: " + "; ".join(same) + ".",
        ]
    return L


def _noisy_selections(summary: dict, probe: Optional[dict]) -> list[str]:
    ns = summary.get("noisy_selections")
    if not ns:
        return [NOT_YET_NOISY]
    budgets = list(ns)
    L = [
        f"Share of swapped samples in each arm's subset of the noisy pool ({_pct(summary['design']['noise_share'])} "
        "swapped), from the selections the training units train; no training needed. Random: mean [min, max] over "
        f"its {ns[budgets[0]]['random']['n']} subsets.",
        "",
        "| arm | " + " | ".join(f"{100 * float(b):g}% (k {ns[b]['k']})" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
        "| random | "
        + " | ".join(
            f"{_pct(ns[b]['random']['mean'])} [{_pct(ns[b]['random']['min'])}, {_pct(ns[b]['random']['max'])}]"
            for b in budgets
        )
        + " |",
    ]
    for arm in ns[budgets[0]]["arms"]:
        L.append(f"| {arm} | " + " | ".join(_pct(ns[b]["arms"].get(arm)) for b in budgets) + " |")
    dpg = summary.get("noisy_default_prompt_gain")
    if dpg:
        L.append(
            f"| delift:{dpg['kernel']} + min-prompt-gain-{dpg['min_prompt_gain']:g} (not trained) | "
            + " | ".join(
                f"{_pct(dpg['budgets'][b]['swapped_share'])} ({dpg['budgets'][b]['excluded']} excluded)"
                if b in dpg["budgets"]
                else "--"
                for b in budgets
            )
            + " |"
        )
        L += [
            "",
            f"The last row is the config's default kernel when it ran (`{dpg['kernel']}`) with "
            f"`selection.min_prompt_gain: {dpg['min_prompt_gain']:g}`: `delift-ray select` over the same cache, "
            "added after the default changed; its subsets are not trained (a new trained arm would join the Holm "
            "family after the others' results were seen). The trained `min-prompt-gain` arm uses `keep-minmax`.",
        ]
    return L


def _kernel_pairs(summary: dict, probe: Optional[dict]) -> list[str]:
    pairs = (summary.get("variants_vs_keep_minmax") or []) + (summary.get("variants_vs_each_other") or [])
    if not pairs:
        return [NO_VARIANT]
    L = ["| pool | budget | arm | against | delta [95% CI] |", "|---|---|---|---|---|"]
    for v in sorted(pairs, key=lambda v: (v["pool"] != "clean", -v["budget"], v["reference"], v["arm"])):
        L.append(
            f"| {v['pool']} | {int(round(v['budget'] * 100))}% | {v['arm']} | {v['reference']} | "
            f"{_f(v['delta'])} [{_f(v['ci_low'])}, {_f(v['ci_high'])}] |"
        )
    return L


def _kernel_vs_ranking(summary: dict, probe: Optional[dict]) -> list[str]:
    vr = summary.get("variants_vs_simplest_ranking") or []
    if not vr:
        return [NO_VARIANT]
    L = ["| pool | budget | variant | ranking | delta [95% CI] |", "|---|---|---|---|---|"]
    for v in vr:
        L.append(
            f"| {v['pool']} | {int(round(v['budget'] * 100))}% | {v['arm']} | {v['reference']} | "
            f"{_f(v['delta'])} [{_f(v['ci_low'])}, {_f(v['ci_high'])}] |"
        )
    return L


def _kernel_rule(summary: dict, probe: Optional[dict]) -> list[str]:
    ke = summary.get("kernel_evidence") or {}
    pools_txt = "both pools" if "noisy" in summary.get("pools", ("clean", "noisy")) else "the pool"
    L = [
        "Each comparison calls a variant worse that is not with a chance of 2.5%; a variant faces "
        f"{ke.get('comparisons_per_variant', 0)} of them, so one no different from the others is ruled out with a "
        f"chance of about {100 * ke.get('chance_out_if_equal', 0):.0f}% (comparisons taken as independent).",
        "",
    ]
    if ke.get("variants"):
        cols = list(next(iter(ke["variants"].values()))["cells"])
        L += ["| variant | " + " | ".join(cols) + " | standing |", "|---|" + "---|" * (len(cols) + 1)]
        for arm, v in ke["variants"].items():
            interim = "" if v["final"] or v["status"] == "pending" else " (interim)"
            L.append(f"| {arm} | " + " | ".join(v["cells"][c] for c in cols) + f" | {v['status']}{interim} |")
        L.append("")
    L.append(
        f"Default the evidence supports: `{ke['default']}`."
        if ke.get("default")
        else f"Default the evidence supports: not decided until {pools_txt}' variant units are all in."
    )
    current = ke.get("config_default") or config_default_kernel()
    if ke.get("default"):
        L.append(
            f"The config's default (delift_ray/config.py) is `{current}`: "
            + ("applied." if current == ke["default"] else "**not applied yet**.")
        )
    else:
        L.append(f"The config's default (delift_ray/config.py) is `{current}`.")
    if ke.get("stricter_rule_default"):
        L += [
            "",
            "For the record: until 2026-12-01 this page applied another rule, written after the clean 15% "
            "results were in: a variant replaces `keep-minmax` only if its interval against it lies above 0 at "
            "every clean budget and not below 0 at any noisy budget. It picks "
            f"`{ke['stricter_rule_default']}`. It is not section 5's criterion: it never compares the variants "
            "with one another"
            + (
                ", and here it keeps `keep-minmax`, which is worse than another variant at a budget"
                if ke["stricter_rule_default"] == PAPER_KERNEL
                and ke["variants"].get(PAPER_KERNEL, {}).get("status") == "out"
                else ""
            )
            + ".",
        ]
    return L


def _noise_probe(summary: dict, probe: Optional[dict]) -> list[str]:
    if not probe:
        return [NO_PROBE]
    pr_ = probe["results"]
    budgets = list(pr_["swapped_share"])
    L = [
        f"`benchmarks/noise_probe.py` ({probe['date']}): the first {pr_['n']} samples of the study's pool, "
        f"{pr_['swapped']} of them with their responses swapped among themselves, scored densely "
        f"({pr_['counts']['pairs_scored']:,} pairs scored and {pr_['counts']['pairs_reused']:,} read from the "
        f"cache in {pr_['scoring_wall_s'] / 60:.1f} min). Share of swapped samples in each subset (random: 50% "
        "expected; a selector worth its cost keeps it far below):",
        "",
        "| arm | " + " | ".join(f"budget {b}" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for arm in pr_["swapped_share"][budgets[0]]:
        L.append(f"| {arm} | " + " | ".join(_pct(pr_["swapped_share"][b].get(arm)) for b in budgets) + " |")
    u = pr_["uf"]
    L += [
        "",
        f"Utilities: UF(i <- i) averages {u['diag_mean']:.3f}; off the diagonal {u['offdiag_mean']:.4f} ± "
        f"{u['offdiag_sd']:.4f}. As in-context examples, swapped samples average "
        f"{u['offdiag_mean_swapped_as_example']:.4f} and intact ones {u['offdiag_mean_intact_as_example']:.4f}.",
    ]
    return L


def _noise_probe_auroc(summary: dict, probe: Optional[dict]) -> list[str]:
    if not probe:
        return [NO_PROBE]
    return _auroc_table(probe["results"]["noise_signal_auroc"])


def _auroc_table(aurocs: dict[str, float]) -> list[str]:
    return ["| score | AUROC |", "|---|---|"] + [
        f"| {k} | {_f(v, 3)} |" for k, v in sorted(aurocs.items(), key=lambda kv: -kv[1])
    ]


def _noise_probe_exclusion(summary: dict, probe: Optional[dict]) -> list[str]:
    if not probe:
        return [NO_PROBE]
    pr_ = probe["results"]
    L = []
    pmi = pr_.get("pmi")
    if pmi:
        ex = pr_["delift_keep_minmax_swapped_share_with_exclusion"]
        cols = list(next(iter(ex.values())))
        L += [
            "A signal outside the utilities: the pointwise mutual information of prompt and response, "
            "PMI = d(response | no prompt) - d(response | its prompt), one more forward pass per sample "
            f"({pmi['wall_s']:.0f} s for {pr_['n']} samples here). Low PMI flags a swapped sample with AUROC "
            f"{_f(pmi['auroc_low_pmi'], 3)} (mean PMI {pmi['mean_swapped']:.2f} nats/token for swapped samples, "
            f"{pmi['mean_intact']:.2f} for intact ones). Swapped share of the keep-minmax DELIFT subset when the "
            "most suspect samples may not be picked (their kernel columns set to 0):",
            "",
            "| excluded | " + " | ".join(f"budget {b}" for b in cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for name, row in ex.items():
            L.append(f"| {name} | " + " | ".join(_pct(row[b]) for b in cols) + " |")
        L.append("")
    pg = pr_.get("min_prompt_gain")
    if pg:
        L += [
            "The job's option for it, `selection.min_prompt_gain`: the prompt's gain d(r | empty prompt) - "
            "d(r | its prompt) in the utility's own distance, from one more baseline per pool sample. Low gain "
            f"flags a swapped sample with AUROC {_f(pg['auroc_low_gain'], 3)}; swapped samples' gains run from "
            f"{min(pg['gain_swapped']):.3f} to {max(pg['gain_swapped']):.3f}, intact ones' from "
            f"{min(pg['gain_intact']):.3f} to {max(pg['gain_intact']):.3f}. `delift-ray select` over the same cache "
            "at each threshold (kernel keep-minmax, the default when the probe ran):",
            "",
            "| min_prompt_gain @ budget | excluded | swapped share of the subset |",
            "|---|---|---|",
        ]
        for name, row in pg["runs"].items():
            L.append(f"| {name} | {row['excluded']} of {pr_['n']} | {_pct(row['swapped_share'])} |")
    return L or ["Not measured: the probe predates these signals."]


def _noise_signals(summary: dict, probe: Optional[dict]) -> list[str]:
    ns = summary.get("noise_signals")
    if not ns:
        return [NOT_YET_NOISY]
    return [
        f"On the noisy pool ({ns['swapped']} of {ns['n']} samples swapped), each score below is computed from the "
        "stored utilities only; AUROC is the chance that a swapped sample scores higher than an intact one "
        "(0.5: no signal, 1: perfect).",
        "",
    ] + _auroc_table(ns["auroc"])


BLOCKS = {
    "status": _status,
    "answer": _answer,
    "design": _design,
    "statistics": _statistics,
    "results": _results,
    "simplest-rankings": _simplest_rankings,
    "noisy-selections": _noisy_selections,
    "kernel-pairs": _kernel_pairs,
    "kernel-vs-ranking": _kernel_vs_ranking,
    "kernel-rule": _kernel_rule,
    "noise-probe": _noise_probe,
    "noise-probe-auroc": _noise_probe_auroc,
    "noise-probe-exclusion": _noise_probe_exclusion,
    "noise-signals": _noise_signals,
}
PROBE_BLOCKS = {"noise-probe", "noise-probe-auroc", "noise-probe-exclusion"}


def render_block(name: str, summary: dict, probe: Optional[dict] = None) -> str:
    """The body of block ``quality:NAME`` of docs/quality.md (ends with a newline): a comment
    naming what renders it, then its lines. ``summary``: the "results" of quality_study.json;
    ``probe``: the whole noise_probe.json document, or None."""
    if name not in BLOCKS:
        raise ValueError(f"docs/quality.md: unknown generated block 'quality:{name}' (known: {', '.join(BLOCKS)})")
    lines = BLOCKS[name](summary, probe)
    while lines and not lines[-1]:
        lines = lines[:-1]
    source = PROBE_JSON if name in PROBE_BLOCKS else SUMMARY_JSON
    head = f"<!-- rendered by benchmarks/quality_report.py ({name}) from {source}: python docs/generate.py -->"
    return "\n".join([head, *lines]) + "\n"


def fill_blocks(text: str, summary: dict, probe: Optional[dict] = None) -> str:
    """``text`` with every ``quality:`` block rendered again; the text outside them is kept as is."""
    return BLOCK.sub(lambda m: m.group(1) + render_block(m.group("name"), summary, probe) + m.group(4), text)


def committed_probe() -> Optional[dict]:
    """benchmarks/results/noise_probe.json, or None where it is missing."""
    path = Path(__file__).resolve().parent / "results" / "noise_probe.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_docs(summary: dict, docs: Path, probe: Optional[dict] = None) -> Path:
    """Fill the generated blocks of ``docs``/quality.md in place from ``summary`` (and ``probe``,
    default the committed noise probe) and draw ``docs``/quality.png. The page is hand-written:
    it must exist and hold at least one ``quality:`` block."""
    path = docs / "quality.md"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the page is hand-written; copy docs/quality.md there first")
    text = path.read_text()
    if not BLOCK.search(text):
        raise ValueError(f"{path}: no <!-- generated:quality:NAME --> block to fill")
    # What docs/generate.py renders from the JSON the study writes (benchmarks/results.py: default=str).
    summary = json.loads(json.dumps(summary, default=str))
    if not render_plot(summary, docs / "quality.png") and plot_panels(summary):
        print(f"matplotlib is not installed: {docs / 'quality.png'} was not redrawn", file=sys.stderr)
    out = fill_blocks(text, summary, committed_probe() if probe is None else probe)
    if out != text:
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(out)
        tmp.replace(path)
    return path
