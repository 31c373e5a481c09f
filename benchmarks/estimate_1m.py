"""The cost of a million on paper: ``delift-ray estimate`` at 1M samples, knn k 32 + r 4.

    python -m benchmarks.estimate_1m --n 1000000 --work /tmp/est1m --write

The job's own estimate path, as ``delift-ray estimate --json`` runs it (ingest and
tokenise the data with the demo model's tokenizer, then ``estimate.compute_estimate``), on
the synthetic pool of ``benchmarks.scale``. The data are read and tokenised once; the
estimate is then computed for each scorer, cluster size and ``scoring.block_size`` below.
Everything but the GPU's own time comes from the measured constants in
``estimate.MEASURED``.

The GPU assumptions, stated:
* a 0.5B scorer computes 400,000 prompt tokens/s on one H100 (docs/dry-run.md derives it:
  40% of the H100's 989 dense bf16 TFLOP/s at 2 x 0.5e9 FLOP a token);
* a 7B scorer at the same utilisation computes 0.5 / 7 of that, 28,571 tokens/s;
* the token counts are the demo tokenizer's (SmolLM2's vocabulary) for both.
"""

from __future__ import annotations

import argparse
import os

from benchmarks.results import write_result
from benchmarks.scale import write_jsonl

SCORERS = {"0.5B": 400_000.0, "7B": 400_000.0 * 0.5 / 7}
ENGINES = (64, 256)
BLOCK_SIZES = (32, 128)  # the default, and the side the driver simulation used
KEYS = (
    "pairs",
    "computed_tokens",
    "engine_hours",
    "wall_hours",
    "blocks",
    "shards",
    "block_s",
    "driver_cpu_s",
    "driver_core_share",
    "engines_fed_at_90pct",
    "first_bottleneck",
    "s3_write_requests",
    "s3_resume_requests",
    "s3_resume_s",
    "assemble_select_s",
)


def config(n: int, work: str, k: int, random: int, block_size: int, engines: int) -> dict:
    from delift_ray import assets

    return {
        "data": os.path.join(work, f"pool-{n}.jsonl"),
        "model": str(assets.demo_model_dir()),
        "out": os.path.join(work, "run"),
        "kernel": {"type": "knn", "k": k, "random": random},
        "scoring": {"block_size": block_size},
        "ray": {"num_scorers": engines},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--random", type=int, default=4)
    p.add_argument("--work", default="/tmp/delift-estimate-1m")
    p.add_argument("--write", action="store_true", help="write benchmarks/results/estimate_1m.json")
    args = p.parse_args()

    from delift_ray import estimate
    from delift_ray.config import validate_config
    from delift_ray.steps.ingest import ingest, load_tokenizer

    os.makedirs(args.work, exist_ok=True)
    if not os.path.exists(os.path.join(args.work, f"pool-{args.n}.jsonl")):
        write_jsonl(os.path.join(args.work, f"pool-{args.n}.jsonl"), args.n)
    base = validate_config(config(args.n, args.work, args.k, args.random, 32, 1))
    sets, _ = ingest(base, load_tokenizer(base), progress=False)
    lengths = {name: estimate.set_lengths(s) for name, s in sets.items()}
    rows = []
    for scorer, rate in SCORERS.items():
        for block_size in BLOCK_SIZES:
            for engines in ENGINES:
                cfg = validate_config(config(args.n, args.work, args.k, args.random, block_size, engines))
                est = estimate.compute_estimate(cfg, lengths, rate, rate_source="assumed")["knn"]
                rows.append(
                    {"scorer": scorer, "tokens_per_s": round(rate, 1), "block_size": block_size, "engines": engines}
                    | {k: est[k] for k in KEYS}
                )
                print(rows[-1], flush=True)
    results = {
        "n": args.n,
        "k": args.k,
        "random": args.random,
        "assumptions": {"h100_tokens_per_s": SCORERS, "note": __doc__.split("The GPU assumptions, stated:")[1].strip()},
        "measured_constants": {k: v for k, v in vars(estimate.MEASURED).items()},
        "rows": rows,
    }
    if args.write:
        print(write_result("estimate_1m", results))


def markdown(doc: dict) -> str:
    """The docs' table of a committed result (benchmarks/results/estimate_1m.json)."""
    r, m = doc["results"], doc["machine"]
    lines = [
        "| scorer | block_size | H100s | GPU-hours | wall hours | blocks | shards | GPU s a block | driver core share "
        "| H100s one driver core feeds | first bottleneck | S3 requests: write / resume | resume listing s "
        "| assemble + select s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['scorer']} | {x['block_size']} | {x['engines']} | {x['engine_hours']:,.3g} | {x['wall_hours']:,.3g} "
            f"| {x['blocks']:,} | {x['shards']:,} | {x['block_s']:.3g} | {100 * x['driver_core_share']:.0f}% "
            f"| {x['engines_fed_at_90pct']:,} | {x['first_bottleneck']} "
            f"| {x['s3_write_requests']:,} / {x['s3_resume_requests']:,} | {x['s3_resume_s']:,.0f} "
            f"| {x['assemble_select_s']:,.0f} |"
        )
    lines += [
        "",
        f"{r['n']:,} samples, knn k {r['k']} + random {r['random']}; the estimate's measured constants "
        f"(`estimate.MEASURED`, from {', '.join(r['measured_constants']['sources'])}). GPU assumptions: "
        + r["assumptions"]["note"].replace("\n", " ").replace("* ", "")
        + f" {m.get('cpus')} cores; {doc['date'][:10]}; `{doc['command']}`.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
