"""DELIFT against the cheap baselines, and knn against dense, on the quality study's pools (issue 26 §4, §5).

The study (benchmarks/quality_study.py) fixed its design and Holm family before these arms
existed; this extension adds them as a second, separately declared family per pool, on the
same pools, held-out items, trainer and random subsets:

* ``delift_se``: facility location on the (cos+1)/2 kernel of the scoring model's own
  mean-pooled hidden states (``kernel.embedding: model``, the knn embedder; RDS+-like);
* ``ifd``: the IFD-style ratio d(i, no example) / d(r_i | empty prompt), ratios above 1
  last (delift_ray.evaluate.arms); its prompt-free baselines are in the study's cache;
* ``longest``: the k longest responses;
* ``knn32``: ``delift-ray select --kernel.type knn --kernel.k 32 --kernel.random 4`` under
  the default kernel (drop-minmax): the million-sample path, over the same cache.

Each is trained with 3 seeds (``quality_study.Trainer``) at the budgets given (15% by
default: the issue lets budgets go before sections). Compared, per pool, in one Holm family:

* each new arm against the study's 20 random subsets (``statistics.compare``, as the study);
* DELIFT's default (the study's ``delift:drop-minmax`` units) against every cheap baseline
  (the new ones plus the study's ``example_utility`` and ``hardness``), and dense against
  knn32: delta = NLL(other) - NLL(DELIFT), > 0 when DELIFT is better, with a hierarchical
  bootstrap over held-out items and both arms' seeds and a one-sided p.

A verdict: **better** when the Holm-adjusted p <= 0.05, **no better** when the interval's
upper end lies below the equivalence bound (0.5 x the random subsets' sd), **worse** when the
interval lies below 0, else **inconclusive**.

Units (``extra-<pool>-b<budget>-<arm>-s<seed>`` under the study's units dir, and
``selections-<pool>-extra``) are stored as they end; a re-run skips them. First of all,
``machine-check-<unit>`` retrains one stored random unit of the study on this machine: the
new arms' references were trained on another machine, and this states how far a retrain moves.

    OMP_WAIT_POLICY=PASSIVE setsid nice -n 19 .venv/bin/python -m benchmarks.baselines_study \\
        > /tmp/baselines_study.log 2>&1 &
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from benchmarks import quality_study as qs
from benchmarks.quality_report import RESAMPLES
from benchmarks.results import write_result

RESULT = "baselines_study"
NEW_ARMS = ("delift_se", "ifd", "longest", "knn32")
DELIFT = "delift:drop-minmax"
STUDY_BASELINES = ("example_utility", "hardness")
KNN = ("--kernel.type", "knn", "--kernel.k", "32", "--kernel.random", "4")


def tag(budget: float) -> str:
    return f"b{int(round(budget * 100)):02d}"


def extra_name(pool: str, budget: float, arm: str, seed: int) -> str:
    return f"extra-{pool}-{tag(budget)}-{arm}-s{seed}"


def study_runs(stored: dict[str, dict], pool: str, budget: float, arm: str) -> dict[int, list[float]]:
    """seed -> held-out NLLs of an arm's training units (the study's ``train-`` or this file's ``extra-``)
    among ``stored`` (:meth:`quality_study.Units.all`)."""
    out = {}
    for name, doc in stored.items():
        r = doc.get("results", {})
        if name.startswith(("train-", "extra-")) and (r.get("pool"), r.get("budget"), r.get("arm")) == (
            pool,
            budget,
            arm,
        ):
            out[int(r["seed"])] = r["nll"]
    return out


def se_subset(run, model: str, k: int) -> list[int]:
    """DELIFT-SE on the scoring model's own mean-pooled hidden states: facility location on (cos+1)/2."""
    from delift_ray import selection
    from delift_ray.embedder import sample_text
    from delift_ray.evaluate.runner import open_encoder
    from delift_ray.evaluate.similarity import cosine_kernel

    enc = open_encoder("model", model, device="cpu")
    emb = enc.embed([sample_text(p, r) for p, r in run.pool.pairs()])
    idx, _ = selection.facility_location(cosine_kernel(emb), k)
    return [int(i) for i in idx]


