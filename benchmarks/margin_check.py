"""Does the held-out margin tell a subset of wrong answers from a clean one? (issue 26 §2)

On the quality study's noisy ShareGPT pool (half of the 240 responses rotated among the
samples, benchmarks/quality_study.py), two arms of the same size k (15% of the pool):

* ``clean``: k samples drawn (seed s) from the rows whose response is their own;
* ``swapped``: k samples drawn (seed s) from the rows whose response belongs to another.

Each is fine-tuned with the study's own trainer (``quality_study.Trainer``: the evaluate
module's LoRA ``fine_tune``, the same steps, learning rate and batch as every study arm)
for seeds 0..S-1, and scored on the study's 400 held-out items:

* NLL: mean response NLL of the right response (the study's primary metric);
* margin: NLL of a mismatched held-out response after the prompt minus NLL of the right one
  (``delift_ray.evaluate.metrics.mismatched_responses``), fixed before this check ran.

Reported: each arm's mean, and clean minus swapped with a 95% hierarchical bootstrap
interval over held-out items and seeds (``delift_ray.evaluate.statistics.hierarchical_bootstrap``).
The margin separates the arms when that interval lies above 0. Each training unit is stored
as it ends (benchmarks/results/quality/units/margin-*.json); a re-run skips stored units.

    OMP_WAIT_POLICY=PASSIVE setsid nice -n 19 .venv/bin/python -m benchmarks.margin_check \\
        > /tmp/margin_check.log 2>&1 &
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np

from benchmarks.quality_study import Trainer, Units, log, parser, prepare_data
from benchmarks.results import write_result

RESULT = "margin_check"
ARMS = ("clean", "swapped")


def arm_subset(arm: str, n_pool: int, swapped_rows: list[int], k: int, seed: int) -> list[int]:
    """The k pool rows of ``arm`` for ``seed``: a seeded draw from the intact or the swapped rows."""
    swapped = set(swapped_rows)
    rows = [i for i in range(n_pool) if (i in swapped) == (arm == "swapped")]
    return sorted(random.Random(1000 + seed).sample(rows, k))


def summary(units: dict[str, dict], seeds: int) -> dict:
    from delift_ray.evaluate.statistics import hierarchical_bootstrap

    out = {}
    for metric in ("nll", "margin"):
        runs = {a: np.array([units[f"margin-{a}-s{s}"][metric] for s in range(seeds)]) for a in ARMS}
        delta = runs["clean"].mean() - runs["swapped"].mean()
        boot = hierarchical_bootstrap(runs["swapped"], runs["clean"], resamples=4000, seed=0)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        out[metric] = {
            "clean_mean": round(float(runs["clean"].mean()), 4),
            "swapped_mean": round(float(runs["swapped"].mean()), 4),
            "clean_minus_swapped": round(float(delta), 4),
            "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "separates": bool(lo > 0 or hi < 0),
        }
    return out


def markdown(doc: dict) -> str:
    """The generated block of docs/quality.md."""
    r, m = doc["results"], doc["machine"]
    rows = [
        "| metric | all-clean subset | all-swapped subset | clean - swapped (95% interval) | separates |",
        "|---|---|---|---|---|",
    ]
    for metric in ("nll", "margin"):
        x = r["summary"][metric]
        rows.append(
            f"| held-out {metric} | {x['clean_mean']:.4f} | {x['swapped_mean']:.4f} | "
            f"{x['clean_minus_swapped']:+.4f} ({x['ci95'][0]:+.4f} to {x['ci95'][1]:+.4f}) | "
            f"{'yes' if x['separates'] else 'no'} |"
        )
    rows += [
        "",
        f"{r['k']} samples per subset from the noisy {r['n_pool']}-sample pool, {r['seeds']} seeds each, "
        f"{r['n_eval']} held-out items; {r['steps']} LoRA steps. Measured {doc['date'][:10]} on {m.get('cpu')} "
        f"({m.get('cpus')} cores, {', '.join(m.get('cpu_flags') or [])}), `{doc['command']}`.",
    ]
    return "\n".join(rows)


def main(argv=None) -> int:
    p = parser()
    p.description = __doc__.split("\n")[0]
    p.add_argument("--share", type=float, default=0.15, help="Subset size as a share of the pool.")
    args = p.parse_args(argv)
    work, units = Path(args.work), Units(Path(args.results))
    meta = prepare_data(work, args.n_pool, args.n_eval, args.max_tokens, args.noise_share, args.seed)
    noisy = [json.loads(x) for x in (work / "noisy_pool.jsonl").read_text().splitlines()]
    k = int(round(args.share * len(noisy)))
    trainer = None
    for seed in range(args.train_seeds):
        for arm in ARMS:
            name = f"margin-{arm}-s{seed}"
            if units.done(name):
                continue
            trainer = trainer or Trainer(args, meta, work)
            idx = arm_subset(arm, len(noisy), meta["swapped_rows"], k, seed)
            t0 = time.time()
            res = trainer.train_eval([(noisy[i]["prompt"], noisy[i]["response"]) for i in idx], seed)
            units.save(name, {**res, "arm": arm, "seed": seed, "k": k, "subset": idx})
            log(f"{name}: nll {res['nll_mean']:.4f} margin {res['margin_mean']:.4f} ({time.time() - t0:.0f} s)")
    done = {f"margin-{a}-s{s}": units.load(f"margin-{a}-s{s}") for a in ARMS for s in range(args.train_seeds)}
    out = {
        "n_pool": len(noisy),
        "n_eval": meta["n_eval"],
        "k": k,
        "seeds": args.train_seeds,
        "steps": args.steps,
        "summary": summary(done, args.train_seeds),
        "units": sorted(done),
    }
    print(json.dumps(out["summary"], indent=1))
    print(write_result(RESULT, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