def selections_unit(units: qs.Units, pool: str, args, work: Path, meta: dict, budgets: list[float]) -> dict:
    """``selections-<pool>-extra``: every new arm's subset (pick order) per budget, before training."""
    name = f"selections-{pool}-extra"
    if units.done(name) and all(f"{b:g}" in units.load(name)["budgets"] for b in budgets):
        return units.load(name)
    from delift_ray.evaluate.inputs import load_run

    run = load_run(work / f"score-{pool}")
    ids, n = run.pool.sample_ids, len(run.pool)
    swapped = set(meta["swapped_ids"]) if pool == "noisy" else set()
    data = work / ("pool.jsonl" if pool == "clean" else "noisy_pool.jsonl")
    out: dict = {"pool": pool, "n": n, "sample_ids": ids, "budgets": {}}
    for budget in budgets:
        k = max(1, int(round(budget * n)))
        arms = qs.baseline_subsets(run, k, ("ifd", "longest"))
        arms["delift_se"] = se_subset(run, meta["model"], k)
        knn_dir = work / f"knn32-{pool}-{tag(budget)}"
        if not (knn_dir / "run.json").exists():
            qs.select_run(knn_dir, data, budget, args, meta, *KNN, diagonal="drop")
        knn = load_run(knn_dir)
        if knn.pool.sample_ids != ids:
            raise SystemExit(f"{knn_dir}: its pool is not the scoring run's pool")
        arms["knn32"] = list(knn.selected)
        short = {a: len(v) for a, v in arms.items() if len(v) != k}
        if short:
            raise SystemExit(f"{name}: budget {budget:g} wants {k} samples per arm; got {short}")
        out["budgets"][f"{budget:g}"] = {
            "k": k,
            "arms": arms,
            "swapped_share": {a: qs.swapped_share(ids, v, swapped) if swapped else None for a, v in arms.items()},
        }
        qs.log(f"{name} {budget:g}: " + ", ".join(f"{a} {len(v)}" for a, v in arms.items()))
    units.save(name, out)
    return out


def machine_check(units: qs.Units, trainer, pool: str, budget: float, work: Path) -> dict:
    """``machine-check-<unit>``: one of the study's random units trained again here, item by item."""
    ref = qs.unit_name(pool, budget, "random", 0)
    name = f"machine-check-{ref}"
    if units.done(name):
        return units.load(name)
    from benchmarks.results import cpu_flags
    from delift_ray.evaluate.inputs import load_run

    stored = units.load(ref)
    res = trainer.train_eval(load_run(work / f"score-{pool}").pool.pairs(stored["subset"]), stored["seed"])
    diff = np.array(res["nll"]) - np.array(stored["nll"])
    out = {
        "unit": ref,
        "cpu_flags": cpu_flags(),
        "max_abs_diff": float(np.abs(diff).max()),
        "mean_diff": float(diff.mean()),
        "nll_mean": res["nll_mean"],
        "stored_nll_mean": stored["nll_mean"],
        "wall_s": res["wall_s"],
    }
    units.save(name, out)
    qs.log(f"{name}: max |NLL difference| {out['max_abs_diff']:.3g}, mean {out['mean_diff']:+.3g}")
    return out


def train_arms(units: qs.Units, trainer, pool: str, budget: float, sel: dict, args, work: Path, meta: dict) -> None:
    from delift_ray.evaluate.inputs import load_run

    run = load_run(work / f"score-{pool}")
    ids = run.pool.sample_ids
    swapped = set(meta["swapped_ids"]) if pool == "noisy" else set()
    b = sel["budgets"][f"{budget:g}"]
    settings = qs.train_settings(args)
    for seed in range(args.train_seeds):
        for arm in NEW_ARMS:
            name = extra_name(pool, budget, arm, seed)
            if units.done(name) or arm not in b["arms"]:
                continue
            idx = sorted(b["arms"][arm])
            twin = qs.trained_twin(units, pool, budget, seed, idx, settings, prefixes=("train-", "extra-"))
            if twin:
                res = {key: v for key, v in units.load(twin).items() if key in qs.TWIN_KEYS}
                res["same_subset_as"] = twin
            else:
                res = trainer.train_eval(run.pool.pairs(idx), seed)
                res["settings"] = settings
            res.update(
                pool=pool,
                budget=budget,
                k=b["k"],
                arm=arm,
                seed=seed,
                subset=idx,
                swapped_share=qs.swapped_share(ids, idx, swapped) if swapped else None,
            )
            units.save(name, res)
            qs.log(f"{name}: NLL {res['nll_mean']:.4f}" + (f" (same subset as {twin})" if twin else ""))
            write_summary(units, args, meta)


# --------------------------------------------------------------------------- summary


def paired(delift: dict[int, list[float]], other: dict[int, list[float]]) -> dict:
    """NLL(other) - NLL(DELIFT) with its hierarchical bootstrap interval and one-sided p (> 0: DELIFT better)."""
    from delift_ray.evaluate.statistics import hierarchical_bootstrap

    X = np.array([delift[s] for s in sorted(delift)])
    Y = np.array([other[s] for s in sorted(other)])
    boot = hierarchical_bootstrap(X, Y, resamples=RESAMPLES, seed=0)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {
        "delta": float(Y.mean() - X.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p": float((1 + np.count_nonzero(boot <= 0)) / (boot.size + 1)),
        "seeds": [len(X), len(Y)],
    }


def verdict(p_holm: float, lo: float, hi: float, eq_bound: float) -> str:
    if p_holm <= 0.05:
        return "better"
    if hi < 0:
        return "worse"
    if hi < eq_bound:
        return "no better"
    return "inconclusive"


def pool_family(units: qs.Units, pool: str, budgets: list[float], min_seeds: int) -> list[dict]:
    """Every comparison of one pool (both kinds), Holm-adjusted together; interim while arms lack seeds."""
    from delift_ray.evaluate.statistics import compare, holm

    rows = []
    stored = units.all()
    for budget in budgets:
        rand = study_runs(stored, pool, budget, "random")
        delift = study_runs(stored, pool, budget, DELIFT)
        if len(rand) < 2 or not delift:
            continue
        Y = np.array([rand[s] for s in sorted(rand)])
        sd = float(Y.mean(axis=1).std(ddof=1))
        for arm in NEW_ARMS:
            runs = study_runs(stored, pool, budget, arm)
            if runs:
                c = compare(np.array([runs[s] for s in sorted(runs)]), Y, resamples=RESAMPLES, seed=0)
                rows.append(
                    {
                        "pool": pool,
                        "budget": budget,
                        "kind": "vs random",
                        "arm": arm,
                        "reference": "random",
                        "nll": c.arm_nll,
                        "reference_nll": c.random_nll_mean,
                        "delta": c.delta,
                        "ci_low": c.ci_low,
                        "ci_high": c.ci_high,
                        "p": c.p_boot,
                        "seeds": [c.n_seeds, c.n_random],
                        "eq_bound": 0.5 * sd,
                    }
                )
        for other in (*NEW_ARMS, *STUDY_BASELINES):
            runs = study_runs(stored, pool, budget, other)
            if runs:
                d = paired(delift, runs)
                rows.append(
                    {
                        "pool": pool,
                        "budget": budget,
                        "kind": "knn vs dense" if other == "knn32" else "DELIFT vs baseline",
                        "arm": DELIFT,
                        "reference": other,
                        "nll": float(np.mean([np.mean(v) for v in delift.values()])),
                        "reference_nll": float(np.mean([np.mean(v) for v in runs.values()])),
                        **d,
                        "eq_bound": 0.5 * sd,
                    }
                )
    if rows:
        adj = holm([r["p"] for r in rows])
        for r, p in zip(rows, adj):
            r["p_holm"] = float(p)
            r["interim"] = min(r["seeds"]) < min_seeds
            r["verdict"] = verdict(r["p_holm"], r["ci_low"], r["ci_high"], r["eq_bound"])
    return rows


def write_summary(units: qs.Units, args, meta: dict) -> dict:
    budgets = [float(b) for b in args.budgets.split(",")]
    checks = {n: d["results"] for n, d in units.all().items() if n.startswith("machine-check-")}
    out = {
        "arms": list(NEW_ARMS),
        "delift_arm": DELIFT,
        "budgets": budgets,
        "train_seeds": args.train_seeds,
        "holm_family": "every comparison of one pool (new arms vs random, DELIFT vs each baseline, dense vs knn32)",
        "families": {pool: pool_family(units, pool, budgets, args.train_seeds) for pool in ("clean", "noisy")},
        "swapped_share": {
            b: units.load("selections-noisy-extra")["budgets"][b]["swapped_share"]
            for b in (units.load("selections-noisy-extra")["budgets"] if units.done("selections-noisy-extra") else {})
        },
        "machine_checks": checks,
    }
    write_result(RESULT, out, command="python -m benchmarks.baselines_study " + " ".join(sys.argv[1:]))
    return out


def markdown(doc: dict) -> str:
    """The generated block of docs/baselines.md."""
    r, m = doc["results"], doc["machine"]
    lines = [
        "| pool | budget | comparison | NLL | reference NLL | delta [95% CI] | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pool, rows in r["families"].items():
        for x in rows:
            what = f"{x['arm']} vs {x['reference']}"
            flag = " (interim)" if x.get("interim") else ""
            lines.append(
                f"| {pool} | {x['budget']:.0%} | {what} | {x['nll']:.4f} | {x['reference_nll']:.4f} | "
                f"{x['delta']:+.4f} [{x['ci_low']:+.4f}, {x['ci_high']:+.4f}] | {x['p']:.3f} ({x['p_holm']:.3f}) | "
                f"{x['verdict']}{flag} |"
            )
    for b, shares in r["swapped_share"].items():
        cells = ", ".join(f"{a} {100 * s:.0f}%" for a, s in shares.items())
        lines += ["", f"Swapped share of the new arms' subsets of the noisy pool at {float(b):.0%}: {cells}."]
    for c in r["machine_checks"].values():
        lines += [
            "",
            f"Machine check: `{c['unit']}` trained again here ({', '.join(c['cpu_flags'])}): max |NLL difference| "
            f"{c['max_abs_diff']:.2g} per item, mean {c['mean_diff']:+.2g} nats.",
        ]
    lines += [
        "",
        f"Measured {doc['date'][:10]} on {m.get('cpu')} ({m.get('cpus')} cores, "
        f"{', '.join(m.get('cpu_flags') or [])}), `{doc['command']}`.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = qs.parser()
    p.description = __doc__.split("\n")[0]
    # The study's reference units carry no margin, so it would compare with nothing: NLL only.
    p.set_defaults(budgets="0.15", no_margin=True)
    args = p.parse_args(argv)
    work, units = Path(args.work), qs.Units(Path(args.results))
    budgets = [float(b) for b in args.budgets.split(",")]
    meta = qs.prepare_data(work, args.n_pool, args.n_eval, args.max_tokens, args.noise_share, args.seed)
    if args.report:
        write_summary(units, args, meta)
        return 0
    for pool in ("clean", "noisy"):
        data = work / ("pool.jsonl" if pool == "clean" else "noisy_pool.jsonl")
        qs.score_unit(units, f"score-{pool}", args, work, data, meta)  # rebuilds the run dir from the cache
    trainer = qs.Trainer(args, meta, work)
    machine_check(units, trainer, "clean", budgets[0], work)
    for pool in ("clean", "noisy"):
        sel = selections_unit(units, pool, args, work, meta, budgets)
        for budget in budgets:
            train_arms(units, trainer, pool, budget, sel, args, work, meta)
    write_summary(units, args, meta)
    qs.log("baselines study complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
